"""A hub started with the usual soft open-files limit (1024) raises it to
its hard limit: 1,000 hosts hold about 2,000 descriptors (dcctl.procs.
raise_open_files_limit)."""
from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest

from dcctl import errors, wire
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _open_files_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def test_a_hub_started_at_a_soft_limit_of_1024_raises_it_to_the_hard_limit(tmp_path):
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-files limit is {hard}: nothing to raise to")
    endpoint = f"ipc://{tmp_path}/hub.sock"
    proc = subprocess.Popen([sys.executable, "-m", "hub.main", "--listen", endpoint, "--state-dir", str(tmp_path / "s"),
                             "--hub-name", "fdl", "--log-level", "WARNING"], cwd=REPO,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    try:
        def answers():
            with wire.connect(endpoint, timeout_s=2) as c:
                return c.call("_zerorpc_ping")
        wait_for(answers, 60, "the hub answers", ignore=(errors.Unreachable, errors.CallTimeout))
        soft_now, hard_now = _open_files_limits(proc.pid)
        assert hard_now == hard and soft_now == hard, (soft_now, hard_now)
    finally:
        proc.kill()
        proc.wait()
