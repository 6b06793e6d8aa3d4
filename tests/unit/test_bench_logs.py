"""bench/logs in its tiny form: a figure line per case, and its temporary
dir (named by --prefix) gone after."""
import glob
import os
import re
import secrets
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_logs_quick_prints_its_figures_and_leaves_nothing():
    prefix = "dctlogs" + secrets.token_hex(3)
    done = subprocess.run([sys.executable, "bench/logs.py", "--quick", "--prefix", prefix], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert re.search(r"^bench/logs: 3 log files, 3\.0 MiB, \d+ records", done.stdout, re.M)
    for label, count in (("tail 3", "3 records"), ("since 1 s ago", r"10000 records \(truncated\)"),
                         ("whole history \\(capped\\)", r"10000 records \(truncated\)"),
                         ("follow's history, tail 3", "3 records")):
        assert re.search(rf"^  {label}: \d+ ms, RSS \+[\d.-]+ MiB, longest loop stall \d+ ms, {count}$",
                         done.stdout, re.M), done.stdout
    assert not glob.glob(os.path.join(tempfile.gettempdir(), prefix + "*"))
