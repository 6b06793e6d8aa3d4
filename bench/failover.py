"""bench/failover: how fast the fleet heals.

1. Time from a host's death (agent SIGKILLed, its containers stopped dead)
   to its ``--restart always`` containers answering HTTP on other hosts, with
   3 and with 10 hosts (a local fleet, real LXC, heartbeats every 1 s, a host
   lost after 3 missed).
2. Time for a restarted agent to serve again (re-adopting its containers and
   port mappings) with 50 running containers.

Run as root:  python3 bench/failover.py [--sizes 3,10] [--containers 4] [--adopt 50] [--quick]
(``--quick``: 2 hosts, 1 container, 2 adopted, for the test suite).  Fleets
are named ``PREFIX`` + the size (``--prefix``), the agent of part 2
``dct`` + PREFIX's last 6 characters; all are gone when this exits, also
after SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common  # noqa: E402
from dcctl import errors, wire  # noqa: E402
from lxcwrap.errors import LxcError  # noqa: E402
from lxcwrap.lxc import Lxc  # noqa: E402
from lxcwrap.run import blocking_runner  # noqa: E402
from ops import fleet as fleetmod  # noqa: E402
from tests.agentproc import TEST_PREFIX, AgentProcess  # noqa: E402


def answering(hub: wire.RpcClient, fleet: dict, name: str, dead: str) -> bool:
    try:
        info = hub.call("container_inspect", name, timeout_s=3)
    except errors.DcError:
        return False
    if info["host"] == dead or not info["ports"]:
        return False
    addr = next(h["address"] for h in fleet["hosts"] if h["name"] == info["host"])
    try:
        page = urllib.request.urlopen(f"http://{addr}:{info['ports'][0]['host_port']}/", timeout=1).read()
    except OSError:
        return False
    return name.encode() in page


def failover(prefix: str, n_hosts: int, n_containers: int) -> float:
    try:
        fleet = fleetmod.up(prefix, n_hosts, f"10.206.{secrets.randbelow(256)}.0/24", heartbeat_s=1.0)
        victim = fleet["hosts"][0]
        with wire.connect(fleet["hub"]["ipc"], 120) as hub:
            names = [f"fo{i}" for i in range(n_containers)]
            for n in names:
                hub.call("create_container", "busybox", n, {"restart": "always", "host": victim["name"]})
            died = time.monotonic()
            os.kill(victim["pid"], signal.SIGKILL)
            lxc_path = os.path.join(victim["state_dir"], "lxc")
            lxc = Lxc(lxc_path, run=blocking_runner(["nsenter", f"--net=/run/netns/{victim['netns']}", "--"]))
            for n in names:
                try:
                    lxc.stop(n, kill=True)
                except LxcError:
                    pass
            pending = set(names)
            while pending:
                if time.monotonic() - died > 120:
                    raise RuntimeError(f"not healed in 120 s: {pending}")
                pending = {n for n in pending if not answering(hub, fleet, n, victim["name"])}
                time.sleep(0.1)
            return time.monotonic() - died
    finally:
        fleetmod.down(prefix)


def adoption(prefix: str, count: int) -> float:
    agent = AgentProcess(prefix)
    try:
        agent.start(timeout_s=120)
        with agent.client(120) as c:
            for i in range(count):
                c.call("container_create", "busybox", f"ad{i}")
                c.call("container_start", f"ad{i}")
                c.call("container_connection_add", f"ad{i}", "tcp", 80)
        agent.kill9()
        started = time.monotonic()
        agent.start(timeout_s=120)
        with agent.client(120) as c:
            listed = c.call("container_ls")
        elapsed = time.monotonic() - started
        assert sum(x["state"] == "running" for x in listed) == count
        return elapsed
    finally:
        agent.cleanup()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="3,10")
    p.add_argument("--containers", type=int, default=4)
    p.add_argument("--adopt", type=int, default=50)
    args = _common.parse(p, {"sizes": "2", "containers": 1, "adopt": 2}, "dbf" + secrets.token_hex(2))
    print("bench/failover (heartbeat 1 s, host lost after 3 missed)")
    for n in (int(x) for x in args.sizes.split(",")):
        t = failover(f"{args.prefix}{n}", n, args.containers)
        print(f"  {n:2d} hosts: host death -> {args.containers} --restart always containers answering "
              f"elsewhere: {t:5.1f} s")
    t = adoption(TEST_PREFIX + args.prefix[-6:], args.adopt)
    print(f"  agent restart with {args.adopt} running containers -> serving, all re-adopted: {t:5.2f} s")
    return 0


if __name__ == "__main__":
    _common.run(main)
