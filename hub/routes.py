"""Routes: stable names in front of containers' exposed ports.

A route is a frontend and a set of backends:

* the frontend is an HTTP host name, exact (``www.dcf.test``) or a wildcard
  (``*.dcf.test``: any name ending in ``.dcf.test``), or a TCP listen port
  written ``tcp:PORT``;
* each backend is (container name, container port).  The store keeps names,
  never addresses; the table the routers follow is *resolved* from the store
  each time: the owning host's address, the port mapped there, and whether
  the backend is ``healthy`` as far as the hub knows (host alive, container
  placed and, by the host's last heartbeat, running).  So a route follows
  its containers as they stop, start, move by failover or go with a host.
* ``routed`` says whether routers serve a backend: every healthy one, and
  also one whose host the hub lost (``host_unreachable``) when the host's
  last word was that the container runs.  The hub cannot tell a dead agent
  (its containers run on: they outlive it by design) from a dead host, so
  it does not vouch for such a backend, and the routers' own HAProxy health
  checks decide whether it gets traffic (router/haproxy.py: a server that
  stops answering is DOWN within CHECK_DOWN_BOUND_SECONDS there).  Once
  failover moves the container, the backend follows the record (the new
  host's address; the old one is drained), and once it is destroyed the
  backend goes.

``RouteMethods`` is mixed into the hub's service: ``route_add``,
``route_rm``, ``route_ls`` and ``route_table`` (the long poll a router
follows), plus the create_container options ``route`` and ``no_route``.
"""
from __future__ import annotations

import hashlib
import json
import re
import time
from typing import Any

import gevent
import gevent.event

from dcctl import errors, validate
from dcctl.wire import expose

#: Exposed tcp ports that create_container routes as HTTP (the first one the
#: image exposes).
HTTP_PORTS = (80, 8080, 8000)
DEFAULT_DOMAIN = "dcf.test"
#: create_container's route options (taken out before its own validation).
CREATE_OPTIONS = {"route": "route name(s) for the HTTP port (default NAME.<route domain>)",
                  "no_route": "connect no route"}
MAX_WAIT_SECONDS = 30.0
#: How often a waiting route_table looks at the store for a change it was not
#: told about (a heartbeat, a host lost, a failover).
POLL_SECONDS = 0.2
#: A heartbeat counts for a container's health only if it came this long
#: after the container's record last changed (the agent made its summary
#: a little before sending it).
SUMMARY_MARGIN_SECONDS = 1.0

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST_RE = re.compile(rf"^(\*\.)?{_LABEL}(?:\.{_LABEL})*$")
_TCP_RE = re.compile(r"^tcp:(\d{1,5})$")


def frontend(name: Any) -> dict:
    """Parse a route name: ``host.name``, ``*.domain`` or ``tcp:PORT``.

    Returns: {name, kind ("http" | "tcp"), listen_port (tcp) | None}.
    Raises: InvalidArgument (not a host name, upper case, over 253 chars, a
    bare ``*``, a numeric last label (an IP address), a port outside
    1-65535).
    """
    if not isinstance(name, str) or not name:
        raise errors.InvalidArgument(f"route name must be a non-empty string, got {name!r}")
    m = _TCP_RE.match(name)
    if m:
        port = validate.port(int(m.group(1)), "tcp route port")
        return {"name": f"tcp:{port}", "kind": "tcp", "listen_port": port}
    if len(name) > 253 or not _HOST_RE.match(name) or name.rsplit(".", 1)[-1].isdigit():
        raise errors.InvalidArgument(
            f"bad route name {name!r}: want a lower-case host name (www.dcf.test), a wildcard (*.dcf.test) "
            "or tcp:PORT", hint="labels of a-z, 0-9 and '-', dot-separated, at most 63 chars each")
    return {"name": name, "kind": "http", "listen_port": None}


def default_name(container: str, domain: str) -> str | None:
    """``NAME.<domain>`` for a container, as a valid host name, or None when
    the container's name cannot make one (``_`` becomes ``-``)."""
    candidate = f"{container.lower().replace('_', '-')}.{domain}"
    try:
        return frontend(candidate)["name"]
    except errors.InvalidArgument:
        return None


def take_options(options: Any) -> tuple[Any, dict]:
    """Split create_container's options into (the rest, route options
    {routes: [names] | None, no_route: bool}), validated.

    Raises: InvalidArgument (a bad name, both route and no_route)."""
    if not isinstance(options, dict) or not (set(options) & set(CREATE_OPTIONS)):
        return options, {"routes": None, "no_route": False}
    rest = {k: v for k, v in options.items() if k not in CREATE_OPTIONS}
    names = options.get("route")
    no_route = options.get("no_route") or False
    if not isinstance(no_route, bool):
        raise errors.InvalidArgument("no_route must be true or false")
    if names is not None:
        names = [names] if isinstance(names, str) else names
        if not isinstance(names, list) or not names or len(names) > 16:
            raise errors.InvalidArgument("route must be a host name or a list of 1-16 names")
        names = [frontend(n)["name"] for n in names]
        if no_route:
            raise errors.InvalidArgument("give route or no_route, not both")
    return rest, {"routes": names, "no_route": no_route}


def check_create(manifest: dict, route_opts: dict) -> None:
    """Before any work: named routes need an exposed HTTP port.

    Raises: InvalidArgument."""
    if route_opts.get("routes"):
        exposed = [{"proto": p.get("proto"), "container_port": p.get("port")}
                   for p in manifest.get("exposed_ports") or []]
        if _http_port(exposed) is None:
            raise errors.InvalidArgument(
                f"image {manifest.get('name')} exposes no HTTP port ({', '.join(map(str, HTTP_PORTS))}) to route",
                hint="create it without --route, then route_add NAME CONTAINER PORT")


def _http_port(ports: list[dict]) -> int | None:
    tcp = [p.get("container_port") for p in ports if isinstance(p, dict) and p.get("proto") == "tcp"]
    for p in tcp:
        if p in HTTP_PORTS:
            return p
    return None


def http_port(ports: list[dict]) -> int | None:
    """The container port a container's routes point at: the first tcp
    port among HTTP_PORTS in ``ports`` ([{proto, container_port}]), or None."""
    return _http_port(ports)


def resolve(store) -> list[dict]:
    """The route table from the store, resolved.

    Returns: [{name, kind, listen_port, backends: [{container,
    container_port, host, address, port (the mapped host port), healthy,
    status, routed}]}] by name; ``status`` is "up", or why the backend is
    not healthy: "no_container", "placing", "host_gone", "host_unreachable"
    (the hub lost the host: it cannot vouch for the backend), "not_mapped",
    "not_running".  ``routed``: whether routers serve it (healthy, or
    host_unreachable with an address, a mapped port and a last heartbeat
    that had it running: HAProxy's checks then decide, see the module
    doc)."""
    hosts = {h["name"]: h for h in store.hosts()}
    containers = {c["name"]: c for c in store.containers()}
    table: dict[str, dict] = {}
    for row in store.routes():
        route = table.get(row["name"])
        if route is None:
            route = table[row["name"]] = {**frontend(row["name"]), "backends": []}
        b = {"container": row["container"], "container_port": row["port"], "host": None, "address": None,
             "port": None, "healthy": False, "status": "no_container", "routed": False}
        route["backends"].append(b)
        c = containers.get(row["container"])
        if c is None:
            continue
        b["host"] = c["host"]
        host = hosts.get(c["host"])
        if host is not None:
            b["address"] = host["address"] or None
        mapped = next((p.get("host_port") for p in c["ports"] or [] if isinstance(p, dict)
                       and p.get("proto") == "tcp" and p.get("container_port") == row["port"]), None)
        b["port"] = mapped
        if c["state"] != "placed":
            b["status"] = "placing"
        elif host is None:
            b["status"] = "host_gone"
        elif host["state"] != "alive":
            b["status"] = "host_unreachable"
            # its containers may run on without their agent: HAProxy's checks decide
            b["routed"] = bool(mapped and b["address"] and _running(host, c))
        elif not mapped or not b["address"]:
            b["status"] = "not_mapped"
        elif not _running(host, c):
            b["status"] = "not_running"
        else:
            b["status"], b["healthy"], b["routed"] = "up", True, True
    return [table[n] for n in sorted(table)]


def _running(host: dict, container: dict) -> bool:
    """Whether the host's last heartbeat (if it postdates the container's
    record) says the container runs."""
    if host["last_heartbeat"] < container["updated_at"] + SUMMARY_MARGIN_SECONDS:
        return True  # no newer news: it was running when placed
    listed = (host.get("summary") or {}).get("containers")
    if not isinstance(listed, list):
        return True
    for c in listed:
        if isinstance(c, dict) and c.get("name") == container["name"]:
            return c.get("state") == "running"
    return False


def version_of(table: list[dict]) -> str:
    """A version for a resolved table: the same table, the same version."""
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:16]


class RouteMethods:
    """The hub's route methods (a mixin for HubService: it uses
    ``self.store``).  ``route_domain`` is the domain
    of the default route names (dc-hub --route-domain)."""

    route_domain: str = DEFAULT_DOMAIN
    _route_wake: gevent.event.Event | None = None

    def _routes_changed(self) -> None:
        """Wake every waiting route_table now."""
        wake, self._route_wake = self._route_wake, gevent.event.Event()
        if wake is not None:
            wake.set()

    @expose(shielded=True)
    def route_add(self, name: str, container: str, port: int) -> dict:
        """Add a backend to a route (the route exists while it has one).

        Args:
            name: ``host.name``, ``*.domain`` (any name under the domain) or
                ``tcp:PORT`` (a TCP listen port on the routers).
            container: a container of the fleet.
            port: its container port (tcp, mapped on its host).

        Returns: the route, resolved ({name, kind, listen_port, backends}).
        Raises: InvalidArgument (bad name or port), NoSuchContainer,
        NoSuchPortMapping (the container maps no such tcp port),
        RouteExists (the route has that backend already).
        """
        name = frontend(name)["name"]
        validate.container_name(container)
        validate.port(port, "container port")
        self.store.add_route(name, container, port)
        self._routes_changed()
        self.events_log.add("route_added", route=name, container=container, port=port)
        return self.route_get(name)

    @expose(shielded=True)
    def route_rm(self, name: str, container: str, port: int) -> dict:
        """Remove a backend from a route (the routers drain it first, so
        requests in flight finish).

        Returns: {name, container, port, removed: True}.
        Raises: InvalidArgument, NoSuchRoute.
        """
        name = frontend(name)["name"]
        validate.container_name(container)
        validate.port(port, "container port")
        self.store.remove_route(name, container, port)
        self._routes_changed()
        self.events_log.add("route_removed", route=name, container=container, port=port)
        return {"name": name, "container": container, "port": port, "removed": True}

    @expose(access="routes")
    def route_ls(self) -> list:
        """Every route, resolved.

        Returns: [{name, kind ("http"|"tcp"), listen_port, backends:
        [{container, container_port, host, address, port (mapped host port:
        address:port is where it answers), healthy, status ("up", or why
        not: no_container, placing, host_gone, host_unreachable,
        not_mapped, not_running), routed (whether routers serve it: healthy
        ones, and those on a host the hub lost that last ran there, left
        to the routers' health checks)}]}], by name.
        """
        return resolve(self.store)

    def route_get(self, name: str) -> dict:
        for route in resolve(self.store):
            if route["name"] == name:
                return route
        raise errors.NoSuchRoute(f"no route {name}")

    def routes_of(self, container: str) -> list[str]:
        """Names of the routes with a backend on ``container``."""
        return sorted({r["name"] for r in self.store.routes() if r["container"] == container})

    @expose(access="routes")
    def route_table(self, since: str = "", wait_s: float = 0.0) -> dict:
        """The table a router follows, as a long poll.

        Args:
            since: the version the caller has ("" for none).
            wait_s: seconds (0-30) to wait for a version other than
                ``since`` before answering with the current one.

        Returns: {version, routes (as route_ls), domain}.  A router calls
        again with the version it got; any change (a route, a container
        placed, moved, stopped or destroyed, a host lost) answers at once.
        Raises: InvalidArgument (wait_s out of range).
        """
        wait = validate.number(wait_s, "wait_s", minimum=0, maximum=MAX_WAIT_SECONDS)
        deadline = time.monotonic() + wait
        while True:
            table = resolve(self.store)
            version = version_of(table)
            left = deadline - time.monotonic()
            if version != since or left <= 0:
                return {"version": version, "routes": table, "domain": self.route_domain}
            if self._route_wake is None:
                self._route_wake = gevent.event.Event()
            self._route_wake.wait(timeout=min(POLL_SECONDS, left))

    def connect_routes(self, result: dict, route_opts: dict) -> dict:
        """After create_container: connect the container's HTTP port (the
        first exposed of HTTP_PORTS) to its routes (``NAME.<route
        domain>``, or the names in option ``route``); adds ``routes``
        [names] to the result."""
        port = _http_port(result.get("ports") or [])
        names = route_opts.get("routes")
        if names is None:
            default = default_name(result["name"], self.route_domain)
            names = [default] if default else []
        if route_opts.get("no_route") or port is None:
            names = []
        for n in names:
            self.store.add_route(n, result["name"], port, exist_ok=True)
        if names:
            self._routes_changed()
        return {**result, "routes": names}
