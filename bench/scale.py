"""bench/scale: one hub and up to 1,000 hollow hosts at 5 s heartbeats: the
hub's CPU for membership, broadcast latency, and re-registration after a
hub restart, each figure beside its reference in the same run.

The hosts are hollow agents (bench/hollow.py: the real agent's RPC service,
hostinfo and hub link, over a runtime that starts no container), many per
process, registered with a real dc-hub over its local ipc endpoint.

1. Hub CPU: the hub process's user + system time (/proc/PID/stat) over a
   window with the hosts beating and nothing else asked of it, as a share of
   one core; beside it the same hub with no host (its idle cost) and the
   target (under 25% of a core at 1,000 hosts).
2. Broadcast latency: ``broadcast container_ls`` through the hub to every
   host, median and p99 over ROUNDS; beside it a plain gevent fan-out of raw
   zerorpc calls from this process to the same agents, and the target
   (under 1 s median at 1,000 hosts); then the hub's file descriptors and
   resident memory, holding a connection to every host.
3. Hub restart: the hub is killed (SIGKILL), stays down for 3 heartbeats
   (every agent's call fails), and starts again on its store; the hub's log
   gives each re-registration's time: peak registrations per second, the
   spread from first to last and the time until every host is back.  The
   agents rejoin after a random delay in [0, --rejoin-jitter-s]; beside it
   the same restart with agents started with no jitter (the reference).

Run as root:  python3 bench/scale.py [--hosts 100,1000] [--per-process 250]
[--heartbeat-s 5] [--window-s 30] [--rounds 20] [--rejoin-jitter-s 5]
[--restart yes|no] [--quick]
(``--quick``: 20 hosts in 2 processes, 1 s heartbeats, 3 s window, 3
rounds, a restart with 1 s jitter, for the test suite).  Everything it
starts has ``/tmp/dcscale-PREFIX`` in its argv and is gone when it exits,
also after SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import secrets
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402
import gevent.pool  # noqa: E402
import zerorpc  # noqa: E402

from bench import _common  # noqa: E402
from bench._common import percentiles, wait_for  # noqa: E402
from bench.hollow import host_name  # noqa: E402
from dcctl import errors, wire  # noqa: E402
from dcctl.wire.ipcpath import ipc_listening  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
REGISTERED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ INFO host (\S+) registered at ")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_share(pid: int, window_s: float) -> float:
    """Share of one core (percent) process ``pid`` used over ``window_s``."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    return 100.0 * (cpu_seconds(pid) - before) / (time.monotonic() - started)


def fds_and_rss(pid: int) -> tuple[int, float]:
    """(open file descriptors, resident MiB) of process ``pid``."""
    with open(f"/proc/{pid}/status") as f:
        rss_kib = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return len(os.listdir(f"/proc/{pid}/fd")), rss_kib / 1024


def registrations(log: str, since: float) -> dict[str, float]:
    """{host: time (Unix s) of its first registration logged at or after
    ``since``} from a hub log."""
    out: dict[str, float] = {}
    with open(log) as f:
        for line in f:
            m = REGISTERED.match(line)
            if m:
                at = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if at >= since - 0.001:
                    out.setdefault(m.group(2), at)
    return out


class Fleet:
    """A hub and hollow agent processes under ``root``."""

    def __init__(self, root: str, prefix: str, heartbeat_s: float, per_process: int, procs: list):
        self.root, self.prefix, self.heartbeat_s, self.per_process = root, prefix, heartbeat_s, per_process
        self.procs = procs
        self.hub_ep = f"ipc://{root}/hub.sock"
        self.hub_proc: subprocess.Popen | None = None
        self.hollows: list[subprocess.Popen] = []
        self.size = 0

    def start_hub(self) -> float:
        """Start dc-hub on the run's state dir; returns when it serves (the
        Unix time it was started)."""
        started = time.time()
        self.hub_proc = _common.spawn([sys.executable, "-m", "hub.main", "--listen", self.hub_ep, "--state-dir",
                                       f"{self.root}/hub", "--heartbeat-s", str(self.heartbeat_s)],
                                      f"{self.root}/hub.log")
        self.procs.append(self.hub_proc)
        path = wire.parse_endpoint(self.hub_ep).path
        wait_for(lambda: ipc_listening(path), 60, "the hub", [self.hub_proc])
        return started

    def kill_hub(self) -> None:
        _common.reap([self.hub_proc])
        self.procs.remove(self.hub_proc)

    def grow(self, n: int, jitter_s: float) -> None:
        """Start hollow agents until there are ``n``, ``per_process`` per
        process, their starts spread over one heartbeat."""
        while self.size < n:
            count = min(self.per_process, n - self.size)
            proc = _common.spawn([sys.executable, "-m", "bench.hollow", "--root", self.root, "--hub", self.hub_ep,
                                  "--prefix", self.prefix, "--first", str(self.size),
                                  "--count", str(count), "--heartbeat-s", str(self.heartbeat_s),
                                  "--rejoin-jitter-s", str(jitter_s), "--start-over-s", str(self.heartbeat_s)],
                                 f"{self.root}/hollow-{self.size}.log")
            self.procs.append(proc)
            self.hollows.append(proc)
            self.size += count

    def stop_hollows(self) -> None:
        _common.reap(self.hollows)
        for p in self.hollows:
            self.procs.remove(p)
        self.hollows, self.size = [], 0

    def alive(self, hub: wire.RpcClient) -> int:
        try:
            return sum(h["state"] == "alive" for h in hub.call("hosts"))
        except errors.DcError:
            return 0

    def endpoints(self, n: int) -> list[str]:
        return [f"ipc://{self.root}/a{i:04d}.sock" for i in range(n)]


def broadcast_latency(fleet: Fleet, hub: wire.RpcClient, n: int, rounds: int) -> dict:
    """Broadcast rounds through the hub beside raw fan-out rounds, in turns.

    Returns: {raw: (median ms, p99 ms), hub: (median ms, p99 ms) or None
    when no round answered, hub_cpu_ms (the hub's CPU per broadcast),
    failed: {error name: rounds}}."""
    raw_clients = [zerorpc.Client(ep, timeout=30) for ep in fleet.endpoints(n)]
    pool = gevent.pool.Pool(256)
    failed: dict[str, int] = {}
    try:
        def raw_round():
            gevent.joinall([pool.spawn(c, "container_ls") for c in raw_clients], raise_error=True)

        def hub_round():
            out = hub.call("broadcast", "container_ls", [], {"timeout_s": 30}, timeout_s=60)
            if out["summary"]["ok"] != n:
                raise RuntimeError(f"only {out['summary']['ok']} of {n} hosts answered: {out['summary']}")

        raw_t, hub_t, hub_cpu = [], [], 0.0
        for i in range(rounds + 1):  # the first round of each warms up the connections
            for fn, acc in ((raw_round, raw_t), (hub_round, hub_t)):
                before, t = cpu_seconds(fleet.hub_proc.pid), time.perf_counter()
                try:
                    fn()
                except (errors.DcError, RuntimeError) as exc:
                    failed[type(exc).__name__] = failed.get(type(exc).__name__, 0) + 1
                    continue
                if i:
                    acc.append(time.perf_counter() - t)
                    if fn is hub_round:
                        hub_cpu += cpu_seconds(fleet.hub_proc.pid) - before
        return {"raw": percentiles(raw_t), "hub": percentiles(hub_t) if hub_t else None,
                "hub_cpu_ms": hub_cpu / max(1, len(hub_t)) * 1000, "failed": failed}
    finally:
        for c in raw_clients:
            c.close()


def restart(fleet: Fleet, n: int, label: str, timeout_s: float) -> None:
    """Kill the hub, keep it down 3 heartbeats, start it again; print how
    the ``n`` hosts came back."""
    fleet.kill_hub()
    time.sleep(fleet.heartbeat_s * 3)  # an outage every agent notices (its call times out)
    started = fleet.start_hub()
    log = f"{fleet.root}/hub.log"
    wait_for(lambda: len(registrations(log, started)) >= n, timeout_s, f"{n} re-registrations", fleet.procs)
    times = sorted(registrations(log, started).values())
    bins: dict[int, int] = {}
    for t in times:
        bins[int(t - times[0])] = bins.get(int(t - times[0]), 0) + 1
    print(f"  hub restart, {label}: {n} hosts registered again {times[0] - started:5.2f} s to "
          f"{times[-1] - started:5.2f} s after the start (spread {times[-1] - times[0]:5.2f} s), "
          f"peak {max(bins.values())} registrations/s", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", default="100,1000")
    p.add_argument("--per-process", type=int, default=250)
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--window-s", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--rejoin-jitter-s", type=float, default=5.0)
    p.add_argument("--restart", default="yes", choices=("yes", "no"))
    args = _common.parse(p, {"hosts": "20", "per_process": 10, "heartbeat_s": 1.0, "window_s": 3.0, "rounds": 3,
                             "rejoin_jitter_s": 1.0}, "s" + secrets.token_hex(3))
    sizes = [int(x) for x in args.hosts.split(",")]
    root = f"/tmp/dcscale-{args.prefix}"
    procs: list[subprocess.Popen] = []
    os.makedirs(root, mode=0o700)  # before the try: a prefix in use is left alone
    try:
        fleet = Fleet(root, args.prefix, args.heartbeat_s, args.per_process, procs)
        fleet.start_hub()
        hub = wire.connect(fleet.hub_ep, timeout_s=60)
        print(f"bench/scale: hollow hosts at {args.heartbeat_s:g} s heartbeats, {args.per_process} per process, "
              f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
        idle = cpu_share(fleet.hub_proc.pid, args.window_s)
        print(f"  hub CPU with 0 hosts: {idle:5.1f}% of a core over {args.window_s:g} s", flush=True)
        for n in sizes:
            fleet.grow(n, args.rejoin_jitter_s)
            wait_for(lambda: fleet.alive(hub) >= n, 120 + n * 0.2, f"{n} hosts alive", procs)
            time.sleep(args.heartbeat_s)  # the registrations are over; only heartbeats go on
            share = cpu_share(fleet.hub_proc.pid, args.window_s)
            print(f"  {n:4d} hosts: hub CPU {share:5.1f}% of a core over {args.window_s:g} s "
                  f"(0 hosts: {idle:.1f}%; target < 25% at 1000)", flush=True)
            got = broadcast_latency(fleet, hub, n, args.rounds)
            (rm, rp), (hm, hp) = got["raw"], got["hub"] or (float("nan"), float("nan"))
            print(f"  {n:4d} hosts: broadcast container_ls median {hm:7.1f} ms p99 {hp:7.1f} ms   "
                  f"raw fan-out median {rm:7.1f} ms p99 {rp:7.1f} ms   (target < 1000 ms median)", flush=True)
            print(f"  {n:4d} hosts: hub CPU per broadcast {got['hub_cpu_ms']:7.1f} ms; rounds failed: "
                  f"{', '.join(f'{k} {v}' for k, v in sorted(got['failed'].items())) or 'none'}", flush=True)
            share = cpu_share(fleet.hub_proc.pid, args.window_s)
            print(f"  {n:4d} hosts, the hub holding a client to every host: hub CPU {share:5.1f}% of a core "
                  f"over {args.window_s:g} s", flush=True)
            fds, rss = fds_and_rss(fleet.hub_proc.pid)
            print(f"  {n:4d} hosts: hub {fds} fds, RSS {rss:.0f} MiB", flush=True)
        hub.close()
        if args.restart == "yes":
            n = sizes[-1]
            restart(fleet, n, f"jitter {args.rejoin_jitter_s:g} s", 60 + args.rejoin_jitter_s * 4)
            fleet.stop_hollows()
            hub = wire.connect(fleet.hub_ep, timeout_s=60)
            fleet.grow(n, 0.0)
            wait_for(lambda: fleet.alive(hub) >= n, 120 + n * 0.2, f"{n} hosts alive (no jitter)", procs)
            hub.close()
            time.sleep(args.heartbeat_s)
            restart(fleet, n, "no jitter (reference)", 60 + args.heartbeat_s * 4)
        return 0
    finally:
        _common.teardown(procs, root)


if __name__ == "__main__":
    _common.run(main)
