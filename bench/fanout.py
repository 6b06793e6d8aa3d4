"""bench/fanout: a hub broadcast of a trivial method to N agents, beside a
plain gevent fan-out of raw zerorpc calls to the same N agents, in the same
run; median and p99 milliseconds per broadcast for N = 10, 50, 100.

The agents are the real dc-agent in hollow mode (``--hollow``: the real RPC
surface and code paths, but no LXC, bridge or netfilter, like kubemark's
hollow nodes), each its own process on an ipc endpoint, registered with a
real dc-hub.  The method is ``container_ls``.

Run as root:  python3 bench/fanout.py [--sizes 10,50,100] [--rounds 50] [--quick]
(``--quick``: N = 2, 3 rounds, for the test suite).  Everything it starts
has ``/tmp/dcfan-PREFIX`` in its argv and is gone when it exits, also after
SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import os
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
from bench._common import spawn as start  # noqa: E402
from dcctl import wire  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,50,100")
    p.add_argument("--rounds", type=int, default=50)
    args = _common.parse(p, {"sizes": "2", "rounds": 3}, "f" + secrets.token_hex(3))
    sizes = [int(x) for x in args.sizes.split(",")]
    root = f"/tmp/dcfan-{args.prefix}"
    procs: list[subprocess.Popen] = []
    os.makedirs(root, mode=0o700)  # before the try: a prefix in use is left alone
    try:
        hub_ep = f"ipc://{root}/hub.sock"
        procs.append(start([sys.executable, "-m", "hub.main", "--listen", hub_ep, "--state-dir", f"{root}/hub",
                            "--heartbeat-s", "5"], f"{root}/hub.log"))
        hub = wire.connect(hub_ep, timeout_s=60)
        wait_for(lambda: os.path.exists(f"{root}/hub.sock"), 30, "the hub")
        endpoints: list[str] = []
        print(f"bench/fanout: {args.rounds} broadcasts of container_ls per size, {os.cpu_count()} CPUs")
        for n in sizes:
            while len(endpoints) < n:
                i = len(endpoints)
                ep = f"ipc://{root}/a{i}.sock"
                procs.append(start([sys.executable, "-m", "agents.main", "--hollow", "--listen", ep,
                                    "--state-dir", f"{root}/a{i}", "--bridge", f"{args.prefix}b{i}",
                                    "--subnet", "10.255.0.0/24", "--host-name", f"hollow-{i:03d}",
                                    "--hub", hub_ep, "--heartbeat-s", "5"], f"{root}/a{i}.log"))
                endpoints.append(ep)
            wait_for(lambda: sum(h["state"] == "alive" for h in hub.call("hosts")) >= n, 300, f"{n} agents", procs)
            raw_clients = [zerorpc.Client(ep, timeout=30) for ep in endpoints[:n]]
            pool = gevent.pool.Pool(256)

            def raw_round():
                gevent.joinall([pool.spawn(c, "container_ls") for c in raw_clients], raise_error=True)

            def hub_round():
                out = hub.call("broadcast", "container_ls", [], {"timeout_s": 30})
                assert out["summary"]["ok"] == n, out["summary"]

            for fn in (raw_round, hub_round):  # warm up connections
                fn()
            raw_t, hub_t = [], []
            for _ in range(args.rounds):
                for fn, acc in ((raw_round, raw_t), (hub_round, hub_t)):
                    t = time.perf_counter()
                    fn()
                    acc.append(time.perf_counter() - t)
            (rm, rp), (hm, hp) = percentiles(raw_t), percentiles(hub_t)
            print(f"  N={n:3d}  raw fan-out: median {rm:7.2f} ms  p99 {rp:7.2f} ms   "
                  f"hub broadcast: median {hm:7.2f} ms  p99 {hp:7.2f} ms   ratio {hm / rm:.2f}x")
            for c in raw_clients:
                c.close()
        hub.close()
        return 0
    finally:
        _common.teardown(procs, root)


if __name__ == "__main__":
    _common.run(main)
