"""bench/logs: what reading a container's log costs the agent.  Writes a
log dir of real log files (``--files`` of ``--file-mib`` each, the records
of a ``yes`` flood: ``{"at", "stream", "text": "y"}``), then in a fresh
Python process per case times ``ContainerLogs.read`` (through gevent's
thread pool, as the agent calls it) and ``follow``'s history, and prints
each case's duration, the process's RSS growth and the longest stall of a
greenlet that ticks every 10 ms meanwhile (what other calls on the agent
wait).

Run:  python3 bench/logs.py [--files 3] [--file-mib 10] [--quick]
(``--quick``: 3 files of 1 MiB).  Everything is under a temporary dir,
removed at exit.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common  # noqa: E402

CASES = [("tail 3", {"tail": 3}), ("since 1 s ago", {"since_back": 1.0}),
         ("whole history (capped)", {}), ("follow's history, tail 3", {"tail": 3, "follow": True})]
RECORDS_PER_SECOND = 20000

CHILD = r"""
import json, os, sys, time
import gevent, psutil
from agents.logs import ContainerLogs
d, n_files, case = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
logs = ContainerLogs(os.path.dirname(d), 1 << 40, n_files)
name = os.path.basename(d)
since = case["last_at"] - case["since_back"] if "since_back" in case else None
proc = psutil.Process()
rss0 = proc.memory_info().rss
gaps = [0.0]
def ticker():
    last = time.monotonic()
    while True:
        gevent.sleep(0.01)
        now = time.monotonic()
        gaps[0] = max(gaps[0], now - last - 0.01)
        last = now
t = gevent.spawn(ticker)
gevent.sleep(0.05)
pool = gevent.get_hub().threadpool
started = time.monotonic()
if case.get("follow"):
    it = logs.follow(name, since, case.get("tail"), lambda: True, lambda fn, *a: pool.apply(fn, a))
    lines = next(it)["lines"]
    it.close()
    truncated = None
else:
    out = pool.apply(logs.read, (name, since, case.get("tail")))
    lines, truncated = out["lines"], out["truncated"]
dt = time.monotonic() - started
t.kill()
print(json.dumps({"s": dt, "rss_mib": (proc.memory_info().rss - rss0) / 2**20, "stall_ms": gaps[0] * 1000,
                  "records": len(lines), "truncated": truncated,
                  "first_at": lines[0]["at"] if lines else None, "last_text": lines[-1]["text"] if lines else None}))
"""


def write_logs(d: str, files: int, file_bytes: int) -> tuple[int, float]:
    """The log files of a ``yes`` flood, oldest first; returns (records, last at)."""
    os.makedirs(d)
    at, n = 1764590000.0, 0
    names = [f"container.log.{i}" for i in range(files - 1, 0, -1)] + ["container.log"]
    for fname in names:
        with open(os.path.join(d, fname), "wb") as f:
            size, chunk = 0, []
            while size < file_bytes:
                line = json.dumps({"at": round(at, 6), "stream": "stdout", "text": f"y {n}"}).encode() + b"\n"
                chunk.append(line)
                size += len(line)
                n += 1
                at += 1.0 / RECORDS_PER_SECOND
            f.write(b"".join(chunk))
    return n, at - 1.0 / RECORDS_PER_SECOND


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--file-mib", type=float, default=10.0)
    args = _common.parse(p, {"file_mib": 1.0}, "dctlogs" + secrets.token_hex(3))
    tmp = tempfile.mkdtemp(prefix=args.prefix)
    try:
        d = os.path.join(tmp, "flood")
        n, last_at = write_logs(d, args.files, int(args.file_mib * (1 << 20)))
        total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"bench/logs: {args.files} log files, {total / 2**20:.1f} MiB, {n} records; load average "
              f"{os.getloadavg()[0]:.1f}")
        for label, case in CASES:
            out = subprocess.run([sys.executable, "-c", CHILD, d, str(args.files),
                                  json.dumps({**case, "last_at": last_at})],
                                 capture_output=True, text=True, cwd=_common.REPO, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            assert r["last_text"] == f"y {n - 1}", r
            print(f"  {label}: {r['s'] * 1000:.0f} ms, RSS +{r['rss_mib']:.1f} MiB, longest loop stall "
                  f"{r['stall_ms']:.0f} ms, {r['records']} records"
                  + (" (truncated)" if r["truncated"] else ""))
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    _common.run(main)
