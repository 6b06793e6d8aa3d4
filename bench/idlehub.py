"""An idle hub on etcd: its CPU and the requests it sends etcd per second,
with N host records and another hub's beats (as at 5 s heartbeats: every
0.5 s a tenth of the hosts' beats, one transaction), past the hub's
start-up grace, so that it leads and judges the hosts on the beats it sees.

    python3 bench/idlehub.py [--hosts 100,1000] [--seconds 20] [--rounds 2]
                             [--reference CHECKOUT] [--quick]

``--reference CHECKOUT`` runs the hub of another checkout (e.g. /work/main)
in turns alternating with this one's, on the same etcd: the reference in
the same run.  The requests are etcd's own count (``grpc_server_handled_total``
of its /metrics) over the window, less the beat writer's; the CPU is the hub
process's (utime + stime).  After each window every host must still be
alive (the hub judged them on the beats), or the run fails.

Everything is under /tmp/dcidle-PREFIX (etcd's data dir, the hubs' state)
and is removed, and every process killed, even on SIGTERM/SIGINT.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common  # noqa: E402
from hub.store.etcd import EtcdClient, EtcdStore  # noqa: E402
from ops.fleetlib.etcd import local_etcd  # noqa: E402

CAPACITY = {"memory_reservable_bytes": 64 << 30, "container_slots": 100}
SUMMARY = json.dumps({"capacity": CAPACITY, "metrics": {"load": [0.1, 0.2, 0.3], "mem_free_bytes": 1 << 33},
                      "containers": []})
HEARTBEAT_SECONDS = 5
MISSED_HEARTBEATS = 3


def etcd_requests(url: str) -> float:
    """Requests etcd has served since it started (its own count)."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(m) for m in re.findall(r"^grpc_server_handled_total\{[^}]*\} (\S+)$", text, re.M))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def populate(client: EtcdClient, prefix: str, n: int) -> None:
    """N alive host records (no key: as local hosts), 128 a transaction."""
    now, ops = time.time(), []
    for i in range(n):
        name = f"idle-h{i:04d}"
        ops.append(client.put(f"{prefix}hosts/{name}", {
            "name": name, "endpoint": f"tcp://10.9.{i // 250}.{i % 250}:7000", "address": "", "key": "",
            "labels": {"rack": str(i % 10)}, "capacity": CAPACITY, "summary": {}, "state": "alive",
            "registered_at": now, "last_heartbeat": now}))
    for i in range(0, len(ops), 128):
        client.txn([], ops[i:i + 128])


def turn(root: str, url: str, checkout: str, n: int, seconds: float, procs: list) -> tuple[float, float]:
    """(etcd requests/s, hub CPU % of a core) of one hub of ``checkout``."""
    prefix = f"/idle-{secrets.token_hex(4)}/"
    client = EtcdClient(url)
    populate(client, prefix, n)
    writer = EtcdStore(url, prefix)  # the other hub, writing the beats it heard
    state = os.path.join(root, prefix.strip("/"))
    os.makedirs(state)
    argv = [sys.executable, "-m", "hub.main", "--store", "etcd", "--etcd", url, "--etcd-prefix", prefix,
            "--hub-name", "idle-hub", "--listen", f"ipc://{state}/hub.sock", "--state-dir", state,
            "--heartbeat-s", str(HEARTBEAT_SECONDS), "--missed-heartbeats", str(MISSED_HEARTBEATS),
            "--metrics-listen", "off", "--log-level", "WARNING"]
    with open(os.path.join(state, "hub.log"), "ab") as log:
        proc = subprocess.Popen(argv, cwd=checkout, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True, env={**os.environ, "PYTHONPATH": checkout})
    procs.append(proc)
    beat = 0

    def beats_for(window_s: float) -> None:
        nonlocal beat
        started = time.monotonic()
        while time.monotonic() - started < window_s:
            share = max(1, n // 10)
            writer.record_beats({f"idle-h{(beat * share + j) % n:04d}": (time.time(), SUMMARY, None)
                                 for j in range(share)})
            beat += 1
            time.sleep(0.5)
            if proc.poll() is not None:
                raise RuntimeError(f"the hub of {checkout} exited {proc.returncode}; see {state}/hub.log")

    try:
        beats_for(HEARTBEAT_SECONDS * MISSED_HEARTBEATS + 3)  # past the grace: the hub judges
        sent, cpu, started = etcd_requests(url), cpu_seconds(proc.pid), time.monotonic()
        written = writer.etcd.requests
        beats_for(seconds)
        took = time.monotonic() - started
        rate = (etcd_requests(url) - sent - (writer.etcd.requests - written)) / took
        share = 100 * (cpu_seconds(proc.pid) - cpu) / took
        alive = sum(h["state"] == "alive" for h in writer.hosts())
        if alive != n:
            raise RuntimeError(f"the hub of {checkout} judged {n - alive} of {n} beating hosts lost")
        return rate, share
    finally:
        _common.reap([proc])
        procs.remove(proc)
        writer.close()
        client.txn([], [client.delete(prefix, prefix=True)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", default="100,1000", help="host counts, comma-separated (default %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per turn (default %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="turns of each checkout per host count")
    p.add_argument("--reference", metavar="CHECKOUT", help="also the hub of another checkout, in alternating turns")
    args = _common.parse(p, {"hosts": "10", "seconds": 2.0, "rounds": 1}, "idl" + secrets.token_hex(3))
    root = f"/tmp/dcidle-{args.prefix}"
    os.makedirs(root, mode=0o700)
    procs: list[subprocess.Popen] = []
    try:
        with local_etcd(root) as etcd:
            print(f"idle hub on etcd, another hub's beats at {HEARTBEAT_SECONDS} s heartbeats:", flush=True)
            for n in [int(x) for x in args.hosts.split(",")]:
                for rnd in range(args.rounds):
                    who = [("this checkout", _common.REPO)]
                    if args.reference:
                        who.append(("reference", args.reference))
                    for label, checkout in (who if rnd % 2 == 0 else who[::-1]):
                        rate, share = turn(root, etcd.url, checkout, n, args.seconds, procs)
                        load = open("/proc/loadavg").read().split()[0]
                        print(f"  {n} hosts, {label}: {rate:.1f} etcd requests/s, hub CPU {share:.1f}% of a core "
                              f"over {args.seconds:g} s; all {n} alive; load average {load}", flush=True)
    finally:
        _common.teardown(procs, root)
    return 0


if __name__ == "__main__":
    _common.run(main)
