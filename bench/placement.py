"""bench/placement: create_container decisions per second.

1. With 100 hosts: the hub's real decision path (scheduler ranking over 100
   hosts + the atomic SQLite claim of name and capacity), in process, with no
   agent calls: decisions per second, and the same with 4 concurrent callers;
   each also per CPU second of the bench process (the figure a loaded
   machine changes least), and on etcd the requests and etcd's own CPU per
   decision (concurrent claims share transactions: hub/store/etcd.py).
   ``--store etcd`` adds the same on a local etcd (hub/store/etcd.py: the
   claim is a transaction on the name's create revision and the host's
   reservation record), beside SQLite in the same run.
2. End to end with 3 real hosts (a local fleet, real LXC): create_container
   with --no-start through the hub, sequentially and with 4 clients.

``--reference CHECKOUT`` adds the decisions of another checkout (e.g. a
``git worktree`` of main) in alternating turns beside this one's, per
store, with their ratio: the reference in the same run.

Run as root:  python3 bench/placement.py [--decisions 2000] [--creates 30] [--store etcd]
              [--reference DIR [--turns 4]] [--quick]
(``--quick``: 100 decisions, 2 creates, for the test suite).  The fleet is
named by ``--prefix`` and is gone when this exits, also after SIGTERM or
SIGINT.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402

from bench import _common  # noqa: E402
from dcctl import wire  # noqa: E402
from hub import scheduler  # noqa: E402
from hub.store import HubStore  # noqa: E402
from ops import fleet as fleetmod  # noqa: E402

GiB = 1 << 30


def decisions(n_hosts: int, count: int, workers: int, etcd_url: str | None = None,
              etcd_pid: int | None = None) -> dict:
    """``count`` decisions by ``workers`` concurrent callers on a fresh
    store of ``n_hosts`` hosts (SQLite, or etcd at ``etcd_url``).

    Returns: {rate (decisions per wall second), cpu_rate (per CPU second
    of this process), requests (etcd requests per decision), etcd_cpu_ms
    (etcd's CPU per decision, when ``etcd_pid`` is given)}."""
    with tempfile.TemporaryDirectory() as d:
        if etcd_url is None:
            store = HubStore(d)
        else:
            from hub.store.etcd import EtcdStore
            store = EtcdStore(etcd_url, f"/bench-{secrets.token_hex(4)}/")
        for i in range(n_hosts):
            store.upsert_host(f"h{i:03d}", f"ipc:///nonexistent/{i}", "", {"zone": "abc"[i % 3]},
                              {"memory_reservable_bytes": 64 * GiB, "container_slots": 10_000, "containers": 0})
        counter = iter(range(count))

        def worker():
            for i in counter:
                req = scheduler.Request(64 << 20, {"zone": "abc"[i % 3]})
                store.claim(f"c{i}", "img", 64 << 20, {}, scheduler.choose(store.hosts(), req))

        requests = store.etcd.requests if etcd_url else 0
        etcd_cpu = _cpu_seconds(etcd_pid) if etcd_pid else 0.0
        started, cpu = time.perf_counter(), time.process_time()
        gevent.joinall([gevent.spawn(worker) for _ in range(workers)], raise_error=True)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        out = {"rate": count / elapsed, "cpu_rate": count / max(cpu, 1e-9),
               "requests": (store.etcd.requests - requests) / count if etcd_url else 0.0,
               "etcd_cpu_ms": (_cpu_seconds(etcd_pid) - etcd_cpu) * 1000 / count if etcd_pid else 0.0}
        store.close()
    return out


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def etcd_costs(etcd_url: str, n_hosts: int, n_containers: int) -> dict:
    """What the fleet costs etcd (hub/store/etcd.py's keys): logical bytes
    (keys + values) per host (row, beat, key binding, reservation record)
    and per container (row, its share of the record), and one flush of
    every host's heartbeat (requests, ms).  A beat is a summary the size of
    a real agent's with 5 containers."""
    from hub.store.etcd import EtcdStore
    store = EtcdStore(etcd_url, f"/cost-{secrets.token_hex(4)}/")

    def stored() -> int:
        return sum(len(k) + len(json.dumps(v, sort_keys=True)) for k, v, _ in store.etcd.range(store.prefix))

    summary = {"capacity": {"memory_reservable_bytes": 64 * GiB, "container_slots": 200},
               "metrics": {"load1": 0.42, "cpu_percent": 12.5, "memory_used_bytes": 3 * GiB,
                           "memory_total_bytes": 64 * GiB, "disk_free_bytes": 400 * GiB, "containers_running": 5},
               "containers": [{"name": f"app{i}.web", "state": "running"} for i in range(5)],
               "boot_id": secrets.token_hex(16)}
    for i in range(n_hosts):
        key = secrets.token_urlsafe(30)[:40]
        store.bind_key(f"host-{i:04d}", key)
        store.upsert_host(f"host-{i:04d}", f"tcp://10.{i // 250}.{i % 250}.1:7000", f"10.{i // 250}.{i % 250}.1",
                          {"zone": "abc"[i % 3]}, summary["capacity"], key)
    text, cap = json.dumps(summary), json.dumps(summary["capacity"])
    before, started = store.etcd.requests, time.perf_counter()
    store.record_beats({f"host-{i:04d}": (time.time(), text, cap) for i in range(n_hosts)})
    flush_ms, flush_requests = (time.perf_counter() - started) * 1000, store.etcd.requests - before
    hosts_bytes = stored()
    pass_bytes = hosts_pass_bytes(store, n_hosts, text, cap)
    for i in range(n_containers):
        store.claim(f"app{i}.web", "4ff31ed5fc786ef04d3d0b6a85c9c9f128dbd2da5c54129d040dc0b98e0f1ec0", 256 << 20,
                    {"options": {"memory_bytes": 256 << 20}, "image": "busybox", "labels": {}, "strategy": "spread"},
                    scheduler.choose(store.hosts(), scheduler.Request(256 << 20)))
    containers_bytes = stored() - hosts_bytes
    store.close()
    return {"host_bytes": hosts_bytes / n_hosts, "container_bytes": containers_bytes / max(1, n_containers),
            "flush_requests": flush_requests, "flush_ms": flush_ms, **pass_bytes}


def hosts_pass_bytes(store, n_hosts: int, text: str, cap: str) -> dict:
    """Bytes etcd answers for one read of the hosts list (the JSON of the
    answers), as a hub reads it while its watches of the hosts are down
    (it follows them otherwise: hub/store/etcd.py PrefixIndex): the first
    (full) read, and a later one after a tenth of the hosts beat (what
    0.5 s brings at 5 s heartbeats), which takes only what changed."""
    got = []
    post = store.etcd.post

    def counted(path, body):
        answer = post(path, body)
        got.append(len(json.dumps(answer)))
        return answer

    store.etcd.post = counted
    try:
        store._hosts_inc = None
        store._read_hosts()
        full = sum(got)
        store.record_beats({f"host-{i:04d}": (time.time(), text, cap) for i in range(0, n_hosts, 10)})
        del got[:]
        store._read_hosts()
        return {"pass_full_bytes": full, "pass_changed_bytes": sum(got)}
    finally:
        store.etcd.post = post


#: one decision turn in a subprocess of a checkout (its own bench/placement.decisions;
#: an older one returns a bare rate): prints {rate, cpu_rate}
_TURN = r"""
import json, os, sys, time
sys.path.insert(0, os.getcwd())
from bench.placement import decisions
count, workers, url = int(sys.argv[1]), int(sys.argv[2]), (sys.argv[3] if sys.argv[3] != "-" else None)
cpu = time.process_time()
got = decisions(100, count, workers, url)
cpu = time.process_time() - cpu
print(json.dumps({"rate": got["rate"] if isinstance(got, dict) else got, "cpu_rate": count / cpu}))
"""


def beside_reference(reference: str, count: int, turns: int, etcd_url: str | None) -> None:
    """Decisions of this checkout and of ``reference`` (another checkout of
    dcfleet, e.g. ``git worktree add /tmp/ref main``) in alternating
    subprocess turns (this, reference, reference, this, ...), so both see
    the same load: per store and caller count, each turn's decisions/s and
    the ratio of the medians.  A turn's CPU figure counts its store's setup
    too."""
    import statistics
    import subprocess
    here = _common.REPO
    for store, url in (("SQLite", None), ("etcd", etcd_url)):
        if store == "etcd" and url is None:
            continue
        for workers in (1, 4):
            got = {"this": [], "reference": []}
            for turn in range(turns):
                for who in (("this", "reference") if turn % 2 == 0 else ("reference", "this")):
                    r = subprocess.run([sys.executable, "-c", _TURN, str(count), str(workers), url or "-"],
                                       cwd=here if who == "this" else reference, capture_output=True, text=True,
                                       timeout=600, check=True)
                    got[who].append(json.loads(r.stdout.strip().splitlines()[-1])["rate"])
            mine, ref = statistics.median(got["this"]), statistics.median(got["reference"])
            print(f"  beside the reference, {store}, {workers} caller(s): "
                  f"{' '.join(f'{x:.0f}' for x in got['this'])} vs {' '.join(f'{x:.0f}' for x in got['reference'])}"
                  f" decisions/s ({mine / ref:.2f}x, medians; load average {os.getloadavg()[0]:.2f})")


def end_to_end(creates: int, workers: int, hub_ipc: str, tag: str) -> float:
    clients = [wire.connect(hub_ipc, timeout_s=120) for _ in range(workers)]
    counter = iter(range(creates))

    def worker(c):
        for i in counter:
            c.call("create_container", "busybox", f"bp{tag}.{i}", {"no_start": True})

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker, c) for c in clients], raise_error=True)
    elapsed = time.perf_counter() - started
    for i in range(creates):
        clients[0].call("container_destroy", f"bp{tag}.{i}", True)
    for c in clients:
        c.close()
    return creates / elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decisions", type=int, default=2000)
    p.add_argument("--creates", type=int, default=30)
    p.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite",
                   help="etcd: also measure decisions on a local etcd, beside SQLite")
    p.add_argument("--reference", metavar="CHECKOUT",
                   help="also run the decisions of another checkout (e.g. main) in alternating turns beside this one")
    p.add_argument("--turns", type=int, default=4, help="--reference: turns of each checkout per figure")
    args = _common.parse(p, {"decisions": 100, "creates": 2}, "dbp" + secrets.token_hex(2))
    print("bench/placement")
    print(f"  load average at start: {os.getloadavg()[0]:.2f}")
    for workers in (1, 4):
        got = decisions(100, args.decisions, workers)
        print(f"  100 hosts, decision + atomic claim, {workers} caller(s): {got['rate']:8.1f} decisions/s")
        print(f"    per CPU second of the bench: {got['cpu_rate']:8.1f} decisions")
    if args.store == "etcd":
        from ops.fleetlib.etcd import local_etcd
        with tempfile.TemporaryDirectory() as d, local_etcd(d) as etcd:
            for workers in (1, 4):
                got = decisions(100, args.decisions, workers, etcd.url, etcd.proc.pid)
                print(f"  100 hosts, decision + atomic claim on etcd, {workers} caller(s): {got['rate']:8.1f} "
                      "decisions/s")
                print(f"    per CPU second of the bench: {got['cpu_rate']:8.1f} decisions; "
                      f"{got['requests']:.2f} etcd requests and {got['etcd_cpu_ms']:.2f} ms of etcd's CPU "
                      "per decision")
            if args.reference:
                beside_reference(args.reference, args.decisions, args.turns, etcd.url)
            n_hosts = 100 if args.quick else 1000
            cost = etcd_costs(etcd.url, n_hosts, n_hosts)
            print(f"  etcd per host: {cost['host_bytes']:.0f} B stored (row, beat, key, reservation record); "
                  f"per container: {cost['container_bytes']:.0f} B")
            print(f"  etcd heartbeat flush of {n_hosts} hosts: {cost['flush_requests']} requests, "
                  f"{cost['flush_ms']:.0f} ms")
            print(f"  etcd hosts list read by a hub whose watch is down ({n_hosts} hosts): "
                  f"full {cost['pass_full_bytes']} B; "
                  f"after a tenth beat, read by change: {cost['pass_changed_bytes']} B "
                  f"({cost['pass_full_bytes'] / max(1, cost['pass_changed_bytes']):.1f}x less)")
    if args.reference and args.store != "etcd":
        beside_reference(args.reference, args.decisions, args.turns, None)
    prefix = args.prefix
    try:
        state = fleetmod.up(prefix, 3, f"10.208.{secrets.randbelow(256)}.0/24")
        for workers in (1, 4):
            rate = end_to_end(args.creates, workers, state["hub"]["ipc"], str(workers))
            print(f"  3 real hosts, create_container --no-start end to end, {workers} client(s): "
                  f"{rate:6.1f} creates/s")
    finally:
        fleetmod.down(prefix)
    return 0


if __name__ == "__main__":
    _common.run(main)
