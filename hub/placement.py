"""Placing containers on hosts: the reservation, the agent calls that make a
container real on the chosen host, the retry on the next feasible host, and
the journal of placements a hub restart interrupted.

A placement claims the name and reserves capacity atomically (SQLite BEGIN
IMMEDIATE, HubStore.claim) before any agent call; the row is "reserved"
until the container runs on its host, then "placed".  When the chosen host
fails with an error worth retrying elsewhere (RETRYABLE), its half-made
container is destroyed (best effort) and the reservation moves to the next
feasible host; NoCapacity then names each host's reason.  When that undo
cannot reach the host, the copy it may hold is recorded as abandoned
(HubStore.abandon): the name stays claimed, and the copy is destroyed, never
adopted, once the host answers (``sweep``, and the healer's reconcile on the
host's heartbeat), whether or not the create succeeded elsewhere.

``Placer`` does that work (the healer uses it too); ``PlacementMethods``
is the served create_container (a mixin of HubService): its options
checked, then ``Placer.place``, then the container's routes.
"""
from __future__ import annotations

import json
import logging

import gevent

from dcctl import errors, validate
from dcctl.wire import expose
from hub import routes, scheduler
from hub.agents import VIEW_TIMEOUT_SECONDS, Agents
from hub.store import HubStore

log = logging.getLogger(__name__)

RETRYABLE = (errors.Unreachable, errors.CallTimeout, errors.NoCapacity, errors.LxcFailure,
             errors.StoreError, errors.NetworkError, errors.Busy)
PULL_TIMEOUT_SECONDS = 600.0
#: A create's spec (its options, image and labels) as the store keeps it,
#: JSON bytes: one row of a claim, which on etcd shares a transaction with
#: the host's reservation record under etcd's 1.5 MiB request limit
#: (values travel base64-encoded through its gateway: 4/3 of their size).
SPEC_MAX_BYTES = 768 * 1024
CREATE_OPTIONS = {
    "memory_bytes": "memory limit and reservation, bytes",
    "cpus": "CPU quota", "cpu_shares": "CPU weight",
    "pids_limit": "most processes and threads, 16-4194304 (default: the host agent's default_pids_limit)",
    "env": "{NAME: value}",
    "command": "argv list or shell string",
    "label": "placement constraints {key: value}", "host": "pin to this host",
    "no_start": "create only", "strategy": "spread (default) or binpack",
    "restart": "no (default), always, on-failure[:N]: on the host, and re-created elsewhere if the host is lost",
    "volumes": "[\"NAME:/path\"]: named volumes; placed on the host holding them",
}
AGENT_CREATE_KEYS = tuple(validate.CREATE_OPTIONS)


class Placer:
    """Makes reserved containers real on hosts, through ``agents``."""

    def __init__(self, store: HubStore, agents: Agents):
        self.store = store
        self.agents = agents
        #: ``(type, **detail)``: where the journal records what it decided
        #: (the hub's EventLog.add; None: nowhere)
        self.on_event = None
        #: names of undecided "reserved" rows the journal pass (recover) decides
        self.journal: set[str] = set()
        self.placing: set[str] = set()  # names whose place() is under way
        #: failed creates whose record could not be written (StoreError):
        #: {name: hosts it may have been left on}; the journal pass finishes them
        self.pending: dict[str, set[str]] = {}

    def place(self, name: str, manifest: dict, request: scheduler.Request, spec: dict, agent_opts: dict,
              no_start: bool = False) -> dict:
        """Reserve ``name`` on the best feasible host for ``request`` and make
        it there (see realize); on a RETRYABLE failure, undo it there and try
        the next feasible host, until one succeeds or none is left.

        Args:
            name: the container's fleet-unique name (validated by the caller).
            manifest: the image's registry manifest.
            request: what the placement needs (memory, labels, pin, strategy).
            spec: kept in the row for failover: {options, image, labels,
                strategy}.
            agent_opts: the agent's container_create options.
            no_start: create only.

        Returns: realize's dict.
        Raises: ContainerExists; NoCapacity or NoSuchHost (naming each
        host's reason, and the last failure when every feasible host
        failed); a create pinned to a host (``request.host``) that failed
        there: that host's error (Unreachable, CallTimeout, LxcFailure,
        ...), as no other host is tried; the host's own error when it is not worth retrying
        elsewhere (the reservation is dropped in every failure; a copy an
        undo could not reach is recorded as abandoned, see sweep);
        NoSuchContainer (the row was removed while the create ran, e.g.
        host_remove of its host: the copy made there is destroyed).
        """
        try:
            row = self.store.claim(name, manifest["id"], request.memory_bytes, spec,
                                   scheduler.choose(self.store.hosts(), request))
        except errors.StoreUnavailable:  # etcd may have applied it unanswered: the journal pass forgets it
            if name not in self.placing:
                self.pending.setdefault(name, set())
            raise
        self.placing.add(name)
        try:
            return self._place(name, row["host"], manifest, request, agent_opts, no_start)
        finally:
            self.placing.discard(name)

    def _place(self, name: str, host: str, manifest: dict, request: scheduler.Request, agent_opts: dict,
               no_start: bool) -> dict:
        """place's work once ``name`` is reserved on ``host``."""
        tried = set()
        while True:
            tried.add(host)
            try:
                result = self.realize(host, manifest, name, agent_opts, no_start)
            except RETRYABLE as exc:
                log.warning("create %s on %s failed (%s: %s); trying another host", name, host,
                            type(exc).__name__, exc)
                self._leave(name, host)
                if request.host is not None:  # pinned: no other host to try, and the host's error is the answer
                    self._drop(name)
                    raise type(exc)(f"create of {name} on {host} (the host it is pinned to) failed: {exc}",
                                    hint=exc.hint) from exc
                try:
                    host = self.store.move(name, scheduler.choose(self.store.hosts(), request, exclude=tried))
                except errors.DcError as nc:
                    self._drop(name)
                    raise type(nc)(f"{nc}; last failure on {host}: {type(exc).__name__}: {exc}") from exc
                continue
            except BaseException:
                self._leave(name, host)
                self._drop(name)
                raise
            try:
                placed = self.store.set_placed(name, manifest["id"], result["ports"], host=host)
            except errors.StoreError:  # made, but not recorded: the caller is told it failed, so undo it
                self._leave(name, host)
                self._drop(name)
                raise
            if not placed:  # the row went meanwhile: host_remove here or on another hub
                self.undo_or_abandon(host, name)
                raise errors.NoSuchContainer(
                    f"container {name!r} was removed from the fleet while it was being created on {host} "
                    "(host_remove?); the copy made there was destroyed",
                    hint="create it again (on another host if that one was removed)")
            return result

    def undo_or_abandon(self, host: str, name: str) -> None:
        """Destroy the copy of ``name`` on ``host`` whose fleet record is
        gone; when the host does not answer and is still a member, record
        the copy as abandoned (destroyed once it answers, see sweep); a
        host that was removed keeps it (host_remove leaves a host's
        containers untouched).  Raises: StoreError (recording it)."""
        if self.undo(host, name):
            return
        try:
            self.store.host(host)
        except errors.NoSuchHost:
            return
        self.store.abandon(name, host)

    def _leave(self, name: str, host: str) -> None:
        """Undo ``name`` on ``host``; when the host does not answer, record
        the copy as abandoned (or, when that write fails too, keep it in
        ``pending`` for the journal pass)."""
        if self.undo(host, name):
            return
        try:
            self.store.abandon(name, host)
        except errors.StoreError as exc:
            log.warning("could not record the copy of %s left on %s (%s): retried each round", name, host, exc)
            self.pending.setdefault(name, set()).add(host)

    def _drop(self, name: str) -> None:
        """Forget the reservation of a create that failed; when the store
        cannot write that (StoreError), the journal pass (recover) forgets
        it later, so no row stays "reserved" for ever."""
        try:
            self.store.forget(name)
        except errors.StoreError as exc:
            log.warning("could not forget the failed reservation of %s (%s): retried each round", name, exc)
            self.pending.setdefault(name, set())

    def _retry_pending(self, name: str) -> None:
        """One round for a failed create whose record could not be written:
        record each copy it may have left (abandoned), then forget its
        reservation unless a placement of the name is under way again."""
        hosts = self.pending[name]
        for host in sorted(hosts):
            try:
                row = self.store.container(name)
                if row["host"] == host and row["state"] != "reserved":
                    hosts.discard(host)  # it lives there now
                    continue
            except errors.NoSuchContainer:
                pass
            if not self.undo(host, name):
                self.store.abandon(name, host)
            hosts.discard(host)
        if name not in self.placing:
            try:
                if self.store.container(name)["state"] == "reserved":
                    self.store.forget(name)
                    log.info("journal: forgot the failed reservation of %s", name)
            except errors.NoSuchContainer:
                pass
        del self.pending[name]

    def realize(self, host: str, manifest: dict, name: str, agent_opts: dict, no_start: bool) -> dict:
        """Make container ``name`` on ``host``: pull the image (if the host
        lacks it), create, start (unless ``no_start``) and map each exposed
        port.  The store row is not touched.

        Returns: {name, host, address (the host's, where mapped ports
        answer), container_address, image (``name@id``), state, ports
        [{proto, container_port, host_port}]}.
        Raises: the agent's errors; Unreachable; CallTimeout.
        """
        ref = f"{manifest['name']}@{manifest['id']}"
        self.agents.call(host, "image_pull", ref, None, timeout_s=PULL_TIMEOUT_SECONDS)
        info = self.agents.call(host, "container_create", ref, name, agent_opts)
        ports = []
        if not no_start:
            info = self.agents.call(host, "container_start", name)
        for p in manifest.get("exposed_ports", []):
            m = self.agents.call(host, "container_connection_add", name, p["proto"], p["port"])
            ports.append({"proto": m["proto"], "container_port": m["container_port"], "host_port": m["host_port"]})
        return {"name": name, "host": host, "address": self.store.host(host)["address"],
                "container_address": info["address"], "image": ref, "state": info["state"], "ports": ports}

    def undo(self, host: str, name: str) -> bool:
        """Best effort: destroy a half-made container on ``host``.

        Returns: True when the host answered (destroyed, or it has no such
        container), False when it did not (the caller records the copy as
        abandoned: see sweep).  Never raises a DcError."""
        try:
            self.agents.call(host, "container_destroy", name, True, timeout_s=VIEW_TIMEOUT_SECONDS * 3)
        except errors.NoSuchContainer:
            return True
        except errors.DcError as exc:
            log.warning("could not undo %s on %s (%s: %s): it is destroyed once %s answers", name, host,
                        type(exc).__name__, exc, host)
            return False
        return True

    def sweep(self) -> None:
        """Destroy each copy a failed create may have left on a host that
        did not answer then (the store's abandoned rows), and forget the row
        of each one destroyed or found absent; hosts that still do not
        answer keep theirs for the next sweep.  Never raises a DcError."""
        for row in self.store.abandoned():
            try:
                self.agents.call(row["host"], "container_destroy", row["name"], True,
                                 timeout_s=VIEW_TIMEOUT_SECONDS * 3)
                log.info("destroyed the copy of %s a failed create left on %s", row["name"], row["host"])
            except errors.NoSuchContainer:
                pass
            except errors.DcError as exc:
                log.debug("abandoned %s on %s still undecided: %s", row["name"], row["host"], exc)
                continue
            self.store.unabandon(row["name"], row["host"])

    def recover(self, journal: set[str], interval_s: float, leading=None, orphans=None) -> None:
        """Finish or roll back undecided placements, for ever (the hub
        spawns and kills it), every ``interval_s`` seconds: the ``journal``
        (names of rows "reserved" when this hub started, and rows a failed
        create could not forget, see ``journal``) and the copies failed
        creates left on hosts (``sweep``).  A journal row whose host has the
        container becomes placed, one whose host does not is dropped (a
        failed create whose forget could not be written, ``pending``, is
        undone and dropped); one
        whose host does not answer yet stays undecided and is asked again
        next round; ``journal`` is emptied as they are decided.

        With several hubs: ``leading() -> bool`` says whether this hub leads
        (a round runs only then), and ``orphans() -> [names]`` adds, each
        round, reservations whose hub died mid-placement."""
        self.journal = journal
        warned: set[str] = set()
        while True:
            for name in sorted(self.pending):  # this hub's own failed creates: on every hub
                try:
                    self._retry_pending(name)
                except errors.DcError as exc:  # e.g. StoreError again: next round
                    log.warning("journal: failed create of %s still unrecorded: %s", name, exc)
            if leading is not None and not leading():
                gevent.sleep(interval_s)
                continue
            if orphans is not None:
                try:
                    journal.update(orphans())
                except errors.DcError as exc:  # e.g. StoreUnavailable: next round
                    log.warning("journal: cannot list orphaned reservations: %s", exc)
            for name in sorted(journal):
                try:
                    self._decide(name, warned)
                except errors.DcError as exc:  # e.g. StoreError: asked again next round
                    log.warning("journal: %s undecided: %s", name, exc)
            try:
                self.sweep()
            except errors.DcError as exc:
                log.warning("journal: sweep of abandoned copies failed: %s", exc)
            gevent.sleep(interval_s)

    def _decide(self, name: str, warned: set[str]) -> None:
        """One journal row: adopted, rolled back, or left for next round."""
        journal = self.journal
        try:
            row = self.store.container(name)
        except errors.NoSuchContainer:
            journal.discard(name)
            return
        if row["state"] != "reserved" or name in self.placing:
            journal.discard(name)
            return
        try:
            info = self.agents.call(row["host"], "container_inspect", name, timeout_s=VIEW_TIMEOUT_SECONDS)
            if self.store.set_placed(name, row["image"], info.get("ports", []), host=row["host"]):
                log.info("journal: adopted %s on %s (%s)", name, row["host"], info.get("state"))
                # the create's caller got an error (its hub died): say what became of it
                self._record("adopted", name=name, host=row["host"], by="journal", state=info.get("state"))
            else:  # its row went meanwhile (host_remove): its host's next heartbeat decides the copy
                log.info("journal: %s was removed from the fleet meanwhile", name)
            journal.discard(name)
        except errors.NoSuchContainer:
            self.store.forget(name)
            log.info("journal: rolled back reservation of %s", name)
            journal.discard(name)
            self._record("create_rolled_back", name=name, host=row["host"], by="journal")
        except errors.StoreError:
            raise
        except errors.DcError as exc:
            (log.debug if name in warned else log.warning)(
                "journal: %s on %s undecided (asking again each heartbeat): %s", name, row["host"], exc)
            warned.add(name)


    def _record(self, kind: str, **detail) -> None:
        if self.on_event is not None:
            self.on_event(kind, **detail)


class PlacementMethods:
    """The placement method of HubService (a mixin): it validates and
    delegates to the hub's ``placer``, using its ``registry``."""

    @expose(shielded=True)
    def create_container(self, image: str, name: str, options: dict | None = None) -> dict:
        """Place, pull if needed, create, start and connect a container.

        Args:
            image: ref in the hub's registry, ``name`` or ``name@idprefix``.
            name: fleet-unique container name (see container_create).
            options: {memory_bytes, cpus, cpu_shares, pids_limit, env, command (as the
                agent's container_create), label {k: v} constraints, host
                (pin), no_start (bool), strategy ("spread"|"binpack"),
                volumes (["NAME:/path"]: placed on the host that holds
                them, see hub/volumes.py),
                route (a host name or a list: the HTTP port's routes; default
                NAME.<route domain>), no_route (bool)}.

        The name and the capacity are reserved atomically (SQLite BEGIN
        IMMEDIATE) before any pull, so concurrent creates never over-commit
        a host and only one create of a name succeeds.  If the chosen host
        fails, the next feasible one is tried and the reservation moves.

        Returns: {name, host, address (the host's, where mapped ports
        answer), container_address, image, state, ports [{proto,
        container_port, host_port}], routes [names]}.

        Raises: InvalidArgument (also options and labels over SPEC_MAX_BYTES
        encoded, or a command and env over 512 KiB), ImageNotFound, AmbiguousImageRef,
        ContainerExists, NoCapacity (naming each host's reason, and the last
        failure when every feasible host failed), NoSuchHost (pinned host
        unknown), the pinned host's own error when the create failed there
        (Unreachable, CallTimeout, LxcFailure: no other host is tried), NoSuchContainer (its record was removed while it was being
        created, e.g. host_remove of its host, here or on another hub: the
        copy made there is destroyed, nothing is left recorded), or the last
        host's own error when it is not one worth retrying elsewhere.
        """
        # every option the hub takes, its own and the routes', named in one error
        validate.options(options, {**CREATE_OPTIONS, **routes.CREATE_OPTIONS}, "create_container")
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
        labels = validate.labels(opts.get("label") or None, "label")  # the rules of a host's labels
        if opts.get("host") is not None and not isinstance(opts["host"], str):
            raise errors.InvalidArgument("host must be a host name")
        if not isinstance(opts.get("no_start", False), bool):
            raise errors.InvalidArgument("no_start must be true or false")
        manifest = self.registry.resolve(image)
        routes.check_create(manifest, route_opts)
        pin = opts.get("host")
        if agent_opts.get("volumes"):  # the host that holds its volumes (hub/volumes.py)
            pin = self.volume_host([v["name"] for v in agent_opts["volumes"]], pin)
        request = scheduler.Request(memory, dict(labels), pin, strategy)
        spec = {"options": agent_opts, "image": image, "labels": request.labels, "strategy": strategy}
        size = len(json.dumps(spec))
        if size > SPEC_MAX_BYTES:
            raise errors.InvalidArgument(f"the create's options and labels take {size} bytes encoded, "
                                         f"at most {SPEC_MAX_BYTES}", hint="put large data in a file or a volume")
        result = self.placer.place(name, manifest, request, spec, agent_opts, bool(opts.get("no_start")))
        self.events_log.add("placed", name=name, host=result.get("host"), image=manifest.get("name"))
        return self.connect_routes(result, route_opts)
