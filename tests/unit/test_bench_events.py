"""bench/events in its tiny form: both figure lines, and nothing left behind
(its hub process and its /tmp/dcevt-PREFIX directory)."""
import os
import re
import secrets
import subprocess
import sys

from dcctl import procs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_events_quick_prints_its_figures_and_leaves_nothing():
    prefix = "dcevt" + secrets.token_hex(2)
    done = subprocess.run([sys.executable, "bench/events.py", "--quick", "--prefix", prefix], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^events through the hub to a follower: 1000 in [\d.]+ s = \d+ events/s", done.stdout, re.M)
    assert re.search(r"^events through the hub to a follower, one per call: 200 in [\d.]+ s = \d+ events/s",
                     done.stdout, re.M)
    root = f"/tmp/dcevt-{prefix}"
    assert not os.path.exists(root) and not procs.pids_with(root)
