"""bench/logs: what reading a container's log costs the agent.  Writes a
log dir of real log files (``--files`` of ``--file-mib`` each, the records
of a ``yes`` flood: ``{"at", "stream", "text": "y"}``), then in a fresh
Python process per case times ``ContainerLogs.read`` (through gevent's
thread pool, as the agent calls it) and ``follow``'s history, and prints
each case's duration, the process's RSS growth and the longest stall of a
greenlet that ticks every 10 ms meanwhile (what other calls on the agent
wait).

Run:  python3 bench/logs.py [--files 3] [--file-mib 10] [--quick] [--agent]
(``--quick``: 3 files of 1 MiB).  Everything is under a temporary dir,
removed at exit.

``--agent`` (root, LXC) then does it on a real agent (named ``dct`` + 6 hex,
gone at exit): a busybox ``yes`` container fills its log (the agent's
default rotation, 3 files of 10 MiB); ``container_logs --tail 3`` and a
plain one are timed, the agent's RSS read, then two ``--follow --tail 3``
streams run for 10 s while ``container_ls`` is timed every 0.1 s.
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


def agent_figures() -> list[str]:
    """The real agent's figures (see the module doc)."""
    import glob
    import threading
    import time

    import psutil

    from tests.agentproc import TEST_PREFIX, AgentProcess
    agent = AgentProcess(TEST_PREFIX + secrets.token_hex(3))
    lines = []
    try:
        agent.start()
        proc = psutil.Process(agent.proc.pid)
        rss = lambda: proc.memory_info().rss / 2**20  # noqa: E731
        d = os.path.join(agent.state_dir, "logs", "flood")
        size = lambda: sum(os.path.getsize(p) for p in glob.glob(d + "/container.log*"))  # noqa: E731
        with agent.client(120) as c:
            c.call("container_create", "busybox", "flood", {"command": ["yes"]})
            c.call("container_start", "flood")
            deadline = time.monotonic() + 180
            while size() < 28 << 20:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the flood wrote only {size()} bytes in 180 s")
                time.sleep(0.5)
            lines.append(f"  real agent, a yes flood's log of {size() / 2**20:.1f} MiB: agent RSS {rss():.0f} MiB")
            for opts, label in (({"tail": 3}, "--tail 3"), ({}, "plain")):
                t = time.monotonic()
                out = c.call("container_logs", "flood", opts)
                lines.append(f"  real agent, container_logs {label}: {1000 * (time.monotonic() - t):.0f} ms, "
                             f"{len(out['lines'])} records")
            lines.append(f"  real agent RSS after the history reads: {rss():.0f} MiB")
        stop, counts = threading.Event(), [0, 0]

        def follower(i: int) -> None:
            with agent.client(120) as f:
                for item in f.call("container_logs_follow", "flood", {"tail": 3}):
                    counts[i] += len(item["lines"])
                    if stop.is_set():
                        break
        threads = [threading.Thread(target=follower, args=(i,), daemon=True) for i in range(2)]
        for th in threads:
            th.start()
        lat: list[float] = []
        with agent.client(120) as c:
            end = time.monotonic() + 10
            while time.monotonic() < end:
                t = time.monotonic()
                c.call("container_ls")
                lat.append(time.monotonic() - t)
                time.sleep(0.1)
            lat.sort()
            lines.append(f"  real agent, container_ls while 2 followers stream the flood: median "
                         f"{1000 * lat[len(lat) // 2]:.0f} ms, max {1000 * lat[-1]:.0f} ms; agent RSS {rss():.0f} MiB; "
                         f"the followers got {counts[0]} and {counts[1]} records in 10 s")
            stop.set()
            c.call("container_destroy", "flood", True)
        for th in threads:
            th.join(10)
    finally:
        agent.cleanup()
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=3)
    p.add_argument("--file-mib", type=float, default=10.0)
    p.add_argument("--agent", action="store_true", help="also on a real agent and container (root, LXC)")
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
        if args.agent:
            for line in agent_figures():
                print(line)
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    _common.run(main)
