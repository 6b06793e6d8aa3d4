"""bench/observe: what watching costs.  With N running containers on one
real agent: the duration of a Prometheus scrape of its /metrics (target
under 100 ms at 50 containers), the agent's CPU idle and with a scrape every
5 s, and the containers' log writers' memory (one process each: the
compiled agents/logwriter.py).

Run as root:  python3 bench/observe.py [--containers 50] [--scrapes 20] [--cpu-seconds 60] [--quick]
(``--quick``: 3 containers, 5 scrapes, 10 s per CPU figure, for the test suite).
The agent is named by ``--prefix`` (``dct`` + 6 hex, as the tests' agents);
it, its containers and their log writers are gone when this exits, also
after SIGTERM or SIGINT.

More figures: append a function ``fn(agent, args) -> list[str]`` (its
figure lines) to ``EXTRA_FIGURES``; each runs after the scrape figures, with
the agent and its running containers still there (events/s through the hub
is the next one).
"""
from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

from agents.logs import is_writer  # noqa: E402
from bench import _common  # noqa: E402
from dcctl import procs  # noqa: E402
from tests.agentproc import TEST_PREFIX, AgentProcess  # noqa: E402

SCRAPE_EVERY_SECONDS = 5.0
TARGET_MS = 100.0
#: fn(agent, args) -> figure lines; see the module doc.
EXTRA_FIGURES: list = []


def scrape(url: str) -> tuple[float, bytes]:
    """(seconds, body) of one GET of the metrics endpoint."""
    started = time.monotonic()
    with urllib.request.urlopen(url, timeout=30) as r:
        body = r.read()
    return time.monotonic() - started, body


def cpu_percent(pid: int, seconds: float, url: str | None) -> float:
    """The agent's CPU over ``seconds`` (% of one CPU), scraping ``url``
    every SCRAPE_EVERY_SECONDS when given."""
    proc = psutil.Process(pid)
    t0, c0 = time.monotonic(), sum(proc.cpu_times()[:2])
    deadline = t0 + seconds
    while True:
        if url:
            scrape(url)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(SCRAPE_EVERY_SECONDS, left))
    return 100.0 * (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--containers", type=int, default=50)
    p.add_argument("--scrapes", type=int, default=20)
    p.add_argument("--cpu-seconds", type=float, default=60.0)
    args = _common.parse(p, {"containers": 3, "scrapes": 5, "cpu_seconds": 10.0}, TEST_PREFIX + secrets.token_hex(3))
    agent = AgentProcess(args.prefix)
    try:
        agent.start()
        with agent.client(120) as c:
            for i in range(args.containers):
                c.call("container_create", "busybox", f"obs.{i}")
                c.call("container_start", f"obs.{i}")
            url = c.call("hostinfo")["metrics_url"]
        print(f"bench/observe: {args.containers} running containers, {os.cpu_count()} CPUs")
        scrape(url)  # warm: the first scrape imports nothing more, but fills caches
        times, served, body = [], [], b""
        for _ in range(args.scrapes):
            dt, body = scrape(url)
            times.append(dt * 1000)
            served += [float(ln.split()[-1]) * 1000 for ln in body.splitlines()
                       if ln.startswith(b"dcfleet_agent_scrape_duration_seconds{")]
        samples = sum(1 for ln in body.splitlines() if ln and not ln.startswith(b"#"))
        times.sort()
        p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
        print(f"  scrape /metrics with {args.containers} running containers: median {statistics.median(times):.1f} ms"
              f"  p95 {p95:.1f} ms  max {times[-1]:.1f} ms  ({args.scrapes} scrapes, {len(body)} bytes, "
              f"{samples} samples; target < {TARGET_MS:.0f} ms)")
        print(f"  of which in the agent (collect and format): median {statistics.median(served[1:] or [0]):.1f} ms; "
              f"load average {os.getloadavg()[0]:.1f}")
        pid = agent.proc.pid
        idle = cpu_percent(pid, args.cpu_seconds, None)
        print(f"  agent CPU idle: {idle:.2f}% of a CPU over {args.cpu_seconds:g} s")
        busy = cpu_percent(pid, args.cpu_seconds, url)
        print(f"  agent CPU with a scrape every {SCRAPE_EVERY_SECONDS:g} s: {busy:.2f}% of a CPU "
              f"over {args.cpu_seconds:g} s")
        writers = [pid for pid, words in procs.processes()
                   if is_writer(words) and any(w.startswith(agent.root.encode()) for w in words)]
        rss = [psutil.Process(w).memory_info().rss / (1 << 20) for w in writers if procs.alive(w)]
        print(f"  log writers: {len(rss)} processes, RSS median {statistics.median(rss) if rss else 0:.1f} MiB, "
              f"total {sum(rss):.1f} MiB")
        for fn in EXTRA_FIGURES:
            for line in fn(agent, args):
                print(line)
        return 0
    finally:
        agent.cleanup()


if __name__ == "__main__":
    _common.run(main)
