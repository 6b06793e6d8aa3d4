"""bench/fanout.py in its tiny form (so the benchmark never rots): real
hollow dc-agents join a real dc-hub over the hub's local ipc endpoint, and
the run prints its figures."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.skipif(os.geteuid() != 0, reason="agents need root (state dirs, locks under /run)")
def test_fanout_bench_runs_with_agents_joined_over_ipc():
    done = subprocess.run([sys.executable, "bench/fanout.py", "--sizes", "2", "--rounds", "2"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio" in done.stdout and "N=  2" in done.stdout, done.stdout
