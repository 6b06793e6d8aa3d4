"""bench/routing: what the router costs and how fast it follows.

1. Requests/s and p50/p99 latency through the router (HAProxy 2.6 in its own
   namespace, Host-header routing) beside direct requests to the same
   container's host mapping (host address : mapped port), in the same run,
   with the same clients (threads), in alternating slices; once with a new
   connection per request, once with clients that keep their connection
   open where the server lets them (HAProxy does; busybox httpd closes).
   Target: the router at 0.8x the direct throughput or better.
2. Time from ``create_container`` returning to the first 200 through the
   router for the new container's default route.  Target: under 1 s.
3. Time from a host's death (agent SIGKILLed, containers stopped dead) to
   the first 200 through the router from the ``--restart always`` container
   re-created elsewhere (heartbeats every 1 s, a host lost after 3 missed).

A local fleet of 3 hosts with a router, real LXC containers (busybox
httpd).  Prints figures; asserts nothing.

Run as root:  python3 bench/routing.py [--clients 4] [--seconds 6] [--creates 5] [--prefix P]
              python3 bench/routing.py --quick     (the tiny form the tests run)
SIGTERM or Ctrl-C tears the fleet down (bench/_common.py).
"""
from __future__ import annotations

import argparse
import http.client
import os
import secrets
import signal
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common  # noqa: E402
from dcctl import wire  # noqa: E402
from lxcwrap.errors import LxcError  # noqa: E402
from lxcwrap.lxc import Lxc  # noqa: E402
from lxcwrap.run import blocking_runner  # noqa: E402
from ops import fleet as fleetmod  # noqa: E402


def keepalive_get(conn: http.client.HTTPConnection, host: str) -> int:
    """GET on a kept connection (http.client opens it again when the server
    closed it)."""
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        conn.close()
        raise OSError("request failed")


def one_get(addr: str, port: int, host: str | None, timeout_s: float = 5.0) -> int:
    conn = http.client.HTTPConnection(addr, port, timeout=timeout_s)
    try:
        conn.request("GET", "/", headers={"Host": host or f"{addr}:{port}", "Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def load(addr: str, port: int, host: str | None, clients: int, seconds: float,
         latencies: list[float] | None = None, errors: list[int] | None = None, keepalive: bool = False) -> float:
    """``clients`` threads GET for ``seconds``; each success's latency (s) is
    appended to ``latencies``, failures counted in ``errors[0]``; returns the
    seconds it took."""
    latencies = [] if latencies is None else latencies
    errors = [0] if errors is None else errors
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client():
        mine, bad = [], 0
        conn = http.client.HTTPConnection(addr, port, timeout=5) if keepalive else None
        while time.monotonic() < stop_at:
            t0 = time.perf_counter()
            try:
                ok = (keepalive_get(conn, host or f"{addr}:{port}") if keepalive else one_get(addr, port, host)) == 200
            except OSError:
                ok = False
            if ok:
                mine.append(time.perf_counter() - t0)
            else:
                bad += 1
        if conn is not None:
            conn.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    # daemon threads: a SIGTERM in the main thread must not wait for them
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        while t.is_alive():
            t.join(timeout=0.2)
    return time.monotonic() - started


def interleaved(paths: dict[str, tuple[str, int, str | None]], clients: int, seconds: float, rounds: int,
                keepalive: bool = False) -> dict:
    """Load each path for ``seconds`` in all, in ``rounds`` alternating
    slices (a shared machine's noise falls on both alike):
    {path: {rps, p50_ms, p99_ms, n, errors}}."""
    acc = {k: {"lat": [], "err": [0], "took": 0.0} for k in paths}
    for i in range(rounds):
        order = list(paths) if i % 2 == 0 else list(reversed(paths))
        for k in order:
            a = acc[k]
            a["took"] += load(*paths[k], clients, seconds / rounds, a["lat"], a["err"], keepalive)
    out = {}
    for k, a in acc.items():
        lat = sorted(a["lat"])
        pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0.0  # noqa: E731
        out[k] = {"rps": len(lat) / a["took"], "p50_ms": pick(0.50), "p99_ms": pick(0.99), "n": len(lat),
                  "errors": a["err"][0]}
    return out


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


def failover(hub: wire.RpcClient, fleet: dict, router: tuple[str, int]) -> None:
    victim = fleet["hosts"][2]
    made = hub.call("create_container", "busybox", "bench.moved", {"restart": "always", "host": victim["name"]})
    name = made["routes"][0]
    first_200(router, name)
    died = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    lxc_path = os.path.join(victim["state_dir"], "lxc")
    lxc = Lxc(lxc_path, run=blocking_runner(["nsenter", f"--net=/run/netns/{victim['netns']}", "--"]))
    for c in os.listdir(lxc_path):
        try:
            lxc.stop(c, kill=True)
        except LxcError:
            pass
    while time.monotonic() - died < 60:
        try:
            conn = http.client.HTTPConnection(*router, timeout=2)
            conn.request("GET", "/", headers={"Host": name, "Connection": "close"})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
            conn.close()
            if resp.status == 200 and victim["name"] not in body:
                print(f"  host death -> first 200 via the router from the re-created container: "
                      f"{time.monotonic() - died:.2f} s (heartbeat 1 s, lost after 3 missed)")
                return
        except OSError:
            pass
        time.sleep(0.05)
    print("  host death -> first 200: the re-created container did not answer in 60 s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0, help="of load per path (direct, router)")
    ap.add_argument("--creates", type=int, default=5, help="creates timed to their first 200")
    ap.add_argument("--no-failover", action="store_true", help="skip figure 3")
    args = _common.parse(ap, {"clients": 2, "seconds": 1.0, "creates": 1, "no_failover": True},
                         "dbr" + secrets.token_hex(2), argv)
    if os.geteuid() != 0:
        print("bench/routing: run as root", file=sys.stderr)
        return 2
    prefix = args.prefix
    # up() undoes its own steps if it fails or is interrupted, and refuses a
    # prefix in use (left alone: the finally below is only for our fleet)
    fleet = fleetmod.up(prefix, 3, fleetmod.free_subnet(205), heartbeat_s=1.0, router=True)
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
            print(f"routing bench: one busybox httpd backend, {args.clients} client threads, {args.seconds:g} s per "
                  f"path in alternating slices (fleet {prefix}, 3 hosts, this machine)")
            for keepalive in (False, True):
                figures = interleaved({"direct": (*direct, None), "router": (*router, name)}, args.clients,
                                      args.seconds, 1 if args.quick else 6, keepalive)
                d, r = figures["direct"], figures["router"]
                print("  clients keeping connections open:" if keepalive else "  a new connection per request:")
                for label, f in (("direct (host mapping)", d), ("via the router (HAProxy)", r)):
                    print(f"    {label:26} {f['rps']:8.0f} req/s   p50 {f['p50_ms']:6.2f} ms   "
                          f"p99 {f['p99_ms']:6.2f} ms   ({f['n']} requests, {f['errors']} errors)")
                ratio = r["rps"] / d["rps"] if d["rps"] else 0.0
                print(f"    router / direct throughput: {ratio:.2f}x (target >= 0.8x)")
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
            if not args.no_failover:
                failover(hub, fleet, router)
    finally:
        left = fleetmod.down(prefix)
        if left:
            print(f"bench/routing: left behind: {left}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    _common.run(main)
