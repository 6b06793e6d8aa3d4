"""Local fleet launcher: N simulated hosts on one machine (``ops/fleet``).

``up N`` makes a fleet bridge ``<prefix>fleet0`` in the root namespace with the
gateway address of ``--fleet-subnet``; per host ``i`` a network namespace
``<prefix>-host-<i>`` joined to it by a veth (root side ``<prefix>h<i>``,
namespace side ``eth0`` at subnet+10+i); the hub in the root namespace; and one
agent per host inside its namespace, started once the hub has admitted its key
(``host_add``, the operator's step, over the hub's local endpoint).  Everything made is recorded in
``/run/dcfleet/<prefix>/fleet.json`` (written before the first step and after
each one), which ``status`` and ``down`` read; ``down`` also finds leftovers by
prefix alone.

With ``--router``, one ``dc-router`` runs in its own namespace
``<prefix>-router`` (veth ``<prefix>r0``, address subnet+5), with its own
CURVE key in the hub's ``router`` role; its HAProxy answers on port 80 there
(``export DCF_ROUTER=ADDR:80``).  The hub's route domain is ``<prefix>.test``
unless ``--route-domain`` names another.

Agents are not started with ``ip netns exec``: it remounts /sys for the
namespace and so hides the cgroup hierarchies that LXC needs.  They run
through ``nsenter --net`` and ``unshare --mount``, which mounts a sysfs of the
namespace (LXC reads ``/sys/class/net/<bridge>/bridge``) and moves the
machine's ``/sys/fs/cgroup`` tree onto it.

The code, by concern: ``ops.fleetlib.base`` (names, the state file, shared
helpers), ``ops.fleetlib.up`` (bring a fleet up), ``ops.fleetlib.down``
(take it down, status); this module is the command line, one function per
subcommand, and the names other code imports (``from ops import fleet``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys

# every name other code reaches as ``fleet.NAME`` (tests use _alive, _run and _spawn too)
from ops.fleetlib.base import (AGENT_PORT, CONTAINER_BRIDGE, LOG_ROOT, MAX_HOSTS, PORT_RANGE, PREFIX_RE, REPO,
                               ROUTER_PORT, RUN_ROOT, STATE_ROOT, FleetError, _alive, _run, ensure_forward_rule,
                               forward_rule, free_subnet, load, paths, ping, plan, remove_forward_rule,
                               save)
from ops.fleetlib.down import down, exists, leftovers, status
from ops.fleetlib.hostctl import kill_host, start_host
from ops.fleetlib.up import _spawn, add_hosts, agent_argv, router_argv, seed_hub, setup_keys, up

__all__ = ["AGENT_PORT", "CONTAINER_BRIDGE", "LOG_ROOT", "MAX_HOSTS", "PORT_RANGE", "PREFIX_RE", "REPO",
           "ROUTER_PORT", "RUN_ROOT", "STATE_ROOT", "FleetError", "add_hosts", "agent_argv", "cmd_down",
           "cmd_status", "cmd_up", "down", "ensure_forward_rule", "forward_rule", "kill_host", "leftovers", "load", "main",
           "parser", "paths", "ping", "plan", "remove_forward_rule", "router_argv", "save", "seed_hub",
           "setup_keys", "start_host", "status", "up"]


def _print_up(state: dict) -> None:
    """Shell that ``eval`` takes: the exports, then one comment per host;
    with ``--store etcd`` also a comment for etcd and one ``hub NAME PID
    ENDPOINT`` line per hub (not shell: eval says "hub: command not found"
    for them, after the exports)."""
    print(f"export DCCTL_HOST={state['dcctl_host']}")
    if state.get("router"):
        print(f"export DCF_ROUTER={state['router']['listen']}")
    if state.get("prometheus"):
        print(f"export DCF_PROMETHEUS={state['prometheus']['url']}")
    if state.get("store") == "etcd":  # the acceptance interface: one "hub NAME PID ENDPOINT" line per hub
        print(f"# etcd {state['etcd']['pid']} {state['etcd']['url']}")
        for hd in state["hubs"]:
            print(f"hub {hd['name']} {hd['pid']} {hd['tcp']}")
    for h in state["hosts"]:
        print(f"# {h['name']} {h['address']} {h['tcp']}")


def cmd_up(args: argparse.Namespace) -> int:
    """``ops/fleet up N``: bring the fleet up and print its exports (or its
    description with --json); 1 when it failed (everything made removed)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM undoes like ^C
    try:
        state = up(args.prefix, args.n, args.fleet_subnet, args.hub_port, not args.no_hub,
                   args.agent_arg, args.timeout, args.heartbeat_s, args.router, args.route_domain,
                   args.store, args.hubs, prometheus=args.prometheus)
    except (Exception, KeyboardInterrupt) as exc:
        why = str(exc) if isinstance(exc, FleetError) else "interrupted; everything made was removed" \
            if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
        print(f"fleet: up failed: {why}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(state, indent=1)) if args.json else _print_up(state)
        sys.stdout.flush()
    except BrokenPipeError:  # `ops/fleet up 3 | head -1`: the fleet is up all the same
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    """``ops/fleet down``: remove everything of the fleet; 1 when something
    is left (named on stderr).  A fleet of which nothing exists (no state
    file, nothing found by its prefix) is said to be no such fleet, exit 0
    (down is idempotent)."""
    try:
        if not exists(args.prefix):
            print(f"fleet {args.prefix}: no such fleet (no state file, nothing named by the prefix); nothing removed")
            return 0
        left = down(args.prefix)
    except FleetError as exc:
        left = [str(exc)]
    if left:
        print(f"fleet: down left: {', '.join(left)}", file=sys.stderr)
        return 1
    print(f"fleet {args.prefix}: down; every namespace, bridge, rule, container, process, lock file and dir removed")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    """``ops/fleet status``: one line per process (pid alive, ping); 0 when
    every one runs and answers."""
    state = status(args.prefix)
    if state is None:
        print(json.dumps(None) if args.json else f"fleet {args.prefix}: not up")
        return 1
    procs = ((state.get("hubs") or ([state["hub"]] if state["hub"] else [])) + state["hosts"]
             + ([state["router"]] if state.get("router") else []))
    if args.json:
        print(json.dumps(state, indent=1))
    else:
        print(f"fleet {args.prefix}: {state['status']}, bridge {state['bridge']} {state['gateway']}")
        for pr in procs:
            print(f"{pr['name']:8} pid {pr['pid']} {'alive' if pr['alive'] else 'DEAD':5} "
                  f"ping {'ok' if pr['ping'] else 'FAIL':4} {pr.get('tcp') or 'http://' + pr['listen']}")
    return 0 if all(pr["alive"] and pr["ping"] for pr in procs) else 1


def _what(out: dict) -> str:
    return {"host": "agent"}.get(out.get("kind", "host"), out.get("kind", "host"))


def cmd_kill(args: argparse.Namespace) -> int:
    """``ops/fleet kill HOST``: SIGKILL that host's agent (its containers run
    on); 1 when the fleet or host is unknown."""
    try:
        out = kill_host(args.prefix, args.host)
    except FleetError as exc:
        print(f"fleet: kill: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out) if args.json else
          f"{out['host']}: {_what(out)} pid {out['pid']} " + ("killed (SIGKILL)" if out["killed"] else "was not running"))
    return 0


def cmd_start(args: argparse.Namespace) -> int:
    """``ops/fleet start HOST``: run that host's agent again with the
    arguments ``up`` gave it; 1 when it does not answer."""
    try:
        out = start_host(args.prefix, args.host, args.timeout)
    except FleetError as exc:
        print(f"fleet: start: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(out) if args.json else
          f"{out['host']}: {_what(out)} pid {out['pid']} " + ("started" if out["started"] else "was already running"))
    return 0


def parser() -> argparse.ArgumentParser:
    """The ``ops/fleet`` command line: up N | status | down."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default="dcf", help="names everything made (default dcf)")
    common.add_argument("--json", action="store_true", help="print the fleet description as JSON")
    ap = argparse.ArgumentParser(prog="ops/fleet", description="Local fleet: hosts as network namespaces.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", parents=[common], help="start N hosts, their agents and the hub")
    u.add_argument("n", type=int)
    u.add_argument("--fleet-subnet", default="10.212.0.0/24")
    u.add_argument("--agent-arg", action="append", default=[], help="extra agent argument (repeatable; "
                   "use --agent-arg=--flag=value)")
    u.add_argument("--no-hub", action="store_true", help="no hub; agents get no --hub")
    u.add_argument("--hub-port", type=int, default=7100)
    u.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the agents and hub")
    u.add_argument("--heartbeat-s", type=float, default=2.0, help="seconds between agent heartbeats")
    u.add_argument("--router", action="store_true", help="also one dc-router (HAProxy) in its own namespace")
    u.add_argument("--route-domain", help="the hub's route domain (default <prefix>.test)")
    u.add_argument("--prometheus", action="store_true",
                   help="also Debian's Prometheus scraping the hub and every agent (export DCF_PROMETHEUS=...)")
    u.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite",
                   help="the hubs' store: sqlite (one hub, default) or etcd (a local etcd on the fleet bridge)")
    u.add_argument("--hubs", type=int, default=1, help="how many hubs (more than 1 needs --store etcd)")
    sub.add_parser("status", parents=[common], help="hosts: pid alive, ping ok")
    sub.add_parser("down", parents=[common], help="stop and remove everything of the fleet")
    k = sub.add_parser("kill", parents=[common], help="SIGKILL one host's agent, a hub or etcd (a fault drill)")
    k.add_argument("host", help="host-N (or N), hub-N (hub: the first), or etcd")
    st = sub.add_parser("start", parents=[common], help="start one host's agent, a hub or etcd again, as up did")
    st.add_argument("host", help="host-N (or N), hub-N (hub: the first), or etcd")
    st.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for it to answer")
    return ap


def main(argv: list[str] | None = None) -> int:
    """``ops/fleet up N | status | down | kill HOST | start HOST`` (see --help)."""
    args = parser().parse_args(argv)
    if os.geteuid() != 0:
        print("fleet: must run as root", file=sys.stderr)
        return 2
    if not PREFIX_RE.match(args.prefix):
        print(f"fleet: bad prefix {args.prefix!r}: 1-9 chars of a-z0-9, starting with a letter", file=sys.stderr)
        return 2
    return {"up": cmd_up, "down": cmd_down, "status": cmd_status, "kill": cmd_kill,
            "start": cmd_start}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
