"""images.proc.blocking_run: usable from the agent's (gevent) thread pool."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from images import ImageError
from images.proc import blocking_run

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_output_and_exit_status(tmp_path):
    ran = blocking_run(["sh", "-c", "echo out; echo err >&2; exit 3"], 10)
    assert ran.returncode == 3 and ran.stdout == b"out\nerr\n"
    assert blocking_run(["true"], 10).returncode == 0


def test_not_installed():
    with pytest.raises(ImageError, match="not installed"):
        blocking_run(["no-such-tool-xyz"], 10)


def test_timeout_kills_the_whole_group(tmp_path):
    marker = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(ImageError, match="ran past 0.5 s"):
        blocking_run(["sh", "-c", f"sleep 30 & echo $! > {marker}; wait"], 0.5)
    assert time.monotonic() - start < 10
    pid = int(marker.read_text())
    time.sleep(0.2)
    with open(f"/proc/{pid}/stat") if os.path.exists(f"/proc/{pid}") else open(os.devnull) as f:
        state = f.read().split(")")[-1].split()[:1]
    assert state in ([], ["Z"]), "the grandchild survived the timeout"


def test_works_in_a_gevent_threadpool_beside_gevent_subprocesses():
    code = r"""
from gevent import monkey; monkey.patch_all()
import gevent, gevent.threadpool, gevent.subprocess
from images.proc import blocking_run
beats = []
def beat():
    while True:
        gevent.sleep(0.05); beats.append(1)
hb = gevent.spawn(beat)
# gevent child watchers in use: its SIGCHLD handler may reap any child
others = [gevent.spawn(gevent.subprocess.check_output, ["sh", "-c", "sleep 0.3; echo x"])
          for _ in range(3)]
pool = gevent.threadpool.ThreadPool(2)
ran = pool.spawn(blocking_run, ["sh", "-c", "sleep 1; echo done; exit 7"], 20).get()
gevent.joinall(others, raise_error=True)
assert (ran.returncode, ran.stdout) == (7, b"done\n"), ran
assert len(beats) > 10, len(beats)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
