"""The hub's fleet membership: hosts admitted (host_add), registering and
sending heartbeats (taken in memory, see hub/heartbeats.py), judged lost
after missed heartbeats (the monitor), removed, and listed (hosts).
"""
from __future__ import annotations

import logging
import re
import time

import gevent

from dcctl import auth, errors, validate, wire
from dcctl.wire import expose
from hub import scheduler

log = logging.getLogger(__name__)

#: Heartbeats a hub that takes the lead from a dead one waits, beyond the
#: usual grace, before judging hosts: an agent beating to the dead hub moves
#: on after 2 unanswered calls of 2 heartbeats each, a heartbeat's pause and
#: up to a heartbeat of random delay (agents/hubclient.py), about 7.
LEADER_TAKEOVER_BEATS = 8

#: The monitor re-reads the alive hosts at least every this many passes (about seconds).
MEMBERS_REFRESH_PASSES = 30


#: Ceilings of a host's capacity figures (host_register, host_heartbeat):
#: a figure in bytes (its name ends in ``_bytes``) at most 64 TiB (the
#: largest servers have 24 to 32 TiB of memory), any other (a count:
#: container_slots, containers...) at most 65,536; at most 16 figures, each
#: named by 1 to 64 characters of ``a-z0-9_``.  A host's own word decides
#: placement, so an absurd figure (1 << 50) would take every create.
MAX_CAPACITY_BYTES = 1 << 46
MAX_CAPACITY_COUNT = 1 << 16
MAX_CAPACITY_FIGURES = 16
#: At most this many containers in one heartbeat (MAX_CAPACITY_COUNT).
MAX_REPORTED_CONTAINERS = MAX_CAPACITY_COUNT
#: The longest metrics_url a heartbeat may carry (shown in ``hosts``).
METRICS_URL_MAX_CHARS = 512
_FIGURE_NAME = re.compile(r"^[a-z0-9_]{1,64}$")


def _capacity(value) -> dict:
    """A host's capacity figures as registered or beaten: {NAME: integer
    or None} (None: {}), each figure clamped to 0 .. its ceiling
    (MAX_CAPACITY_BYTES for a NAME ending in ``_bytes``, else
    MAX_CAPACITY_COUNT): the host still registers and beats (refusing it
    would have it judged lost while its containers run on, and
    rescheduled elsewhere: a name running twice), but an absurd figure
    cannot take every create.  Returns the clamped figures (a new dict).
    Raises: InvalidArgument (not a map of integers, too many figures, a
    bad figure name)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, int) and not isinstance(v, bool) or v is None
                                              for v in value.values()):
        raise errors.InvalidArgument("capacity must be a map of figures {memory_reservable_bytes, "
                                     "container_slots, ...} (integers)")
    if len(value) > MAX_CAPACITY_FIGURES:
        raise errors.InvalidArgument(f"capacity has {len(value)} figures, at most {MAX_CAPACITY_FIGURES}")
    for name, figure in value.items():
        if not isinstance(name, str) or not _FIGURE_NAME.match(name):
            raise errors.InvalidArgument(f"bad capacity figure name {name!r:.80}: 1 to 64 of a-z, 0-9, '_'")
    clamped = {}
    for name, figure in value.items():
        ceiling = MAX_CAPACITY_BYTES if name.endswith("_bytes") else MAX_CAPACITY_COUNT
        clamped[name] = None if figure is None else min(max(figure, 0), ceiling)
    return clamped


def _endpoint(text) -> wire.Endpoint:
    """A host's endpoint as it registers it: ``ipc://PATH``, or
    ``tcp://IP:PORT`` with a specific IPv4 or IPv6 address (no name, no
    ``*``, not 0.0.0.0 or ::, not multicast: the hub dials it) and a port
    from 1 to 65535 (not 0 or ``*``).  Raises: InvalidArgument."""
    parsed = wire.parse_endpoint(text)
    if parsed.is_tcp:
        try:
            if not parsed.host or parsed.port is None or not 1 <= parsed.port <= 65535:
                raise errors.InvalidArgument("no specific address and port")
            validate.host_address(parsed.host)  # the one check of a specific address
        except errors.InvalidArgument:
            raise errors.InvalidArgument(f"a host's endpoint is tcp://IP:PORT with a specific address and a port "
                                         f"from 1 to 65535, not {parsed.text!r:.120}",
                                         hint="register the address the hub dials, e.g. tcp://10.0.0.2:7000") from None
    return parsed


def _containers(value) -> list | None:
    """A heartbeat's containers: None, or a list of at most
    MAX_REPORTED_CONTAINERS maps, each with a string ``name`` (and a
    string ``state`` if any).  Raises: InvalidArgument."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_REPORTED_CONTAINERS:
        raise errors.InvalidArgument(f"heartbeat containers must be a list of at most {MAX_REPORTED_CONTAINERS} "
                                     "{name, state}")
    for c in value:
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or \
                not isinstance(c.get("state", ""), str):
            raise errors.InvalidArgument(f"each heartbeat container is {{name, state}} of strings, got {c!r:.80}")
    return value


class MembershipMethods:
    """Membership methods of HubService (a mixin); they use the hub's
    ``store``, ``agents``, ``beats``, ``events_log``, ``healer``,
    ``workers``, ``allowlist``, ``heartbeat_s``, ``missed_heartbeats`` and
    ``_serving_since`` (when the hub started serving)."""

    def monitor_hosts(self) -> None:
        """Judge hosts, for ever (the hub spawns and kills it): an alive host
        whose last heartbeat (written, or heard and not yet written) is older
        than missed_heartbeats heartbeats is marked unreachable, told as
        host_lost and handed to the healer; no host is judged within that
        grace from the start.  Keeps the worker queue's members (alive
        hosts) up to date.  With several hubs only the leader judges, and
        a hub that becomes the leader, like a store that comes back from
        being unavailable, gives every host a full grace again (beats heard
        during an etcd outage were not written); one that takes the lead
        from a dead hub adds LEADER_TAKEOVER_BEATS heartbeats (hosts that
        beat to the dead hub need the time to find another)."""
        grace_s = self.heartbeat_s * self.missed_heartbeats
        leading = False
        passes = 0
        wait_s = grace_s  # the grace now under way
        while True:
            now_leading = self.store.is_leader()
            if now_leading and not leading:
                self._serving_since = time.monotonic()
                # taking over from a leader that died (not at this hub's start): its agents first
                # find it gone, then move here (LEADER_TAKEOVER_BEATS), so they get that time too
                wait_s = grace_s + (self.heartbeat_s * LEADER_TAKEOVER_BEATS if passes else 0.0)
            leading = now_leading
            judged = leading and time.monotonic() - self._serving_since >= wait_s  # else in a grace
            deadline = time.time() - grace_s
            try:
                lost = self.store.mark_unreachable(deadline, self.beats.fresh(deadline)) if judged else []
            except errors.StoreError as exc:  # e.g. a full disk: judged again next round
                log.warning("could not judge hosts: %s", exc)
                lost = []
                if isinstance(exc, errors.StoreUnavailable):
                    self._serving_since = time.monotonic()
            for name in lost:
                log.warning("host %s missed %d heartbeats: unreachable", name, self.missed_heartbeats)
                self.events_log.add("host_lost", host=name)
                gevent.spawn(self.healer.host_lost, name)
            if lost or self.members_changed() or passes % self._members_refresh_passes() == 0:
                # every host row read and parsed: only when the membership changed (1,000 hosts: ~20 ms)
                try:
                    self.workers.set_members({h["name"] for h in self.store.hosts() if h["state"] == "alive"})
                except errors.StoreUnavailable as exc:  # etcd away: the queue keeps the members it had
                    log.warning("could not read hosts: %s", exc)
                    self.members_changed(True)  # read again next pass
            passes += 1
            gevent.sleep(min(1.0, self.heartbeat_s / 2))

    def _members_refresh_passes(self) -> int:
        """Passes between two reads of the alive hosts when this hub saw no
        change: MEMBERS_REFRESH_PASSES with a store of its own; every pass
        with a shared store (etcd), where other hubs register hosts too."""
        return MEMBERS_REFRESH_PASSES if getattr(self.store, "kind", "sqlite") == "sqlite" else 1

    def members_changed(self, changed: bool = False) -> bool:
        """Note (``changed``) that a host may have joined, come back or left
        the alive set, or take that note (True once per change): the monitor
        re-reads the alive hosts for the worker queue only then (and every
        MEMBERS_REFRESH_PASSES passes), not at every pass."""
        if changed:
            self._members_dirty = True
            return True
        dirty, self._members_dirty = getattr(self, "_members_dirty", False), False
        return dirty

    @staticmethod
    def _valid_boot_id(boot_id) -> str | None:
        """``boot_id`` if it is None or a string of 1 to 128 characters.

        Raises: InvalidArgument."""
        if boot_id is not None and not (isinstance(boot_id, str) and 0 < len(boot_id) <= 128):
            raise errors.InvalidArgument("boot_id must be a string of 1 to 128 characters")
        return boot_id

    @expose(shielded=True)
    def host_add(self, name: str, key: str) -> dict:
        """Admit a new host (the operator's step, like accepting a key in
        Salt): bind the host ``name`` to its CURVE public ``key`` and allow
        that key on the hub with the agent role (on etcd: on every hub of
        the store, through the binding each hub watches).  Only then may
        the host register, and under this name only.  Idempotent.

        Args:
            name: the host's name (its agent's --host-name).
            key: its agent's public key, 40 Z85 characters (the
                ``public-key`` of KEYS_DIR/server.key on the host; the agent
                also logs it at start).

        Returns: {name, key, added_at (Unix s)}.
        Raises: InvalidArgument, Conflict (the name is bound to another key,
        or the key to another host: host_remove first), StoreUnavailable
        (etcd does not answer: nothing was admitted).
        """
        validate.host_name(name)
        key = auth.public_key(key)
        binding = self.store.bind_key(name, key)
        if self.allowlist is not None and not self.allowlist.agents_elsewhere:  # on etcd: the binding admits it
            self.allowlist.add("agent", name, key)
        log.info("host %s added with key %s", name, key)
        self.events_log.add("host_added", host=name)
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

        Every field is the host's own word, checked before anything is
        kept: address an IPv4 or IPv6 address or "" (dcctl.validate.
        host_address); endpoint ``tcp://IP:PORT`` with a specific address
        and a port from 1 to 65535, or ``ipc://PATH`` (_endpoint); labels
        as dcctl.validate.labels (at most 32, bounded keys and values);
        capacity figures from 0 to MAX_CAPACITY_BYTES (``*_bytes``) or
        MAX_CAPACITY_COUNT (_capacity).

        Returns: {name, heartbeat_s (seconds between heartbeats)}.
        Raises: InvalidArgument (a bad name, address, endpoint, labels or
        capacity, or an endpoint of the wrong kind), Unauthorized (the key
        is not bound to this name).  A boot_id that is not a string of 1 to
        128 characters is InvalidArgument.
        """
        validate.options(info, {"name": "", "endpoint": "", "address": "", "labels": "", "capacity": "",
                                "boot_id": ""}, "host_register")
        name = info.get("name")
        if not isinstance(name, str) or not name:
            raise errors.InvalidArgument("host name must be a non-empty string")
        validate.host_name(name)
        parsed = _endpoint(info.get("endpoint"))
        endpoint = parsed.text
        address = validate.host_address(info.get("address"))
        labels = validate.labels(info.get("labels") or None)
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
        row = self.store.upsert_host(name, endpoint, address, labels, capacity, key)
        self.members_changed(True)
        if row["previous_state"] == "unreachable":  # e.g. its beats failed to write and it registered again
            log.info("host %s is alive again (registered)", name)
            self.events_log.add("host_back", host=name)
        if boot_id is None:
            self.agents.drop(name, "the agent registered again")  # an agent without a boot id
        else:
            self.agents.note_boot(name, boot_id)
        log.info("host %s registered at %s", name, endpoint)
        return {"name": name, "heartbeat_s": self.heartbeat_s}

    @expose(access="agent")
    def host_heartbeat(self, name: str, summary: dict) -> dict:
        """Called by agents every heartbeat_s: a hostinfo summary {capacity,
        metrics, containers [{name, state}], boot_id (as in host_register)}.

        The beat is taken in memory and written with every other host's
        within heartbeat_flush_s (one transaction, see hub/heartbeats.py);
        the first beat of a host that was unreachable is written at once.
        While etcd is away a registered host's beats are still taken (the
        hub knows it from its watched records; its containers are
        reconciled at a beat after etcd is back).

        The summary is checked before the beat is taken (a beat's capacity
        replaces the registered one): capacity as host_register's
        (_capacity: figures from 0 to their ceilings), containers None or a
        list of {name, state} with string names (_containers), metrics_url
        None or a string of at most METRICS_URL_MAX_CHARS.

        Returns: {ok: True}.
        Raises: InvalidArgument (no capacity {memory_reservable_bytes,
        container_slots} of integers (figures out of bounds are clamped: _capacity), containers
        of another shape, or a summary JSON cannot hold, e.g. bytes),
        NoSuchHost (not registered: register again), Unauthorized (the
        name is bound to another host key).
        """
        cap = summary.get("capacity")
        if not isinstance(cap, dict) or not all(isinstance(cap.get(k, 0), int) and not isinstance(cap.get(k, 0), bool)
                                                for k in ("memory_reservable_bytes", "container_slots")):
            raise errors.InvalidArgument("heartbeat summary needs capacity {memory_reservable_bytes, container_slots}")
        summary = {**summary, "capacity": _capacity(cap)}
        containers = _containers(summary.get("containers"))
        url = summary.get("metrics_url")
        if url is not None and not (isinstance(url, str) and len(url) <= METRICS_URL_MAX_CHARS):
            raise errors.InvalidArgument(f"metrics_url must be a string of at most {METRICS_URL_MAX_CHARS} "
                                         "characters")
        boot_id = self._valid_boot_id(summary.get("boot_id"))
        caller = wire.current_caller()
        previous = self.beats.beat(name, summary, caller.key if caller else "")
        if previous is None:
            raise errors.NoSuchHost(f"host {name!r} is not registered")
        if previous != "alive":
            self.members_changed(True)
            log.info("host %s is alive again", name)
            self.events_log.add("host_back", host=name)
        self.agents.note_boot(name, boot_id)
        if containers is not None:
            try:
                self.healer.reconcile(name, containers)
            except errors.StoreUnavailable as exc:  # etcd away: the beat is taken, reconciled at a later one
                log.debug("host %s not reconciled: %s", name, exc)
        return {"ok": True}

    @expose(shielded=True)
    def host_remove(self, name: str) -> dict:
        """Forget a host (e.g. decommissioned, or registered by mistake): its
        membership, its key binding and the allowlist entry host_add made
        (it must be added again to rejoin; on etcd every hub of the store
        refuses its key, new connections and calls on open ones alike,
        within the watch's delay); the fleet's records of
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
        self.members_changed(True)
        if binding is not None and self.allowlist is not None and not self.allowlist.agents_elsewhere:
            self.allowlist.remove("agent", name, binding["key"])
        self.agents.forget(name, "the host was removed")
        self.beats.forget(name)
        self.events_log.add("host_removed", host=name)
        return {"name": name, "containers_forgotten": len(rows)}

    @expose(access="read")
    def hosts(self) -> list:
        """Fleet membership.

        Returns: [{name, state ("alive"|"unreachable"), endpoint, address,
        labels, memory_reservable_bytes, memory_reserved_bytes,
        memory_free_bytes, container_slots, containers, last_heartbeat (Unix
        s), heartbeat_age_s (seconds), metrics_url (the agent's Prometheus
        endpoint, as its heartbeats report it, or None)}]; sizes in bytes, reserved and free
        figures from the hub's own reservations.
        """
        out = []
        figures = self.store.reserved_memory()  # a read: no write transaction
        now = time.time()
        for h in self.store.hosts():
            cap = h["capacity"] or {}
            free_mem, free_slots = scheduler.free_figures(h, figures)
            last = max(h["last_heartbeat"], self.beats.last(h["name"]) or 0.0)  # beats not yet written count
            out.append({"name": h["name"], "state": h["state"], "endpoint": h["endpoint"],
                        "address": h["address"], "labels": h["labels"],
                        "memory_reservable_bytes": cap.get("memory_reservable_bytes"),
                        "memory_reserved_bytes": (cap.get("memory_reservable_bytes") or 0) - free_mem,
                        "memory_free_bytes": free_mem, "container_slots": cap.get("container_slots"),
                        "containers": (cap.get("container_slots") or 0) - free_slots,
                        "last_heartbeat": last, "heartbeat_age_s": round(now - last, 3),
                        "metrics_url": (h.get("summary") or {}).get("metrics_url")})
        return out
