"""bench/routing: what the router costs and how fast it follows.

1. Requests/s and p50/p99 latency through the router (HAProxy 2.6 in its own
   namespace, Host-header routing) beside direct requests to the same
   container's host mapping (host address : mapped port), in the same run,
   with the same clients (threads, a new connection per request).
   Target: the router at 0.8x the direct throughput or better.
2. Time from ``create_container`` returning to the first 200 through the
   router for the new container's default route.  Target: under 1 s.

A local fleet of 3 hosts with a router, real LXC containers (busybox
httpd).  Prints figures; asserts nothing.

Run as root:  python3 bench/routing.py [--clients 4] [--seconds 5] [--creates 5]
              python3 bench/routing.py --quick     (the tiny form the tests run)
"""
from __future__ import annotations

import argparse
import http.client
import ipaddress
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dcctl import wire  # noqa: E402
from ops import fleet as fleetmod  # noqa: E402


def free_subnet() -> str:
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.205.{secrets.randbelow(256)}.0/24")
        if str(net.network_address)[:-1] not in routes:
            return str(net)
    raise RuntimeError("no free subnet for the bench fleet")


def one_get(addr: str, port: int, host: str | None, timeout_s: float = 5.0) -> int:
    conn = http.client.HTTPConnection(addr, port, timeout=timeout_s)
    try:
        conn.request("GET", "/", headers={"Host": host or f"{addr}:{port}", "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def load(addr: str, port: int, host: str | None, clients: int, seconds: float) -> dict:
    """``clients`` threads GET for ``seconds``: {rps, p50_ms, p99_ms, n, errors}."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client():
        mine, bad = [], 0
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = one_get(addr, port, host) == 200
            except OSError:
                ok = False
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                bad += 1
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    latencies.sort()
    pick = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else 0.0  # noqa: E731
    return {"rps": len(latencies) / took, "p50_ms": pick(0.50), "p99_ms": pick(0.99), "n": len(latencies),
            "errors": errors[0]}


def first_200(router: tuple[str, int], host: str, timeout_s: float = 30.0) -> float | None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if one_get(*router, host, timeout_s=2) == 200:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.01)
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=5.0, help="per load run")
    ap.add_argument("--creates", type=int, default=5, help="creates timed to their first 200")
    ap.add_argument("--quick", action="store_true", help="the tiny form: 2 clients, 1 s, 1 create")
    args = ap.parse_args(argv)
    if args.quick:
        args.clients, args.seconds, args.creates = 2, 1.0, 1
    if os.geteuid() != 0:
        print("bench/routing: run as root", file=sys.stderr)
        return 2
    prefix = "dbr" + secrets.token_hex(2)
    fleet = fleetmod.up(prefix, 3, free_subnet(), heartbeat_s=1.0, router=True)
    try:
        r_addr, r_port = fleet["router"]["listen"].rsplit(":", 1)
        router = (r_addr, int(r_port))
        with wire.connect(fleet["hub"]["ipc"], 120) as hub:
            made = hub.call("create_container", "busybox", "bench.web")
            name = made["routes"][0]
            direct = (made["address"], made["ports"][0]["host_port"])
            if first_200(router, name) is None:
                print("bench/routing: the route never answered", file=sys.stderr)
                return 1
            print(f"routing bench: one busybox httpd backend, {args.clients} clients, {args.seconds:g} s per run, "
                  f"a new connection per request (fleet {prefix}, 3 hosts, this machine)")
            d = load(*direct, None, args.clients, args.seconds)
            r = load(*router, name, args.clients, args.seconds)
            for label, f in (("direct (host mapping)", d), ("via the router (HAProxy)", r)):
                print(f"  {label:26} {f['rps']:8.0f} req/s   p50 {f['p50_ms']:6.2f} ms   p99 {f['p99_ms']:6.2f} ms"
                      f"   ({f['n']} requests, {f['errors']} errors)")
            ratio = r["rps"] / d["rps"] if d["rps"] else 0.0
            print(f"  router / direct throughput: {ratio:.2f}x (target >= 0.8x)")
            times = []
            for i in range(args.creates):
                made = hub.call("create_container", "busybox", f"bench.new{i}")
                t = first_200(router, made["routes"][0])
                if t is not None:
                    times.append(t)
            if times:
                print(f"  create_container returned -> first 200 via the router: median {statistics.median(times):.3f} s,"
                      f" max {max(times):.3f} s over {len(times)} creates (target < 1 s)")
            else:
                print("  create_container -> first 200: no create answered through the router")
    finally:
        left = fleetmod.down(prefix)
        if left:
            print(f"bench/routing: left behind: {left}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
