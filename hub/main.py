"""``dc-hub``: the fleet hub's entry point.

    dc-hub --listen tcp://ADDR:PORT [--listen ipc://PATH] --state-dir DIR
           [--heartbeat-s 3] [--heartbeat-flush-s 0.5] [--missed-heartbeats 3]
           [--route-domain dcf.test]

The store (SQLite) and the registry live in the state dir; one hub per state
dir (a second one exits with HubBusy).  SIGTERM/SIGINT stop serving; agents
keep running and re-register when a hub is back.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import gevent

from dcctl import auth, errors
from dcctl.wire import Service, parse_endpoint, validate_endpoint
from hub import routes
from hub.heartbeats import DEFAULT_FLUSH_SECONDS
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore

log = logging.getLogger("dc-hub")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dc-hub", description="dcfleet hub: placement, routing, broadcast, "
                                "worker queue and image registry for a fleet of dc-agents.")
    p.add_argument("--listen", action="append", default=[], help="endpoint (repeatable): ipc://PATH (local, "
                   "root only) or tcp://ADDR:PORT (CURVE)")
    p.add_argument("--insecure-listen", action="append", default=[],
                   help="tcp://127.x.x.x:PORT without CURVE (loopback only; tests and ad hoc use)")
    p.add_argument("--keys-dir", help="CURVE keys and client allowlist (default STATE_DIR/keys)")
    p.add_argument("--state-dir", default="/var/lib/dcfleet/hub")
    p.add_argument("--heartbeat-s", type=float, default=3.0, help="expected seconds between heartbeats")
    p.add_argument("--heartbeat-flush-s", type=float, default=DEFAULT_FLUSH_SECONDS,
                   help="seconds between writes of the heartbeats received, all in one transaction (0: each at once)")
    p.add_argument("--missed-heartbeats", type=int, default=3, help="missed beats before 'unreachable'")
    p.add_argument("--route-domain", default=routes.DEFAULT_DOMAIN,
                   help="domain of the default route names, NAME.<domain> (default %(default)s)")
    p.add_argument("--log-level", default="INFO")
    return p


def build(args: argparse.Namespace) -> tuple[Service, HubService]:
    if not args.listen and not args.insecure_listen:
        raise errors.InvalidArgument("give at least one --listen endpoint")
    for ep in args.listen + args.insecure_listen:
        validate_endpoint(ep)
    if not os.path.isabs(args.state_dir):
        raise errors.InvalidArgument(f"--state-dir {args.state_dir!r} must be absolute")
    domain = routes.frontend(args.route_domain)
    if domain["kind"] != "http" or domain["name"].startswith("*."):
        raise errors.InvalidArgument(f"--route-domain {args.route_domain!r} must be a domain name")
    store = HubStore(args.state_dir)
    registry = Registry(os.path.join(args.state_dir, "registry"))
    keys_dir = args.keys_dir or os.path.join(args.state_dir, "keys")
    hub = HubService(store, registry, heartbeat_s=args.heartbeat_s, missed_heartbeats=args.missed_heartbeats,
                     server_pair=auth.ensure_server_pair(keys_dir), allowlist=auth.Allowlist(keys_dir),
                     heartbeat_flush_s=args.heartbeat_flush_s)
    hub.route_domain = domain["name"]
    service = Service(hub, name="dc-hub", keys_dir=keys_dir)
    for ep in args.listen:
        if parse_endpoint(ep).is_ipc:
            os.makedirs(os.path.dirname(parse_endpoint(ep).path), mode=0o700, exist_ok=True)
        service.bind(ep)
    for ep in args.insecure_listen:
        service.bind(ep, insecure=True)
    log.info("CURVE public key: %s", service.public_key)
    return service, hub


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        service, hub = build(args)
    except errors.DcError as exc:
        print(f"dc-hub: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    hub.start()
    task = service.start()
    gevent.signal_handler(signal.SIGTERM, service.stop)
    gevent.signal_handler(signal.SIGINT, service.stop)
    log.info("serving on %s", ", ".join(args.listen + args.insecure_listen))
    task.join()
    hub.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
