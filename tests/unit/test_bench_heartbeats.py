"""bench/heartbeats cannot rot: its tiny form (``--quick``) runs without root
and prints its figure lines, and SIGTERM mid-run leaves no process or
directory of its prefix behind."""
from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys

import pytest

from dcctl import procs
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIGURE = re.compile(r"^   100 hosts (in process|over ipc  )  each beat written: +\d+ beats/s   "
                    r"batched: +\d+ beats/s   ratio [\d.]+x$")


pids_with = procs.pids_with


@pytest.fixture
def bench():
    started = []

    def start(*args: str) -> tuple[str, subprocess.Popen]:
        prefix = "t" + secrets.token_hex(3)
        proc = subprocess.Popen([sys.executable, "bench/heartbeats.py", "--prefix", prefix, *args], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": REPO})
        started.append((prefix, proc))
        return f"/tmp/dchb-{prefix}", proc

    yield start
    for prefix, proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pid in pids_with(f"/tmp/dchb-{prefix}"):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", f"/tmp/dchb-{prefix}"], check=False)


@pytest.mark.timeout(300)
def test_quick_form_prints_its_figures_and_leaves_nothing(bench):
    root, proc = bench("--quick")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{err[-3000:]}"
    assert len([ln for ln in out.splitlines() if FIGURE.match(ln)]) == 2, out
    assert not os.path.exists(root) and pids_with(root) == []


@pytest.mark.timeout(300)
def test_sigterm_mid_run_leaves_nothing(bench):
    root, proc = bench("--quick", "--beats", "10000000", "--hosts", "10", "--where", "ipc")
    wait_for(lambda: proc.poll() is not None or pids_with(f"{root}/"), 60, "the bench's dc-hub to run",
             interval_s=0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, f"exit {proc.returncode}:\n{out}\n{err[-3000:]}"
    assert "interrupted by SIGTERM; torn down" in err
    wait_for(lambda: pids_with(root) == [], 10, "the bench's processes to be gone")
    assert not os.path.exists(root)
