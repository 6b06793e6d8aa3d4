"""Hollow fleets: many hollow agents in one process (like Kubernetes'
kubemark hollow nodes), for the scale benchmark and its tests.

Each hollow agent is the real agent (``agents.main.start`` with
``hollow=True``: the real RPC service, ContainerManager, hostinfo and hub
link with its heartbeats and jittered rejoin, over a runtime,
``lxcwrap.run.hollow_run``, that starts no tool: no LXC, bridge or
netfilter).  Only the supervisor is left out: a hollow agent has no
containers to watch.  One process serves COUNT of them under one gevent
loop, each on its own ipc endpoint, each registered with the hub over the
hub's local ipc endpoint as host ``PREFIX-hNNNN``; several processes make a
fleet larger than one process can beat for (two cores: about 250 per
process).

    python3 -m bench.hollow --root DIR --hub ipc://HUB.sock --prefix P --first 0 --count 250
        [--heartbeat-s 5] [--rejoin-jitter-s S] [--start-over-s 5]

Agent i lives in DIR/aNNNN (state) and serves ipc://DIR/aNNNN.sock; the
starts are spread over ``--start-over-s`` seconds (so their heartbeats are
too, as on a real fleet).  When every agent is serving it prints
``hollow ready N`` and flushes.  SIGTERM or SIGINT stops them all; what
they made is under DIR, which the caller removes.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys

import gevent
import gevent.event

from agents import config as agent_config
from agents import main as agent_main


def host_name(prefix: str, i: int) -> str:
    """The fleet name of hollow agent ``i``."""
    return f"{prefix}-h{i:04d}"


def agent_config_for(root: str, hub: str, prefix: str, i: int, heartbeat_s: float,
                     rejoin_jitter_s: float) -> agent_config.AgentConfig:
    """The settings of hollow agent ``i`` (state dir, endpoint, bridge name
    and host name derived from ``root``, ``prefix`` and ``i``)."""
    return agent_config.AgentConfig(
        listen=[f"ipc://{root}/a{i:04d}.sock"], state_dir=f"{root}/a{i:04d}", bridge=f"{prefix[:6]}b{i:04d}",
        subnet="10.255.0.0/24", hub=hub, heartbeat_s=heartbeat_s, rejoin_jitter_s=rejoin_jitter_s,
        host_name=host_name(prefix, i), advertise_address="127.0.0.1", hollow=True,
        reservable_memory_bytes=16 << 30, log_level="WARNING")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.hollow", description=__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="directory for the agents' state and sockets")
    p.add_argument("--hub", required=True, help="the hub's local ipc:// endpoint")
    p.add_argument("--prefix", required=True, help="host names are PREFIX-hNNNN")
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--heartbeat-s", type=float, default=5.0)
    p.add_argument("--rejoin-jitter-s", type=float, default=-1.0, help="default: one heartbeat")
    p.add_argument("--start-over-s", type=float, default=0.0, help="spread the starts over this many seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    running: list[agent_main.Running] = []
    stopping = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stopping.set)
    gevent.signal_handler(signal.SIGINT, stopping.set)
    step_s = args.start_over_s / max(1, args.count)
    for i in range(args.first, args.first + args.count):
        cfg = agent_config_for(args.root, args.hub, args.prefix, i, args.heartbeat_s, args.rejoin_jitter_s)
        running.append(agent_main.start(cfg, supervise=False))
        if stopping.wait(step_s):
            break
    print(f"hollow ready {len(running)}", flush=True)
    stopping.wait()
    for agent in running:
        agent.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
