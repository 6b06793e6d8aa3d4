"""The hub's store interface: every method the hub calls on its fleet
state, written down once.  Two implementations keep it:

* ``hub.store.sqlite.HubStore``: embedded SQLite, one hub (the default);
* ``hub.store.etcd.EtcdStore``: etcd 3.4 over its HTTP gateway, shared by
  several hubs.

tests/unit/test_store_conformance.py runs the same cases against both.

Rows are plain dicts with these keys:

* host: {name, endpoint, address, key (Z85 CURVE key, "" for a local ipc
  host), labels {k: v}, capacity {memory_reservable_bytes,
  container_slots, ...}, summary (the last heartbeat's dict), state
  ("alive"|"unreachable"), registered_at, last_heartbeat (Unix s)};
* container: {name, host, image (manifest id), memory_bytes, state
  ("reserved"|"placed"|"destroying"), spec {options, image, labels,
  strategy}, ports [{proto, container_port, host_port}], created_at,
  updated_at (Unix s)};
* abandoned copy: {name, host, at}; key binding: {name, key, added_at};
  route: {name, container, port, created_at}.

Reservations (``reserved_memory``) are the figures a placement decides
on: {host: (memory_bytes reserved, container count)}, counting every
container row of the host, whatever its state.

Errors every method may raise besides its own: StoreError (the store could
not write: nothing was changed), and for a networked store
StoreUnavailable (the store did not answer in time; a read returns nothing,
a write is not retried by the store when its answer was lost).

Coordination between hubs (``join``, ``is_leader``, ``leader``,
``members``, ``orphaned_reservations``): a single-hub store makes its one
hub the leader and the only member.
"""
from __future__ import annotations

import abc
from typing import Callable

#: the chooser claim/move take: figures {host: (memory_bytes, count)} -> host name;
#: it raises NoCapacity (or NoSuchHost) when no host fits
Chooser = Callable[[dict[str, tuple[int, int]]], str]


def event_source(doc: dict) -> str:
    """An event's retention source: "agent:<host>" for an agent's container
    event (``source: "agent"``), "hub" for the hub's own."""
    return f"agent:{doc.get('host')}" if doc.get("source") == "agent" else "hub"


def retention_keeps(counts: dict[str, int], max_count: int, per_host: int, agents_total: int | None) -> dict[str, int]:
    """How many of its newest events each retention source keeps, by count:
    the hub's own ``max_count``; each host's agent events ``per_host``,
    and all hosts' together at most ``agents_total`` (None: no bound),
    shared out by water-filling (every host keeps up to the same level,
    so a small host keeps all of its events and the largest are cut
    first: a fleet of many hosts stays bounded, and one host's flood
    pushes out its own).  ``counts``: {source: events kept now}."""
    keeps = {src: min(n, max_count if src == "hub" else per_host) for src, n in counts.items()}
    agents = sorted(n for src, n in keeps.items() if src != "hub")
    if agents_total is None or sum(agents) <= agents_total:
        return keeps
    level, left, hosts = 0, agents_total, len(agents)
    for n in agents:  # smallest first: each takes all it has while an equal share allows it
        share = left // hosts
        if n > share:
            level = share
            break
        left -= n
        hosts -= 1
        level = n
    return {src: (n if src == "hub" else min(n, level)) for src, n in keeps.items()}


class Store(abc.ABC):
    """The fleet store (see the module doc for the row shapes)."""

    #: "sqlite" or "etcd"; hub_info reports it
    kind: str = ""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (its lock, connection, lease)."""

    # ------------------------------------------------------------ hubs
    @abc.abstractmethod
    def join(self, name: str, endpoint: str) -> None:
        """Make hub ``name`` (serving at ``endpoint``, the address clients
        use) a member, and a candidate for leadership, until close().
        Raises: StoreUnavailable (a networked store keeps trying itself)."""

    @abc.abstractmethod
    def is_leader(self) -> bool:
        """True while this hub leads: it alone judges hosts lost, fails
        their containers over and decides orphaned reservations."""

    @abc.abstractmethod
    def leader(self) -> str | None:
        """The leading hub's name, or None while there is none."""

    @abc.abstractmethod
    def members(self) -> list[dict]:
        """The hubs alive now: [{name, endpoint, since (Unix s)}], by name."""

    @abc.abstractmethod
    def orphaned_reservations(self) -> list[str]:
        """Names of "reserved" rows whose claiming hub is gone (died in the
        middle of a placement); the leader's journal pass decides them."""

    # ------------------------------------------------------------ host keys
    @abc.abstractmethod
    def bind_key(self, name: str, key: str) -> dict:
        """Bind host ``name`` to CURVE public ``key`` (Z85); idempotent.
        Returns: {name, key, added_at}.
        Raises: Conflict (the name has another key, or the key another name)."""

    @abc.abstractmethod
    def binding(self, name: str) -> dict | None:
        """{name, key, added_at} of host ``name``, or None when unbound."""

    @abc.abstractmethod
    def name_of_key(self, key: str) -> str | None:
        """The host name bound to ``key``, or None."""

    # ------------------------------------------------------------ hosts
    @abc.abstractmethod
    def upsert_host(self, name: str, endpoint: str, address: str, labels: dict, capacity: dict,
                    key: str = "") -> dict:
        """Register or re-register a host (state "alive", registered and
        last heartbeat now).  A key registers only the name bound to it;
        ``key`` "" (a local host) only an unbound name.
        Returns: the host row plus previous_state (None for a new host).
        Raises: Unauthorized."""

    @abc.abstractmethod
    def heartbeat(self, name: str, summary: dict, key: str = "", at: float | None = None) -> str | None:
        """Record one heartbeat at ``at`` (Unix s, None: now) and mark the
        host alive.  Returns: its previous state, None for an unknown host.
        Raises: Unauthorized (bound to another key)."""

    @abc.abstractmethod
    def host_state(self, name: str, key: str = "") -> str | None:
        """Host ``name``'s state, None when unknown.  Raises: Unauthorized."""

    @abc.abstractmethod
    def record_beats(self, beats: dict[str, tuple[float, str, str | None]]) -> None:
        """Write many heartbeats at once: {host: (at (Unix s), summary as
        JSON text, capacity as JSON text or None)}; the last heartbeat
        never goes back in time; the state is not touched; unknown hosts
        are skipped."""

    @abc.abstractmethod
    def mark_unreachable(self, deadline: float, fresh: set[str] | frozenset = frozenset()) -> list[str]:
        """Mark alive hosts whose last heartbeat is older than ``deadline``
        (Unix s), except those in ``fresh``, unreachable.
        Returns: their names."""

    @abc.abstractmethod
    def host(self, name: str) -> dict:
        """Host ``name``'s row.  Raises: NoSuchHost."""

    @abc.abstractmethod
    def hosts(self) -> list[dict]:
        """Every host row, by name; each row and its labels and capacity
        maps are the caller's own, its ``summary`` may be shared with
        later reads (a placement reads the hosts for each decision): read
        it, do not change it."""

    @abc.abstractmethod
    def remove_host(self, name: str) -> None:
        """Forget host ``name``: its row, its key binding, its abandoned
        copies and its reservation record (forget its containers first)."""

    # ------------------------------------------------------------ containers
    @abc.abstractmethod
    def container(self, name: str) -> dict:
        """Container ``name``'s row.  Raises: NoSuchContainer."""

    @abc.abstractmethod
    def containers(self, host: str | None = None) -> list[dict]:
        """Every container row (or ``host``'s), by name."""

    @abc.abstractmethod
    def reserved_memory(self, db=None) -> dict[str, tuple[int, int]]:
        """{host: (memory_bytes reserved, container count)} (``db``: an
        open SQLite transaction to read in; other stores ignore it)."""

    @abc.abstractmethod
    def claim(self, name: str, image: str, memory_bytes: int, spec: dict, choose: Chooser) -> dict:
        """Atomically claim ``name`` and reserve ``memory_bytes`` and one
        slot on the host ``choose(figures)`` picks: the row is "reserved".
        Concurrent claims (from any hub) never over-commit a host, and only
        one claim of a name succeeds.
        Returns: the row.
        Raises: ContainerExists (also while an abandoned copy keeps the
        name), NoCapacity / NoSuchHost (from ``choose``)."""

    @abc.abstractmethod
    def move(self, name: str, choose: Chooser) -> str:
        """Move ``name``'s reservation to the host ``choose`` picks, its own
        reservation left out of the figures.  Returns: the host.
        Raises: NoSuchContainer, NoCapacity."""

    @abc.abstractmethod
    def assign(self, name: str, host: str) -> None:
        """Point ``name``'s row (and its reservation) at ``host``."""

    @abc.abstractmethod
    def set_placed(self, name: str, image: str, ports: list[dict], host: str | None = None) -> bool:
        """Mark ``name`` placed, with its image id and port mappings; with
        ``host``, only while its row is on that host.

        Returns: True when written; False when there is no such row (it was
        removed meanwhile: host_remove, a destroy, another hub) or it is on
        another host (the name claimed again there); nothing is written."""

    @abc.abstractmethod
    def set_state(self, name: str, state: str, was: str) -> bool:
        """Set ``name``'s state to ``state`` if it is ``was``; True if so."""

    @abc.abstractmethod
    def destroying(self, host: str) -> list[str]:
        """Names of ``host``'s rows in state "destroying", sorted."""

    @abc.abstractmethod
    def set_ports(self, name: str, ports: list[dict]) -> None:
        """Replace ``name``'s port mappings."""

    @abc.abstractmethod
    def adopt(self, name: str, host: str, image: str, ports: list[dict], memory_bytes: int = 0) -> None:
        """Record a container found on ``host`` that the store lacks
        ("placed"); a no-op when the name has a row."""

    @abc.abstractmethod
    def abandon(self, name: str, host: str) -> None:
        """Record that a failed create may have left ``name`` on ``host``."""

    @abc.abstractmethod
    def abandoned(self, host: str | None = None) -> list[dict]:
        """Abandoned copies [{name, host, at}], all or ``host``'s, by name."""

    @abc.abstractmethod
    def is_abandoned(self, name: str, host: str) -> bool:
        """True when a failed create may have left ``name`` on ``host``."""

    @abc.abstractmethod
    def unabandon(self, name: str, host: str) -> None:
        """Forget the record of ``name``'s copy on ``host``."""

    @abc.abstractmethod
    def forget(self, name: str) -> None:
        """Drop ``name``'s row, its reservation and its routes (a no-op for
        an unknown name)."""

    # ------------------------------------------------------------ routes
    @abc.abstractmethod
    def add_route(self, name: str, container: str, port: int, exist_ok: bool = False) -> bool:
        """Add backend (container, tcp ``port``) to route ``name``; True
        when added.  Raises: NoSuchContainer, NoSuchPortMapping,
        RouteExists (unless ``exist_ok``)."""

    @abc.abstractmethod
    def remove_route(self, name: str, container: str, port: int) -> None:
        """Remove one backend of route ``name``.  Raises: NoSuchRoute."""

    @abc.abstractmethod
    def routes(self) -> list[dict]:
        """Every route row, by name, container, port."""

    # ------------------------------------------------------------ deploy: apps, releases, journal
    # JSON documents by key (hub/apps.py, hub/deploy.py): apps/APP,
    # releases/APP/NNNNNN, deploys/APP (the journal of a deploy under way).
    @abc.abstractmethod
    def deploy_doc_get(self, key: str) -> dict | None:
        """The document at ``key``, or None."""

    @abc.abstractmethod
    def deploy_doc_put(self, key: str, doc: dict, create_only: bool = False) -> bool:
        """Write ``doc`` at ``key``; with ``create_only`` only if there is
        none (then False when one exists, atomically: two hubs starting a
        deploy of one app, one wins).  Returns whether it was written."""

    @abc.abstractmethod
    def deploy_doc_delete(self, key: str) -> bool:
        """Remove the document at ``key``; whether there was one."""

    @abc.abstractmethod
    def deploy_docs(self, prefix: str) -> list[tuple[str, dict]]:
        """Every (key, document) whose key starts with ``prefix``, by key."""

    # ------------------------------------------------------------ fleet events (hub/events.py)
    @abc.abstractmethod
    def events_append(self, docs: list[dict], host: str | None = None,
                      agent_index: int | None = None) -> list[dict]:
        """Append events ``{at, ...}``, each given the next fleet ``index``
        (never reused, also after pruning); with ``host`` and
        ``agent_index``, that host's event cursor becomes ``agent_index`` in
        the same write.  Returns: the documents with their ``index``."""

    @abc.abstractmethod
    def events_after(self, index: int, limit: int) -> list[dict]:
        """Events with a fleet index above ``index``, oldest first, at most ``limit``."""

    @abc.abstractmethod
    def events_index_at(self, at: float) -> int:
        """The index just before the first kept event after ``at`` (Unix s),
        so that the events after it include every one later than ``at``
        (whatever the order of their times); the newest index when no
        kept event is later."""

    @abc.abstractmethod
    def events_bounds(self) -> dict:
        """{first (oldest kept index, or last + 1), last (newest index
        given, 0 before any), pruned_index, pruned_at (0 before any)}."""

    @abc.abstractmethod
    def events_prune(self, max_count: int, max_age_s: float, now: float | None = None,
                     max_per_host: int | None = None, max_agent_events: int | None = None) -> int:
        """Drop, per retention source (``event_source``), the oldest events
        beyond its count (``retention_keeps``: the hub's own ``max_count``;
        each host's agent events ``max_per_host``, default ``max_count``,
        and all hosts' together ``max_agent_events``) and every event
        older than ``max_age_s`` seconds.  ``pruned_index``/``pruned_at`` of
        events_bounds are the newest the hub's own count or the age limit
        dropped: a host's agent events pushed out by that host's own count
        move only its source mark (events_source_marks), so a host that
        floods cannot make other readers' ``since`` expire.  Returns how
        many went."""

    @abc.abstractmethod
    def events_source_marks(self) -> dict[str, int]:
        """{retention source: the newest index its pruning dropped} (a
        source never pruned is absent)."""

    @abc.abstractmethod
    def event_cursor(self, host: str) -> int:
        """The last agent event index taken in from ``host`` (0: none)."""

    @abc.abstractmethod
    def set_event_cursor(self, host: str, agent_index: int) -> None:
        """Set ``host``'s event cursor (0 when its agent's journal started over)."""
