"""``dc-router``: HAProxy in front of the fleet's routes.

    dc-router --hub tcp://HUB:7100 --hub-key HUB.key --key ROUTER.key_secret
              --state-dir DIR [--listen ADDR:PORT] [--tcp-address ADDR]
              [--haproxy /usr/sbin/haproxy]

It starts HAProxy (a daemon of its own, never the system service) with its
config, admin socket (0600) and server-state file in the state dir, follows
the hub's route table (router/follower.py) and applies each change through
HAProxy's runtime API.  The router's key needs only the hub's ``router``
role (KEYS_DIR/clients/router/ on the hub); ``--hub ipc://PATH`` needs no
key.  SIGTERM/SIGINT stop the router and leave HAProxy serving (as port
mappings outlive the agent); ``--stop-haproxy`` on exit stops it too.
Several routers, each with its own state dir, converge on the same table.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys

import gevent

from dcctl import auth, errors
from dcctl.wire import parse_endpoint, quiet_zerorpc_noise
from dcctl.wire.failover import split_endpoints
from router import haproxy as hx
from router.follower import Follower, hub_connector

log = logging.getLogger("dc-router")

_BIND_RE = re.compile(r"^(\d{1,3}(\.\d{1,3}){3}|\*|\[[0-9a-fA-F:]+\]):(\d{1,5})$")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dc-router", description="dcfleet router: HAProxy following the hub's "
                                "route table.")
    p.add_argument("--hub", required=True, help="the hub: tcp://ADDR:PORT (CURVE) or ipc://PATH; several hubs "
                   "of one fleet: A,B,...")
    p.add_argument("--hub-key", help="the hub's public key (file or Z85) for tcp://")
    p.add_argument("--key", help="this router's key pair (.key_secret) for tcp://; default STATE_DIR/router.key_secret")
    p.add_argument("--state-dir", default="/var/lib/dcfleet/router")
    p.add_argument("--listen", default="0.0.0.0:80", help="HTTP frontend ADDR:PORT (default %(default)s)")
    p.add_argument("--tcp-address", help="address the tcp:PORT routes listen on (default: --listen's)")
    p.add_argument("--haproxy", default=hx.HAPROXY, help="the haproxy binary (Debian 12: 2.6)")
    p.add_argument("--stop-haproxy", action="store_true", help="stop HAProxy when the router exits")
    p.add_argument("--log-level", default="INFO")
    return p


def build(args: argparse.Namespace) -> Follower:
    """Raises: InvalidArgument."""
    hubs = split_endpoints(args.hub)  # several hubs of one fleet: A,B,...
    if not os.path.isabs(args.state_dir):
        raise errors.InvalidArgument(f"--state-dir {args.state_dir!r} must be absolute")
    m = _BIND_RE.match(args.listen)
    if not m or not 1 <= int(m.group(3)) <= 65535:
        raise errors.InvalidArgument(f"--listen {args.listen!r}: want ADDR:PORT (an IPv4 address, * or [IPv6])")
    tcp_address = args.tcp_address or args.listen.rsplit(":", 1)[0]
    if not os.access(args.haproxy, os.X_OK):
        raise errors.InvalidArgument(f"no haproxy at {args.haproxy}", hint="apt-get install haproxy (ops/setup)")
    os.makedirs(args.state_dir, mode=0o700, exist_ok=True)
    keys = None
    if parse_endpoint(hubs[0]).is_tcp:
        if not args.hub_key:
            raise errors.InvalidArgument("--hub tcp://... needs --hub-key (the hub's public key)")
        pair = args.key or os.path.join(args.state_dir, "router.key_secret")
        if not os.path.exists(pair):
            auth.keygen(os.path.dirname(pair), os.path.basename(pair)[:-len(".key_secret")])
            log.info("made key pair %s: allow %s in the hub's KEYS_DIR/clients/router/", pair, pair[:-7])
        keys = auth.ClientKeys.from_files(pair, args.hub_key)
    proxy = hx.Haproxy(args.state_dir, args.listen, tcp_address, binary=args.haproxy)
    return Follower(proxy, hub_connector(args.hub, keys), args.state_dir)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    quiet_zerorpc_noise()  # zerorpc's "BUG catching up" lines at debug level (PITFALLS.md)
    try:
        follower = build(args)
    except errors.DcError as exc:
        print(f"dc-router: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    follower.start()
    gevent.signal_handler(signal.SIGTERM, follower.stop)
    gevent.signal_handler(signal.SIGINT, follower.stop)
    log.info("routing on %s for the hub at %s", args.listen, args.hub)
    follower.join()
    if args.stop_haproxy:
        follower.proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
