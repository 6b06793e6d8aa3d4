"""bench/heartbeats: heartbeats per second the hub absorbs, each beat written
at once (one SQLite write transaction per beat, as before) beside beats
batched (taken in memory, one transaction per flush; the default).

1. In process, on the hub's loop: host_heartbeat with an agent's summary
   (capacity, metrics, five containers) for 100 and 1000 hosts, round robin:
   the hub's own cost per beat.
2. Over ipc to a real dc-hub process: 8 clients send the same beats for
   the same hosts (joined over the hub's local endpoint) as fast as the hub
   answers them: what the hub absorbs with the RPC layer in the way.

No root needed:  python3 bench/heartbeats.py [--hosts 100,1000] [--beats 20000]
[--where process,ipc] [--quick]
(``--quick``: 100 hosts, 400 beats, for the test suite).  Everything it
starts has ``/tmp/dchb-PREFIX`` in its argv and is gone when it exits, also
after SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402

from bench import _common  # noqa: E402
from dcctl import errors, wire  # noqa: E402
from hub.registry import Registry  # noqa: E402
from hub.service import HubService  # noqa: E402
from hub.store import HubStore  # noqa: E402

GiB = 1 << 30
CLIENTS = 8
MODES = (("each beat written", 0.0), ("batched", 0.5))


def summary(i: int) -> dict:
    """What an agent sends (agents/main.py's summary, with five containers)."""
    return {"capacity": {"memory_reservable_bytes": 16 * GiB, "container_slots": 100},
            "metrics": {"cpu_percent": 3.5, "memory_used_bytes": 2 * GiB, "load_1m": 0.4, "disk_free_bytes": 9 * GiB},
            "containers": [], "boot_id": f"boot-{i}"}


def register_info(i: int, root: str) -> dict:
    return {"name": f"hollow-{i:04d}", "endpoint": f"ipc://{root}/nowhere-{i}.sock", "address": "127.0.0.1",
            "capacity": summary(i)["capacity"], "boot_id": f"boot-{i}"}


def in_process(n_hosts: int, beats: int, flush_s: float, root: str) -> float:
    """host_heartbeat calls per second on the hub's loop."""
    with tempfile.TemporaryDirectory(dir=root) as d:
        store = HubStore(d)
        hub = HubService(store, Registry(os.path.join(d, "registry")), heartbeat_s=3600.0,
                         heartbeat_flush_s=flush_s)
        try:
            for i in range(n_hosts):
                hub.host_register(register_info(i, d))
            hub.start()
            sums = [summary(i) for i in range(n_hosts)]
            started = time.perf_counter()
            for k in range(beats):
                i = k % n_hosts
                hub.host_heartbeat(f"hollow-{i:04d}", sums[i])
                if k % 50 == 49:
                    gevent.sleep(0)  # let the writer run, as other calls would
            elapsed = time.perf_counter() - started
        finally:
            hub.stop()
            store.close()
    return beats / elapsed


def over_ipc(n_hosts: int, beats: int, flush_s: float, root: str, procs: list) -> float:
    """host_heartbeat calls per second a dc-hub process answers, CLIENTS
    connections at once."""
    run = os.path.join(root, f"hub-{n_hosts}-{flush_s:g}")
    os.makedirs(run)
    endpoint = f"ipc://{run}/hub.sock"
    proc = _common.spawn([sys.executable, "-m", "hub.main", "--listen", endpoint, "--state-dir", f"{run}/state",
                          "--heartbeat-s", "3600", "--heartbeat-flush-s", str(flush_s), "--log-level", "WARNING"],
                         f"{run}/hub.log")
    procs.append(proc)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(wire.parse_endpoint(endpoint).path):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dc-hub did not start (see {run}/hub.log)")
            time.sleep(0.1)
        clients = [wire.connect(endpoint, timeout_s=60) for _ in range(CLIENTS)]
        try:
            for i in range(n_hosts):
                clients[0].call("host_register", register_info(i, run))
            sums = [summary(i) for i in range(n_hosts)]
            counter = iter(range(beats))

            def send(c):
                for k in counter:
                    c.call("host_heartbeat", f"hollow-{k % n_hosts:04d}", sums[k % n_hosts])

            clients[0].call("host_heartbeat", "hollow-0000", sums[0])  # warm every path once
            started = time.perf_counter()
            gevent.joinall([gevent.spawn(send, c) for c in clients], raise_error=True)
            elapsed = time.perf_counter() - started
        finally:
            for c in clients:
                c.close()
    finally:
        _common.reap([proc])
        procs.remove(proc)
    return beats / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", default="100,1000")
    p.add_argument("--beats", type=int, default=20000)
    p.add_argument("--where", default="process,ipc", help="which figures: process, ipc or both (default)")
    args = _common.parse(p, {"hosts": "100", "beats": 400}, "h" + secrets.token_hex(3))
    sizes = [int(x) for x in args.hosts.split(",")]
    root = f"/tmp/dchb-{args.prefix}"
    procs: list[subprocess.Popen] = []
    os.makedirs(root, mode=0o700)  # before the try: a prefix in use is left alone
    try:
        print(f"bench/heartbeats: {args.beats} heartbeats per figure, {os.cpu_count()} CPUs")
        for where, measure in (("in process", lambda n, f: in_process(n, args.beats, f, root)),
                               ("over ipc", lambda n, f: over_ipc(n, args.beats, f, root, procs))):
            if where.split()[-1] not in args.where.split(","):
                continue
            for n in sizes:
                (_, f0), (_, f1) = MODES
                before, after = measure(n, f0), measure(n, f1)
                print(f"  {n:4d} hosts {where:10}  each beat written: {before:8.0f} beats/s   "
                      f"batched: {after:8.0f} beats/s   ratio {after / before:.2f}x", flush=True)
        return 0
    except errors.DcError as exc:
        print(f"bench/heartbeats: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        _common.teardown(procs, root)


if __name__ == "__main__":
    _common.run(main)
