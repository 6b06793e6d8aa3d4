"""bench/deploy: how long a deploy takes and what its clients see.

1. Deploy time, start to switched (the hub's own figure: the new release's
   containers created, started, checked, and the routes pointing at them),
   and the whole call (with the drain and the old containers' retirement),
   for a stateless app of ``--replicas`` busybox httpd containers; each
   release renders its own page.
2. Failed requests through the router during each deploy: ``--clients``
   threads GET the app's route (a new connection per request) from before
   the deploy starts until after it returns.  Target: 0.
3. The gap of an app with a volume (one writer: stop old, start new, check,
   switch): seconds without a serving container.

A local fleet of 3 hosts with a router, real LXC containers.  Checks as in
the test suite (GET /health, 1 s before the first, 1 s apart) rather than
Dokku's 5 s defaults, which would only add their wait to every figure.
Prints figures; asserts nothing.

Run as root:  python3 bench/deploy.py [--deploys 5] [--replicas 2] [--clients 2] [--prefix P]
              python3 bench/deploy.py --quick     (the tiny form the tests run)
SIGTERM or Ctrl-C tears the fleet down (bench/_common.py).
"""
from __future__ import annotations

import argparse
import http.client
import os
import secrets
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common  # noqa: E402
from dcctl import wire  # noqa: E402
from ops import fleet as fleetmod  # noqa: E402

COMMAND = ("echo \"release $REL\" > /var/www/index.html; echo ok > /var/www/health; "
           "exec httpd -f -p 80 -h /var/www")
VOLUME_COMMAND = ("echo \"$REL\" >> /srv/data/log; echo \"release $REL\" > /var/www/index.html; "
                  "echo ok > /var/www/health; exec httpd -f -p 80 -h /var/www")
CHECKS = {"check": "/health", "check_wait_s": 1.0, "check_timeout_s": 5, "check_attempts": 10, "settle_s": 2.0,
          "retire_s": 3.0}


def get(router: tuple[str, int], host: str, timeout_s: float = 10.0) -> tuple[int, str]:
    conn = http.client.HTTPConnection(*router, timeout=timeout_s)
    try:
        conn.request("GET", "/", headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


class Load:
    """``clients`` threads GET ``host`` through the router until stopped;
    a request that is not a 200 with a release page is failed."""

    def __init__(self, router: tuple[str, int], host: str, clients: int):
        self.router, self.host = router, host
        self.ok, self.failed = 0, 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, body = get(self.router, self.host)
                good = status == 200 and body.startswith("release ")
            except (OSError, http.client.HTTPException):
                good = False
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.failed += 1
            time.sleep(0.005)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self.threads:
            while t.is_alive():
                t.join(timeout=0.2)


def wait_page(router: tuple[str, int], host: str, want: str, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if get(router, host, 3) == (200, want + "\n"):
                return True
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--deploys", type=int, default=5, help="deploys timed under load (after the first)")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--clients", type=int, default=2, help="load threads through the router")
    ap.add_argument("--no-volume", action="store_true", help="skip figure 3")
    args = _common.parse(ap, {"deploys": 1, "replicas": 1}, "dpl" + secrets.token_hex(2), argv)
    if os.geteuid() != 0:
        print("bench/deploy: run as root", file=sys.stderr)
        return 2
    prefix = args.prefix
    fleet = fleetmod.up(prefix, 3, fleetmod.free_subnet(211), heartbeat_s=1.0, router=True)
    try:
        r_addr, r_port = fleet["router"]["listen"].rsplit(":", 1)
        router = (r_addr, int(r_port))
        with wire.connect(fleet["hub"]["ipc"], 600) as hub:
            app = "bench"
            route = f"{app}.{fleet['route_domain']}"
            hub.call("deploy", app, "busybox", {**CHECKS, "replicas": args.replicas, "command": COMMAND,
                                                "env": {"REL": "v1"}}, timeout_s=600)
            if not wait_page(router, route, "release v1"):
                print("bench/deploy: v1 never answered through the router", file=sys.stderr)
                return 1
            print(f"deploy bench: app of {args.replicas} busybox httpd container(s), {args.clients} client threads "
                  f"through the router for each whole deploy (fleet {prefix}, 3 hosts, this machine)")
            switched, failed, requests = [], 0, 0
            for n in range(2, args.deploys + 2):
                with Load(router, route, args.clients) as load:
                    while load.ok < 3:
                        time.sleep(0.05)
                    t0 = time.monotonic()
                    res = hub.call("deploy", app, "busybox", {"env": {"REL": f"v{n}"}}, timeout_s=600)
                    wall = time.monotonic() - t0
                    wait_page(router, route, f"release v{n}", 10)
                    time.sleep(0.5)
                switched.append(res["deploy_s"])
                failed += load.failed
                requests += load.ok + load.failed
                print(f"  deploy v{n}: start -> switched {res['deploy_s']:.2f} s, whole call {wall:.2f} s "
                      f"(retire {CHECKS['retire_s']:g} s), {load.ok + load.failed} requests, {load.failed} failed")
            print(f"  deploy time start -> switched: median {statistics.median(switched):.2f} s, "
                  f"max {max(switched):.2f} s over {len(switched)} deploys")
            print(f"  failed requests during deploys: {failed} of {requests} (target 0)")
            hub.call("app_rm", app, timeout_s=600)
            if not args.no_volume:
                vol = {**CHECKS, "command": VOLUME_COMMAND, "volume": "benchdata:/srv/data"}
                hub.call("deploy", "benchvol", "busybox", {**vol, "env": {"REL": "v1"}}, timeout_s=600)
                res = hub.call("deploy", "benchvol", "busybox", {"env": {"REL": "v2"}}, timeout_s=600)
                print(f"  volume app (one writer, stop-first): gap without a serving container "
                      f"{res['gap_s']:.2f} s, start -> switched {res['deploy_s']:.2f} s")
                hub.call("app_rm", "benchvol", timeout_s=600)
    finally:
        left = fleetmod.down(prefix)
        if left:
            print(f"bench/deploy: left behind: {left}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    _common.run(main)
