"""bench/routing.py's tiny form runs, prints its figures and leaves nothing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.lxc
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_routing_quick():
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/haproxy"):
        pytest.skip("needs root, LXC and haproxy")
    done = subprocess.run([sys.executable, "bench/routing.py", "--quick"], cwd=REPO, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    for figure in ("direct (host mapping)", "via the router (HAProxy)", "router / direct throughput",
                   "first 200 via the router"):
        assert figure in out, out
    assert "left behind" not in done.stderr
    assert "0 errors" in out.split("via the router")[1].splitlines()[0], out
