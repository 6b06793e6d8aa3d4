"""The hub's RPC surface: fleet membership, placement, routing, broadcast,
the worker queue and the image registry.

Every conversation ends at the hub: it holds one zerorpc client per agent
and calls agents itself (no ZeroMQ device between a client and an agent,
whose heartbeats and stream credits would be misrouted).  The hub talks to
agents over RPC only and never imports agent code.
"""
from __future__ import annotations

import collections
import logging
import time

import gevent

from dcctl import auth, errors, validate, wire
from dcctl.wire import coerce, expose
from hub import fanout, routes, scheduler
from hub.failover import Healer
from hub.registry import Registry
from hub.store import HubStore
from hub.uploads import UploadMethods

log = logging.getLogger(__name__)

HUB_VERSION = "0.1.0"
CREATE_OPTIONS = {
    "memory_bytes": "memory limit and reservation, bytes",
    "cpus": "CPU quota", "cpu_shares": "CPU weight", "env": "{NAME: value}",
    "command": "argv list or shell string",
    "label": "placement constraints {key: value}", "host": "pin to this host",
    "no_start": "create only", "strategy": "spread (default) or binpack",
    "restart": "no (default), always, on-failure[:N]: on the host, and re-created elsewhere if the host is lost",
}
AGENT_CREATE_KEYS = tuple(validate.CREATE_OPTIONS)
MAX_EVENTS = 500
RETRYABLE = (errors.Unreachable, errors.CallTimeout, errors.NoCapacity, errors.LxcFailure,
             errors.StoreError, errors.NetworkError, errors.Busy)
PULL_TIMEOUT_SECONDS = 600.0
#: Agent methods a read-only key may broadcast.
READ_AGENT_METHODS = frozenset({"container_ls", "container_inspect", "network_ls", "hostinfo", "image_ls",
                                "ops_facts"})
VIEW_TIMEOUT_SECONDS = 5.0


def _capacity(value) -> dict:
    """A host's capacity figures as registered: {NAME: integer} (None: {}).
    Raises: InvalidArgument."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) or v is None
                                              for v in value.values()):
        raise errors.InvalidArgument("capacity must be a map of figures {memory_reservable_bytes, "
                                     "container_slots, ...} (integers)")
    return value


class HubService(routes.RouteMethods, UploadMethods):
    """The methods served by ``dc-hub`` (routes: hub.routes; image uploads:
    hub.uploads).

    Args:
        store: the fleet's SQLite store.
        registry: the image registry.
        server_pair: the hub's CURVE key pair (public, secret), used as its
            client key towards agents; None for a hub without keys.
        heartbeat_s: expected seconds between agent heartbeats.
        missed_heartbeats: heartbeats missed before a host is unreachable.
        call_timeout_s: default timeout of a forwarded call, seconds.
        allowlist: the hub's client allowlist (dcctl.auth.Allowlist), where
            host_add admits a host's key with the agent role; None for a hub
            without keys.
    """

    def __init__(self, store: HubStore, registry: Registry, *, heartbeat_s: float = 3.0,
                 missed_heartbeats: int = 3, call_timeout_s: float = 60.0,
                 server_pair: tuple[bytes, bytes] | None = None, allowlist: auth.Allowlist | None = None):
        self.server_pair = server_pair
        self.allowlist = allowlist
        self.store = store
        self.registry = registry
        self.heartbeat_s = heartbeat_s
        self.missed_heartbeats = missed_heartbeats
        self.call_timeout_s = call_timeout_s
        self.workers = fanout.WorkQueue()
        self._clients: dict[str, tuple[tuple[str, str], wire.RpcClient]] = {}  # host: ((endpoint, key), client)
        self._tasks: list[gevent.Greenlet] = []
        self._agent_schema: dict | None = None  # an agent's _zerorpc_inspect methods
        self.healer = Healer(self)
        self._event_log: collections.deque = collections.deque(maxlen=MAX_EVENTS)
        self._boots: dict[str, str] = {}  # host -> the boot id its agent last reported
        self.started = time.time()
        self._serving_since = time.monotonic()

    # ------------------------------------------------------------ plumbing
    def start(self) -> None:
        """Start the membership monitor and the journal recovery.  No host is
        judged before a full grace period (missed_heartbeats heartbeats) from
        now: a restarted hub gives every host the time to find it again."""
        self._serving_since = time.monotonic()
        journal = {r["name"] for r in self.store.containers() if r["state"] == "reserved"}
        self._tasks = [gevent.spawn(self._monitor), gevent.spawn(self._recover_reservations, journal)]

    def stop(self) -> None:
        gevent.killall(self._tasks)
        for _, client in self._clients.values():
            client.close()

    def _monitor(self) -> None:
        grace_s = self.heartbeat_s * self.missed_heartbeats
        while True:
            judged = time.monotonic() - self._serving_since >= grace_s  # else still in the start-up grace
            for name in self.store.mark_unreachable(time.time() - grace_s) if judged else ():
                log.warning("host %s missed %d heartbeats: unreachable", name, self.missed_heartbeats)
                self._event("host_lost", host=name)
                gevent.spawn(self.healer.host_lost, name)
            self.workers.set_members({h["name"] for h in self.store.hosts() if h["state"] == "alive"})
            gevent.sleep(min(1.0, self.heartbeat_s / 2))

    def _recover_reservations(self, journal: set[str]) -> None:
        """Finish or roll back the placements a hub restart interrupted (the
        ``journal``: rows "reserved" when this hub started): after two
        heartbeat intervals (hosts have re-registered), a row whose host has
        the container becomes placed, otherwise it is dropped.  A row whose
        host does not answer yet stays undecided and is asked again every
        heartbeat, until each one is decided."""
        gevent.sleep(self.heartbeat_s * 2)
        warned: set[str] = set()
        while journal:
            for name in sorted(journal):
                try:
                    row = self.store.container(name)
                except errors.NoSuchContainer:
                    journal.discard(name)
                    continue
                if row["state"] != "reserved":
                    journal.discard(name)
                    continue
                try:
                    info = self._call(row["host"], "container_inspect", name, timeout_s=VIEW_TIMEOUT_SECONDS)
                    self.store.set_placed(name, row["image"], info.get("ports", []))
                    log.info("journal: adopted %s on %s", name, row["host"])
                    journal.discard(name)
                except errors.NoSuchContainer:
                    self.store.forget(name)
                    log.info("journal: rolled back reservation of %s", name)
                    journal.discard(name)
                except errors.DcError as exc:
                    (log.debug if name in warned else log.warning)(
                        "journal: %s on %s undecided (asking again each heartbeat): %s", name, row["host"], exc)
                    warned.add(name)
            if journal:
                gevent.sleep(self.heartbeat_s)

    def _coerce(self, method: str, args: list) -> list:
        """Arguments typed as text (dcctl, the stock CLI) converted to what the
        agent method declares, by the wire's one coercion (dcctl.wire.coerce),
        from an agent's _zerorpc_inspect (asked once); anything that fits no
        declared type is passed as is and the agent's own validation answers."""
        if not any(isinstance(a, str) for a in args):
            return args
        if self._agent_schema is None:
            for h in self.store.hosts():
                if h["state"] == "alive":
                    try:
                        self._agent_schema = self._call(h["name"], "_zerorpc_inspect", timeout_s=5)["methods"]
                        break
                    except errors.DcError:
                        continue
        return coerce.coerce_args(args, coerce.params_of((self._agent_schema or {}).get(method) or {}))

    def _event(self, kind: str, **detail) -> None:
        self._event_log.append({"at": time.time(), "kind": kind, **detail})

    def client(self, host: str, row: dict | None = None) -> wire.RpcClient:
        """The hub's zerorpc client for ``host`` (made on first use);
        ``row`` is its store row when the caller has it already.

        A host that registered with a key is reached over CURVE with that
        key as the expected server key (an agent's client key is its server
        key), so an endpoint of any other server fails the handshake; a host
        that joined locally (no key) is reached at its ipc endpoint only.

        Raises: Unreachable (the row's endpoint and key do not fit)."""
        row = row or self.store.host(host)
        endpoint = row["endpoint"]
        cached = self._clients.get(host)
        if cached is None or cached[0] != (endpoint, row["key"]):
            if cached is not None:
                cached[1].close()
                del self._clients[host]
            keys = None
            if row["key"]:
                if not wire.parse_endpoint(endpoint).is_tcp or not self.server_pair:
                    raise errors.Unreachable(f"host {host} has a key but no CURVE endpoint the hub can verify",
                                             hint="it registers again with a tcp:// endpoint")
                keys = auth.ClientKeys(self.server_pair[0], self.server_pair[1], row["key"].encode())
            elif not wire.parse_endpoint(endpoint).is_ipc:
                raise errors.Unreachable(f"host {host} joined without a key at a non-local endpoint")
            cached = ((endpoint, row["key"]), wire.RpcClient(endpoint, timeout_s=self.call_timeout_s, keys=keys,
                                                             heartbeat_s=max(1.0, self.heartbeat_s)))
            self._clients[host] = cached
        return cached[1]

    def _drop_client(self, host: str, reason: str) -> None:
        """Close the hub's client for ``host``: calls in flight on it fail at
        once with Unreachable(``reason``); the next call makes a new one."""
        cached = self._clients.pop(host, None)
        if cached is not None:
            cached[1].close(reason)

    @staticmethod
    def _valid_boot_id(boot_id) -> str | None:
        """``boot_id`` if it is None or a string of 1 to 128 characters.

        Raises: InvalidArgument."""
        if boot_id is not None and not (isinstance(boot_id, str) and 0 < len(boot_id) <= 128):
            raise errors.InvalidArgument("boot_id must be a string of 1 to 128 characters")
        return boot_id

    def _note_boot(self, host: str, boot_id: str | None) -> bool:
        """Record the boot id an agent reports (None: an agent that sends
        none); True if it differs from the one it reported before (the agent
        restarted: its calls in flight are dead and fail at once)."""
        if boot_id is None:
            return False
        before = self._boots.get(host)
        self._boots[host] = boot_id
        if before is None or before == boot_id:
            return False
        log.warning("host %s restarted (boot id %s, was %s): failing its calls in flight", host, boot_id, before)
        self._event("host_restarted", host=host)
        self._drop_client(host, f"the agent on {host} restarted")
        return True

    def _call(self, host: str, method: str, *args, timeout_s: float | None = None):
        """Call an agent; a host marked unreachable fails at once (Unreachable)
        instead of making the caller wait out a timeout.  However long
        ``timeout_s`` is (a pull's), a call to an agent that dies or freezes
        fails within two heartbeats (zerorpc's per-call heartbeats), and one
        to an agent that restarts fails as soon as it reports its new boot
        id (Unreachable)."""
        row = self.store.host(host)  # one store read per call
        if row["state"] != "alive":
            raise errors.Unreachable(f"host {host} is unreachable (missed heartbeats)",
                                     hint="its containers with a restart policy are re-created elsewhere")
        return self.client(host, row).call(method, *args, timeout_s=timeout_s)

    def _owner(self, name: str) -> str:
        validate.container_name(name)
        return self.store.container(name)["host"]

    def _forward(self, method: str, name: str, *args, timeout_s: float | None = None):
        return self._call(self._owner(name), method, name, *args, timeout_s=timeout_s)

    # ------------------------------------------------------------ membership
    @expose(shielded=True)
    def host_add(self, name: str, key: str) -> dict:
        """Admit a new host (the operator's step, like accepting a key in
        Salt): bind the host ``name`` to its CURVE public ``key`` and allow
        that key on the hub with the agent role.  Only then may the host
        register, and under this name only.  Idempotent.

        Args:
            name: the host's name (its agent's --host-name).
            key: its agent's public key, 40 Z85 characters (the
                ``public-key`` of KEYS_DIR/server.key on the host; the agent
                also logs it at start).

        Returns: {name, key, added_at (Unix s)}.
        Raises: InvalidArgument, Conflict (the name is bound to another key,
        or the key to another host: host_remove first).
        """
        validate.container_name(name)  # same alphabet and length
        key = auth.public_key(key)
        binding = self.store.bind_key(name, key)
        if self.allowlist is not None:
            self.allowlist.add("agent", name, key)
        log.info("host %s added with key %s", name, key)
        self._event("host_added", host=name)
        return binding

    @expose(access="agent")
    def host_register(self, info: dict) -> dict:
        """Called by agents: join (or re-join) the fleet.

        Args: info: {name, endpoint, address (where its mapped ports
        answer), labels {k: v}, capacity {...}, boot_id (str, new each time
        the agent process starts)}.  Over CURVE the endpoint is the agent's
        tcp:// endpoint, whose server key must be the registering key (the
        hub checks it on every call), and the name must be the one host_add bound to that key.  Over the hub's local ipc
        endpoint (root on the hub's machine) the endpoint is the agent's
        ipc:// endpoint and the name must not be bound to a key.

        A new boot_id means the agent restarted: every call in flight to it
        is dead, and fails at once (Unreachable) so creates move on.

        Returns: {name, heartbeat_s (seconds between heartbeats)}.
        Raises: InvalidArgument (a bad name, endpoint or labels, or an
        endpoint of the wrong kind), Unauthorized (the key is not bound to
        this name).  A boot_id that is not a string of 1 to 128 characters
        is InvalidArgument.
        """
        validate.options(info, {"name": "", "endpoint": "", "address": "", "labels": "", "capacity": "",
                                "boot_id": ""}, "host_register")
        name = info.get("name")
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument("host name must be a non-empty string")
        validate.container_name(name)  # same alphabet and length
        parsed = wire.parse_endpoint(info.get("endpoint"))
        endpoint = parsed.text
        labels = info.get("labels") or {}
        if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in labels.items()):
            raise errors.InvalidArgument("labels must be a map of strings")
        capacity = _capacity(info.get("capacity"))
        boot_id = self._valid_boot_id(info.get("boot_id"))
        caller = wire.current_caller()
        key = caller.key if caller else ""
        if key and not parsed.is_tcp:
            raise errors.InvalidArgument(f"a host registering with a key gives its tcp:// endpoint, not {endpoint}",
                                         hint="ipc endpoints join over the hub's local ipc endpoint only")
        if not key and not parsed.is_ipc:
            raise errors.InvalidArgument(f"a host joining locally (no key) gives its ipc:// endpoint, not {endpoint}",
                                         hint="a tcp:// host joins over the hub's CURVE endpoint with its key")
        self.store.upsert_host(name, endpoint, str(info.get("address") or ""), labels,
                               capacity, key)
        if boot_id is None:
            self._drop_client(name, "the agent registered again")  # an agent without a boot id
        else:
            self._note_boot(name, boot_id)
        log.info("host %s registered at %s", name, endpoint)
        return {"name": name, "heartbeat_s": self.heartbeat_s}

    @expose(access="agent")
    def host_heartbeat(self, name: str, summary: dict) -> dict:
        """Called by agents every heartbeat_s: a hostinfo summary {capacity,
        metrics, containers [{name, state}], boot_id (as in host_register)}.

        Returns: {ok: True}.
        Raises: InvalidArgument (no capacity {memory_reservable_bytes,
        container_slots} of integers), NoSuchHost (not registered: register
        again), Unauthorized (the name is bound to another host key).
        """
        cap = summary.get("capacity")
        if not isinstance(cap, dict) or not all(isinstance(cap.get(k, 0), int) and not isinstance(cap.get(k, 0), bool)
                                                for k in ("memory_reservable_bytes", "container_slots")):
            raise errors.InvalidArgument("heartbeat summary needs capacity {memory_reservable_bytes, container_slots}")
        boot_id = self._valid_boot_id(summary.get("boot_id"))
        caller = wire.current_caller()
        previous = self.store.heartbeat(name, summary, caller.key if caller else "")
        if previous is None:
            raise errors.NoSuchHost(f"host {name!r} is not registered")
        if previous != "alive":
            log.info("host %s is alive again", name)
            self._event("host_back", host=name)
        self._note_boot(name, boot_id)
        containers = summary.get("containers") if isinstance(summary, dict) else None
        if isinstance(containers, list):
            self.healer.reconcile(name, containers)
        return {"ok": True}

    @expose(shielded=True)
    def host_remove(self, name: str) -> dict:
        """Forget a host (e.g. decommissioned, or registered by mistake): its
        membership, its key binding and the allowlist entry host_add made
        (it must be added again to rejoin); the fleet's records of
        containers placed there are dropped too (they are not touched on
        the host).

        Returns: {name, containers_forgotten (count)}. Raises: NoSuchHost.
        """
        binding = self.store.binding(name)
        try:
            self.store.host(name)
        except errors.NoSuchHost:
            if binding is None:  # added, never registered: the binding goes all the same
                raise
        rows = self.store.containers(name)
        for row in rows:
            self.store.forget(row["name"])
        self.store.remove_host(name)
        if binding is not None and self.allowlist is not None:
            self.allowlist.remove("agent", name, binding["key"])
        self._drop_client(name, "the host was removed")
        self._boots.pop(name, None)
        self._event("host_removed", host=name)
        return {"name": name, "containers_forgotten": len(rows)}

    @expose(access="read")
    def hosts(self) -> list:
        """Fleet membership.

        Returns: [{name, state ("alive"|"unreachable"), endpoint, address,
        labels, memory_reservable_bytes, memory_reserved_bytes,
        memory_free_bytes, container_slots, containers, last_heartbeat (Unix
        s), heartbeat_age_s (seconds)}]; sizes in bytes, reserved and free
        figures from the hub's own reservations.
        """
        out = []
        figures = self.store.reserved_memory(self.store.db)  # a read: no write transaction
        now = time.time()
        for h in self.store.hosts():
            cap = h["capacity"] or {}
            free_mem, free_slots = scheduler.free_figures(h, figures)
            out.append({"name": h["name"], "state": h["state"], "endpoint": h["endpoint"],
                        "address": h["address"], "labels": h["labels"],
                        "memory_reservable_bytes": cap.get("memory_reservable_bytes"),
                        "memory_reserved_bytes": (cap.get("memory_reservable_bytes") or 0) - free_mem,
                        "memory_free_bytes": free_mem, "container_slots": cap.get("container_slots"),
                        "containers": (cap.get("container_slots") or 0) - free_slots,
                        "last_heartbeat": h["last_heartbeat"],
                        "heartbeat_age_s": round(now - h["last_heartbeat"], 3)})
        return out

    # ------------------------------------------------------------ placement
    @expose(shielded=True)
    def create_container(self, image: str, name: str, options: dict | None = None) -> dict:
        """Place, pull if needed, create, start and connect a container.

        Args:
            image: ref in the hub's registry, ``name`` or ``name@idprefix``.
            name: fleet-unique container name (see container_create).
            options: {memory_bytes, cpus, cpu_shares, env, command (as the
                agent's container_create), label {k: v} constraints, host
                (pin), no_start (bool), strategy ("spread"|"binpack"),
                route (a host name or a list: the HTTP port's routes; default
                NAME.<route domain>), no_route (bool)}.

        The name and the capacity are reserved atomically (SQLite BEGIN
        IMMEDIATE) before any pull, so concurrent creates never over-commit
        a host and only one create of a name succeeds.  If the chosen host
        fails, the next feasible one is tried and the reservation moves.

        Returns: {name, host, address (the host's, where mapped ports
        answer), container_address, image, state, ports [{proto,
        container_port, host_port}], routes [names]}.

        Raises: InvalidArgument, ImageNotFound, AmbiguousImageRef,
        ContainerExists, NoCapacity (naming each host's reason, and the last
        failure when every feasible host failed), NoSuchHost (pinned host
        unknown), or the last host's own error when it is not one worth
        retrying elsewhere.
        """
        options, route_opts = routes.take_options(options)
        validate.container_name(name)
        opts = validate.options(options, CREATE_OPTIONS, "create_container")
        # the agent's own rules for what it is handed (dcctl.validate), before any reservation
        agent_opts = validate.create_options({k: opts[k] for k in AGENT_CREATE_KEYS if k in opts})
        if not agent_opts["env"]:
            del agent_opts["env"]
        memory = int(agent_opts.get("memory_bytes") or 0)
        strategy = opts.get("strategy", "spread")
        if not isinstance(strategy, str) or strategy not in scheduler.STRATEGIES:
            raise errors.InvalidArgument(f"strategy must be one of {', '.join(scheduler.STRATEGIES)}")
        labels = opts.get("label") or {}
        if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
            raise errors.InvalidArgument("label must be a map {key: value} of strings")
        if opts.get("host") is not None and not isinstance(opts["host"], str):
            raise errors.InvalidArgument("host must be a host name")
        if not isinstance(opts.get("no_start", False), bool):
            raise errors.InvalidArgument("no_start must be true or false")
        manifest = self.registry.resolve(image)
        routes.check_create(manifest, route_opts)
        request = scheduler.Request(memory, dict(labels), opts.get("host"), strategy)
        spec = {"options": agent_opts, "image": image, "labels": request.labels, "strategy": strategy}
        row = self.store.claim(name, manifest["id"], memory, spec,
                               scheduler.choose(self.store.hosts(), request))
        host, tried = row["host"], set()
        while True:
            tried.add(host)
            try:
                result = self._realize(host, manifest, name, agent_opts, bool(opts.get("no_start")))
            except RETRYABLE as exc:
                log.warning("create %s on %s failed (%s: %s); trying another host", name, host,
                            type(exc).__name__, exc)
                self._undo(host, name)
                try:
                    host = self.store.move(name, scheduler.choose(self.store.hosts(), request, exclude=tried))
                except errors.DcError as nc:
                    self.store.forget(name)
                    raise type(nc)(f"{nc}; last failure on {host}: {type(exc).__name__}: {exc}") from exc
                continue
            except BaseException:
                self._undo(host, name)
                self.store.forget(name)
                raise
            self.store.set_placed(name, manifest["id"], result["ports"])
            return self.connect_routes(result, route_opts)

    def _realize(self, host: str, manifest: dict, name: str, agent_opts: dict, no_start: bool) -> dict:
        ref = f"{manifest['name']}@{manifest['id']}"
        self._call(host, "image_pull", ref, None, timeout_s=PULL_TIMEOUT_SECONDS)
        info = self._call(host, "container_create", ref, name, agent_opts)
        ports = []
        if not no_start:
            info = self._call(host, "container_start", name)
        for p in manifest.get("exposed_ports", []):
            m = self._call(host, "container_connection_add", name, p["proto"], p["port"])
            ports.append({"proto": m["proto"], "container_port": m["container_port"], "host_port": m["host_port"]})
        return {"name": name, "host": host, "address": self.store.host(host)["address"],
                "container_address": info["address"], "image": ref, "state": info["state"], "ports": ports}

    def _undo(self, host: str, name: str) -> None:
        """Best effort: destroy a half-made container (reconciliation cleans
        up later if the host is unreachable now)."""
        try:
            self._call(host, "container_destroy", name, True, timeout_s=VIEW_TIMEOUT_SECONDS * 3)
        except errors.DcError:
            pass

    # ------------------------------------------------------------ routing
    @expose(shielded=True)
    def container_start(self, name: str) -> dict:
        """Forwarded to the owning host (see the agent's container_start).

        Returns: the agent's answer plus ``host`` (the owner's name).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        return {**self._forward("container_start", name), "host": self._owner(name)}

    @expose(shielded=True)
    def container_stop(self, name: str, timeout_s: float | None = None) -> dict:
        """Forwarded to the owning host (see the agent's container_stop).

        Returns: the agent's answer plus ``host`` (the owner's name).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.stop_timeout(timeout_s)
        return {**self._forward("container_stop", name, timeout_s), "host": self._owner(name)}

    @expose(shielded=True)
    def container_destroy(self, name: str, force: bool = False) -> dict:
        """Forwarded to the owning host; the fleet record goes too (see the
        agent's container_destroy).  A container already gone from its host
        is only forgotten.

        Returns: {name, destroyed: True}.
        Raises: the agent's errors (then the fleet record stays);
        NoSuchContainer (in neither the fleet nor on its host); Unreachable
        (the owner missed its heartbeats, or does not answer); CallTimeout.
        """
        try:
            result = self._forward("container_destroy", name, force)
        except errors.NoSuchContainer:
            self.store.container(name)  # NoSuchContainer if the fleet lacks it too
            result = {"name": name, "destroyed": True}  # gone from its host already
        self.store.forget(name)
        return result

    @expose(access="read")
    def container_inspect(self, name: str) -> dict:
        """Forwarded to the owning host (see the agent's container_inspect).

        Returns: the agent's answer plus ``host`` (the owner's name) and
        ``routes`` (the names routed to it).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        return {**self._forward("container_inspect", name), "host": self._owner(name), "routes": self.routes_of(name)}

    @expose
    def container_exec(self, name: str, command: list | str, options: dict | None = None) -> dict:
        """Forwarded to the owning host (see the agent's container_exec); the
        call waits the command's timeout_s (default 300 s) plus 30 s.

        Returns: the agent's answer, as it is.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.command(command)
        timeout = validate.exec_options(options)["timeout_s"] + 30
        return self._forward("container_exec", name, command, options, timeout_s=timeout)

    @expose
    def container_enter(self, name: str, command: list | str | None = None, options: dict | None = None) -> dict:
        """Forwarded to the owning host (see the agent's container_enter),
        always with the tcp relay.

        Returns: the agent's answer plus ``address``: the owner's address
        (from its endpoint), where the client connects to the relay directly.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.enter_options(options)
        if command is not None:
            validate.command(command)
        host = self.store.host(self._owner(name))
        session = self._forward("container_enter", name, command, {"via": "tcp"})
        # the relay listens beside the agent's tcp endpoint
        return {**session, "address": wire.parse_endpoint(host["endpoint"]).host}

    @expose(access="read")
    def container_logs(self, name: str, max_bytes: int = 65536) -> dict:
        """Forwarded to the owning host (see the agent's container_logs).

        Returns: the agent's answer, as it is.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.log_bytes(max_bytes)
        return self._forward("container_logs", name, max_bytes)

    @expose(shielded=True)
    def container_connection_add(self, name: str, proto: str, container_port: int,
                                 host_port: int | None = None) -> dict:
        """Forwarded to the owning host (see the agent's
        container_connection_add); the fleet record's ports are refreshed.

        Returns: the agent's answer plus ``host`` (the owner's name) and
        ``host_address`` (the owner's address, where the port answers).
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.protocol(proto)
        validate.port(container_port, "container port")
        if host_port is not None:
            validate.port(host_port, "host port")
        host = self.store.host(self._owner(name))
        result = self._forward("container_connection_add", name, proto, container_port, host_port)
        self._refresh_ports(name)
        return {**result, "host": host["name"], "host_address": host["address"]}

    @expose(shielded=True)
    def container_connection_rm(self, name: str, proto: str, container_port: int) -> dict:
        """Forwarded to the owning host (see the agent's
        container_connection_rm); the fleet record's ports are refreshed.

        Returns: the agent's answer, as it is.
        Raises: the agent's errors; NoSuchContainer (not in the fleet);
        Unreachable (the owner missed its heartbeats, or does not answer);
        CallTimeout.
        """
        validate.protocol(proto)
        validate.port(container_port, "container port")
        result = self._forward("container_connection_rm", name, proto, container_port)
        self._refresh_ports(name)
        return result

    def _refresh_ports(self, name: str) -> None:
        try:
            info = self._forward("container_inspect", name, timeout_s=VIEW_TIMEOUT_SECONDS)
            self.store.set_ports(name, info.get("ports", []))
        except errors.DcError:
            pass

    # ------------------------------------------------------------ fleet views
    def _gather(self, method: str, *args) -> dict:
        hosts = self.store.hosts()
        return fanout.broadcast(hosts, lambda h: self._call(h["name"], method, *args,
                                                            timeout_s=VIEW_TIMEOUT_SECONDS),
                                VIEW_TIMEOUT_SECONDS + 0.5)

    @expose(access="read")
    def container_ls(self) -> list:
        """Every container in the fleet, with a ``host`` column (the agent's
        container_ls keys).  A container on a host that does not answer
        within 5 s is still listed from the fleet's records, with state
        "unknown" (or "reserved" while being placed) and only host, name,
        state, image_id and ports (never transiently missing).

        Returns: [{host, name, state, ...}] sorted by name and host.
        """
        gathered = self._gather("container_ls")["results"]
        seen, out = set(), []
        for host, res in gathered.items():
            if res["status"] == "ok":
                for c in res["result"]:
                    out.append({"host": host, **c})
                    seen.add(c["name"])
        for row in self.store.containers():
            if row["name"] not in seen:
                state = "reserved" if row["state"] == "reserved" else "unknown"
                out.append({"host": row["host"], "name": row["name"], "state": state, "image_id": row["image"],
                            "ports": row["ports"]})
        return sorted(out, key=lambda c: (c["name"], c["host"]))

    @expose(access="read")
    def network_ls(self) -> list:
        """Every host's network_ls, one row per host.

        Returns: [{host, address (the host's), and the agent's network_ls
        keys, or error (the error's name, or "timeout") when the host did
        not answer within 5 s}].
        """
        hosts = {h["name"]: h for h in self.store.hosts()}
        out = []
        for host, res in self._gather("network_ls")["results"].items():
            row = {"host": host, "address": hosts[host]["address"]}
            row.update(res["result"] if res["status"] == "ok" else {"error": res.get("error", "timeout")})
            out.append(row)
        return out

    @expose(access="read")
    def hostinfo(self) -> list:
        """Every host's hostinfo, one row per host.

        Returns: [{host, status ("ok" | "error" | "timeout", within 5 s),
        and the agent's hostinfo keys when ok}].
        """
        return [{"host": host, "status": res["status"], **(res.get("result") or {})}
                for host, res in self._gather("hostinfo")["results"].items()]

    # ------------------------------------------------------------ fan-out
    @expose(access="read")
    def broadcast(self, method: str, args: list | None = None, options: dict | None = None) -> dict:
        """Call an agent method on every targeted host in parallel.

        Args:
            method: an agent method name (e.g. hostinfo, ops_run, ops_facts).
            args: its positional arguments.
            options: {target: glob on host names or "label:k=v",
                timeout_s (default 10): per-host deadline, fire_and_forget
                (bool): return at once, results discarded}.

        Returns: {summary {targeted, ok, error, timeout, duration_s},
        results {host: {status: ok|error|timeout, result | error, message}}}.
        A frozen or dead host is reported as timeout; it never delays the
        answer past timeout_s.  Arguments given as text are converted by the
        agent method's declared types.

        Raises: NoSuchHost (the target matches no host), InvalidArgument
        (bad method, target, timeout_s or option),
        PermissionDenied (a read-only key broadcasting a method that is not
        read-only).
        """
        opts = validate.options(options, {"target": "", "timeout_s": "", "fire_and_forget": ""}, "broadcast")
        caller = wire.current_caller()
        if caller is not None and caller.role != "admin" and method not in READ_AGENT_METHODS:
            raise errors.PermissionDenied(f"role {caller.role!r} may broadcast only read methods "
                                          f"({', '.join(sorted(READ_AGENT_METHODS))})")
        timeout = validate.number(opts.get("timeout_s", 10.0), "timeout_s", minimum=0.1, maximum=3600)
        if opts.get("target") is not None and not isinstance(opts.get("target"), str):
            raise errors.InvalidArgument("target must be a glob on host names or label:KEY=VALUE")
        if not isinstance(method, str) or not method:
            raise errors.InvalidArgument("method must be an agent method name")
        if not isinstance(opts.get("fire_and_forget", False), bool):
            raise errors.InvalidArgument("fire_and_forget must be true or false")
        hosts = fanout.targets(self.store.hosts(), opts.get("target"))
        if not hosts:
            raise errors.NoSuchHost(f"no host matches the target {opts.get('target') or '*'!r}",
                                    hint="see `dcctl hosts` for names and labels")
        args = self._coerce(method, list(args or []))

        def call(h):
            return self._call(h["name"], method, *args, timeout_s=timeout)

        if opts.get("fire_and_forget"):
            gevent.spawn(fanout.broadcast, hosts, call, timeout)
            return {"summary": {"targeted": len(hosts), "ok": 0, "error": 0, "timeout": 0, "duration_s": 0.0},
                    "results": {}, "fire_and_forget": True}
        return fanout.broadcast(hosts, call, timeout)

    @expose
    def queue(self, method: str, args: list | None = None, options: dict | None = None) -> dict:
        """Run an agent method on exactly one idle host (worker queue).

        Args:
            method: an agent method name (e.g. ops_run).
            args: its positional arguments (text is converted by the
                method's declared types, as for broadcast).
            options: {timeout_s (default 60): for waiting for an idle host
                and, again, for the call; idempotent (bool): retry once on
                another host if the first one is lost}.

        Returns: {host, result (the method's answer), duration_s (seconds),
        attempts (1, or 2 after an idempotent retry)}.
        Raises: InvalidArgument (bad option), NoCapacity (no idle host in
        time), CallTimeout (the call ran past timeout_s; it may still be
        running), HostLost (the host died mid-call; it may or may not have
        run), or the method's own error.
        """
        opts = validate.options(options, {"timeout_s": "", "idempotent": ""}, "queue")
        timeout = validate.number(opts.get("timeout_s", 60.0), "timeout_s", minimum=0.1, maximum=86400)
        if not isinstance(method, str) or not method:
            raise errors.InvalidArgument("method must be an agent method name")
        if not isinstance(opts.get("idempotent", False), bool):
            raise errors.InvalidArgument("idempotent must be true or false")
        args, tried = self._coerce(method, list(args or [])), set()
        started = time.monotonic()
        while True:
            host = self.workers.acquire(timeout, exclude=tried)
            tried.add(host)
            try:
                result = self._call(host, method, *args, timeout_s=timeout)
                return {"host": host, "result": result, "attempts": len(tried),
                        "duration_s": round(time.monotonic() - started, 6)}
            except errors.CallTimeout as exc:
                raise errors.CallTimeout(f"{method} ran past its {timeout:g} s on {host}; it may still be running "
                                         "there", hint="give a longer --timeout") from exc
            except errors.Unreachable as exc:
                if not opts.get("idempotent") or len(tried) >= 2:
                    raise errors.HostLost(f"{host} stopped answering during {method} "
                                          f"({type(exc).__name__}); it may or may not have run") from exc
            finally:
                self.workers.release(host)

    # ------------------------------------------------------------ images
    @expose(access="read")
    def image_ls(self) -> list:
        """Images in the hub's registry.

        Returns: [{name, tag ("latest" if none), id (64 hex), created (Unix
        s), size_bytes, layers (digests, bottom first), exposed_ports
        [{proto, port}]}].
        """
        return [{**{k: m.get(k) for k in ("name", "id", "created", "size_bytes", "layers", "exposed_ports")},
                 "tag": m.get("tag") or "latest"} for m in self.registry.ls()]

    @expose(shielded=True)
    def image_push(self, host: str, ref: str) -> dict:
        """Copy an image from a host's store into the hub's registry (layers
        in chunks, each checked against its digest; nothing partial is kept).
        (``dcctl image_push FILE NAME[:TAG]`` with a local file uploads it
        instead: see image_upload_begin.)

        Args: host: a fleet host's name; ref: ``name`` or ``name@idprefix``
        in that host's store.
        Returns: the manifest.
        Raises: NoSuchHost, ImageNotFound, AmbiguousImageRef, StoreError
        (digest mismatch, I/O), Unreachable, CallTimeout.
        """
        self.store.host(host)
        info = self._call(host, "image_manifest", ref)
        return self.registry.receive(
            info["manifest"], info["layer_sizes"],
            lambda d, off, n: self._call(host, "image_layer_read", d, off, n, timeout_s=PULL_TIMEOUT_SECONDS))

    @expose(access="read", redact_env=False)
    def image_manifest(self, ref: str) -> dict:
        """For agents pulling: an image of the registry.

        Returns: {manifest, layer_sizes {digest: size in bytes}}.
        Raises: InvalidArgument (bad ref), ImageNotFound, AmbiguousImageRef.
        """
        m = self.registry.resolve(ref)
        return {"manifest": m, "layer_sizes": {d: self.registry.layer_size(d) for d in m["layers"]}}

    @expose(access="read")
    def image_layer_read(self, digest: str, offset: int, length: int) -> bytes:
        """For agents pulling: up to ``length`` bytes (<= 4 MiB) of a layer
        tar from ``offset`` (bytes); b"" past the end.

        Returns: bytes.
        Raises: InvalidArgument (bad digest, negative offset or length),
        ImageNotFound (no such layer).
        """
        return self.registry.read_layer(digest, offset, length)

    @expose(access="read")
    def events(self, since: float = 0.0) -> list:
        """Fleet events after ``since`` (Unix s), oldest first.

        Returns: [{at, kind
        (host_lost, host_back, rescheduled, reschedule_failed,
        reschedule_waiting, reschedule_gave_up, stale_copy_removed, adopted,
        host_removed, host_restarted), host | name | ...}], at most the last
        500, kept in memory (a hub restart starts a new list).
        """
        return [e for e in self._event_log if e["at"] > since]

    @expose(access="read")
    def hub_info(self) -> dict:
        """The hub's own state.

        Returns: {version, uptime_s, heartbeat_s, missed_heartbeats, hosts
        (count), containers (count), queue {idle [hosts, longest idle
        first], busy [hosts], members [hosts]}}.
        """
        return {"version": HUB_VERSION, "uptime_s": round(time.time() - self.started, 3),
                "heartbeat_s": self.heartbeat_s, "missed_heartbeats": self.missed_heartbeats,
                "hosts": len(self.store.hosts()), "containers": len(self.store.containers()),
                "queue": self.workers.stats()}
