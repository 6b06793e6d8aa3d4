"""``dc-hub``: the fleet hub's entry point.

    dc-hub --listen tcp://ADDR:PORT [--listen ipc://PATH] --state-dir DIR
           [--heartbeat-s 3] [--heartbeat-flush-s 0.5] [--missed-heartbeats 3]
           [--route-domain dcf.test]
           [--store sqlite|etcd --etcd http://ADDR:PORT [--etcd-prefix /dcfleet/]
            --hub-name NAME [--lease-s 5]]

The store (SQLite by default) and the registry live in the state dir; one
hub per state dir (a second one exits with HubBusy).  With ``--store etcd``
the fleet's state is in etcd, shared by every hub given the same etcd and
prefix: each hub serves everything, one leader among them (an etcd lease)
judges hosts, fails containers over and runs the journal, and the image
registry's index is in etcd too (layers stay on disk, fetched from the
host an image came from when a hub lacks them).  SIGTERM/SIGINT stop serving; agents
keep running and re-register when a hub is back.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import gevent

from dcctl import auth, errors, procs, validate
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
    p.add_argument("--store", choices=("sqlite", "etcd"), default="sqlite",
                   help="where the fleet's state lives: sqlite in the state dir (one hub, the default) or etcd "
                   "(several hubs)")
    p.add_argument("--etcd", help="etcd client endpoint http://ADDR:PORT (with --store etcd)")
    p.add_argument("--etcd-prefix", default="/dcfleet/", help="key prefix of this fleet in etcd (default %(default)s)")
    p.add_argument("--hub-name", help="this hub's name among the fleet's hubs (default: hub-<pid>)")
    p.add_argument("--lease-s", type=int, default=5,
                   help="seconds of the hub's etcd lease: a dead leader is replaced within it (default %(default)s)")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--metrics-listen", default="",
                   help="ADDR:PORT of the Prometheus endpoint (default 127.0.0.1:9324; off for none)")
    return p


def open_store(args: argparse.Namespace):
    """The store ``args`` name: HubStore in the state dir, or EtcdStore.
    Raises: InvalidArgument, HubBusy, StoreUnavailable."""
    if args.store == "sqlite":
        if args.etcd:
            raise errors.InvalidArgument("--etcd needs --store etcd")
        return HubStore(args.state_dir)
    if not args.etcd:
        raise errors.InvalidArgument("--store etcd needs --etcd http://ADDR:PORT")
    if args.hub_name is not None:
        validate.container_name(args.hub_name, "hub name")  # same alphabet: it is a key in etcd
    if args.lease_s < 2:
        raise errors.InvalidArgument(f"--lease-s {args.lease_s}: a hub's etcd lease is at least 2 seconds")
    from hub.store.etcd import EtcdStore
    return EtcdStore(args.etcd, args.etcd_prefix, lease_s=args.lease_s)


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
    if args.metrics_listen != "off":
        from hub.metrics import parse_listen
        parse_listen(args.metrics_listen)
    store = open_store(args)
    registry = Registry(os.path.join(args.state_dir, "registry"), index=store if store.kind == "etcd" else None)
    keys_dir = args.keys_dir or os.path.join(args.state_dir, "keys")
    # on etcd the hosts' keys come from the store's watched key index (every hub admits the same hosts)
    allowlist = auth.Allowlist(keys_dir, agent_keys=store.agent_key_name if store.kind == "etcd" else None)
    hub = HubService(store, registry, heartbeat_s=args.heartbeat_s, missed_heartbeats=args.missed_heartbeats,
                     server_pair=auth.ensure_server_pair(keys_dir), allowlist=allowlist,
                     heartbeat_flush_s=args.heartbeat_flush_s)
    hub.route_domain = domain["name"]
    hub.name = args.hub_name or f"hub-{os.getpid()}"
    hub.endpoint = next((ep for ep in args.listen + args.insecure_listen if parse_endpoint(ep).is_tcp),
                        (args.listen + args.insecure_listen)[0])
    hub.endpoints = list(args.listen + args.insecure_listen)
    service = Service(hub, name="dc-hub", keys_dir=keys_dir, allowlist=allowlist)
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
    log.info("open files limit %d (hard %d)", *procs.raise_open_files_limit())  # 2 per host connected
    try:
        service, hub = build(args)
    except errors.DcError as exc:
        print(f"dc-hub: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    try:
        hub.start()
    except errors.DcError as exc:  # e.g. Conflict: another running hub has this --hub-name
        print(f"dc-hub: {type(exc).__name__}: {exc}", file=sys.stderr)
        service.stop()
        hub.store.close()
        return 1
    task = service.start()
    from hub import metrics
    metrics.started(hub, service, args.metrics_listen)
    gevent.signal_handler(signal.SIGTERM, service.stop)
    gevent.signal_handler(signal.SIGINT, service.stop)
    log.info("serving on %s", ", ".join(args.listen + args.insecure_listen))
    task.join()
    try:
        hub.stop()
    finally:
        hub.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
