"""The hub's fleet events: one index over the hub's own events and every
agent's container events, persisted in the store (HubStore's ``events``
section), with bounded retention (count per source: the hub's own and
each host's apart, see EventLog; and age), and followers that wake
as events are added.

Event documents are ``{index, at (Unix s), type, ...}``; ``kind`` repeats
``type`` (older callers read it).  The hub's own: host_added, host_lost,
host_back, host_restarted, host_removed, placed, rescheduled,
reschedule_waiting, reschedule_failed, reschedule_gave_up,
reschedule_cancelled (the record removed during the move),
agent_events_gap (a host's events skipped indexes: see ingest), adopted
(``by: "journal"``: a create cut by its hub's death, with the state it was
found in), create_rolled_back, destroy_finished, stale_copy_removed,
route_added, route_removed (``host``,
``name``/``container``, ...).  An agent's container events (agents.events)
come with ``host``, ``container``, ``agent_index`` and ``source: "agent"``:
each agent ships what its journal wrote (``host_events``), and the hub
takes each agent index once (its per-host cursor is written in the same
transaction as the events).

``--since`` (``parse_since``): an index (digits below 1000000000: events
after it), Unix seconds (``@UNIX``, or a bare number of 10 digits or more,
1000000000 and above, or one with a fraction: Docker's ``--since
1796131100``), an ISO 8601 time, or a duration ago (``90s``, ``10m``,
``2h``, ``1d``); a number (not a string) is Unix seconds, as the hub's old
events method took.  0 is "from the oldest kept"; any other index or time before
what retention kept is EventsExpired, one in the future InvalidArgument.  Filters (``parse_filters``): Docker's semantics, the same key
ORs, different keys AND; keys container (or name), host, type (or event,
kind), image.
"""
from __future__ import annotations

import collections
import datetime
import json
import logging
import math
import re
import time
from typing import Any, Callable, Iterator

import gevent.event
import gevent.lock

from agents.events import EVENT_TYPES as AGENT_EVENT_TYPES
from dcctl import errors, validate

log = logging.getLogger(__name__)

#: Retention of the hub's own events (count).
MAX_EVENTS = 100_000
#: Retention of each host's agent events (count), apart from the hub's own
#: and from other hosts' (as many as an agent's own journal keeps,
#: agents.events.MAX_EVENTS): a host that floods pushes out its own only.
MAX_HOST_EVENTS = 10_000
#: Retention (count) of all hosts' agent events together, shared out so that
#: the largest sources are cut first (hub.store.base.retention_keeps): a fleet
#: of 1,000 hosts keeps at most this many, not 1,000 x MAX_HOST_EVENTS.
MAX_AGENT_EVENTS = 200_000
#: What an agent's event may carry (agents.events, agents.containers,
#: agents.supervisor); other fields are dropped.  index, at, type and
#: container are required; host is the caller's.
AGENT_FIELDS = ("index", "at", "type", "container", "host", "image", "exit_code", "oom_killed", "count", "command")
#: A string field of an agent event (image, each command word) past this is cut to it.
MAX_FIELD_CHARS = 256
#: Words of an exec_started command kept (the agent sends the first 16).
MAX_COMMAND_WORDS = 16
#: An ``events`` answer's size at most (JSON bytes of its events): the
#: newest that fit are returned, far below the wire's MAX_RESULT_BYTES.
MAX_LIST_BYTES = 16 << 20
MAX_AGE_SECONDS = 7 * 86400.0
#: Events read from the store per batch (a list answer's cap is MAX_LIST).
BATCH = 500
MAX_LIST = 10_000
#: Appends between two retention passes.
PRUNE_EVERY = 200
#: Agent events per host_events call at most.
MAX_INGEST = 1000
#: Events kept in memory while the store refuses writes (a full disk).
MAX_PENDING = 10_000
#: The largest agent index (and head) a host may send: JSON's exact
#: integers (2**53 - 1), within SQLite's INTEGER and etcd's JSON values.
MAX_AGENT_INDEX = 2 ** 53 - 1
#: A host's floor is kept beside its cursor, under this suffix of its name
#: (host names have no "/"): where its cursor stood before its first jump
#: since its journal began (0: none; see EventLog.ingest).
FLOOR_SUFFIX = "/floor"

FILTER_KEYS = {"container": "container", "name": "container", "host": "host", "type": "type",
               "event": "type", "kind": "type", "image": "image"}
_DURATION = re.compile(r"^(\d{1,15}(?:\.\d{1,15})?)(s|m|h|d)$", re.ASCII)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: A bare number of ``since`` from here on (10 digits: 2001-09-09 on) is Unix
#: seconds, below it an index; a number with a fraction is Unix seconds too.
UNIX_FROM = 1_000_000_000
_DECIMAL = re.compile(r"^\d+\.\d*$", re.ASCII)
_DIGITS = re.compile(r"^\d+$", re.ASCII)
#: Digits of a bare ``since`` at most (Unix seconds past that are centuries ahead).
MAX_SINCE_DIGITS = 30


def parse_filters(filters: Any) -> dict[str, set[str]]:
    """``["container=web", "type=died", ...]`` or ``{key: value | [values]}``
    -> {canonical key: {values}}.

    Raises: InvalidArgument (an unknown key, a spec without ``=``, a value
    that is not a string)."""
    if filters is None:
        return {}
    pairs: list[tuple[Any, Any]] = []
    if isinstance(filters, dict):
        for key, value in filters.items():
            pairs.extend((key, v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    elif isinstance(filters, (list, tuple)):
        for spec in filters:
            if not isinstance(spec, str) or "=" not in spec:
                raise errors.InvalidArgument(f"filter {spec!r} is not KEY=VALUE",
                                             hint=f"keys: {', '.join(sorted(FILTER_KEYS))}")
            pairs.append(tuple(spec.split("=", 1)))
    else:
        raise errors.InvalidArgument("filters must be a list of KEY=VALUE strings or a map")
    out: dict[str, set[str]] = {}
    for key, value in pairs:
        canon = FILTER_KEYS.get(key) if isinstance(key, str) else None
        if canon is None:
            raise errors.InvalidArgument(f"unknown events filter {key!r}",
                                         hint=f"keys: {', '.join(sorted(FILTER_KEYS))}")
        if not isinstance(value, str) or not value:
            raise errors.InvalidArgument(f"filter {key}: the value must be a non-empty string")
        out.setdefault(canon, set()).add(value)
    return out


def _check_fields(event: dict) -> dict:
    """``event`` without its known optional fields of a type or range no
    agent sends (each logged and dropped, not refused: some come from
    inside a container, e.g. an exit status its root wrote, and a refused
    batch would be sent again for ever, holding back every later event of
    the host); sizes are cut by _kept_fields."""
    bad = []
    for key, ok in (("image", lambda v: v is None or isinstance(v, str)),
                    ("exit_code", lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)
                                                          and -2 ** 31 <= v < 2 ** 31)),
                    ("oom_killed", lambda v: isinstance(v, bool)),
                    ("count", lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 31),
                    ("command", lambda v: isinstance(v, list) and all(isinstance(w, str) for w in v))):
        if key in event and not ok(event[key]):
            bad.append(key)
    if not bad:
        return event
    log.warning("agent event %s of %s: dropped %s, not what an agent sends", event.get("index"),
                event.get("container"), ", ".join(bad))
    return {k: v for k, v in event.items() if k not in bad}


def _kept_fields(event: dict) -> dict:
    """What the hub keeps of a checked agent event: the AGENT_FIELDS but
    index and at (any other field is dropped), strings cut to
    MAX_FIELD_CHARS, a command to MAX_COMMAND_WORDS words (so at most
    about 5 KB an event)."""
    doc = {k: event[k] for k in AGENT_FIELDS if k in event and k not in ("index", "at", "host")}
    if isinstance(doc.get("image"), str):
        doc["image"] = doc["image"][:MAX_FIELD_CHARS]
    if "command" in doc:
        doc["command"] = [w[:MAX_FIELD_CHARS] for w in doc["command"][:MAX_COMMAND_WORDS]]
    return doc


def matches(event: dict, filters: dict[str, set[str]]) -> bool:
    """Whether ``event`` passes every key of ``filters`` (any of its values)."""
    for key, values in filters.items():
        if key == "container":
            have = {event.get("container"), event.get("name")}
        elif key == "image":
            image = event.get("image")
            have = {image, image.split("@")[0].split(":")[0]} if isinstance(image, str) else set()
        else:
            have = {event.get(key)}
        if not have & values:
            return False
    return True


class EventLog:
    """Fleet events in ``store`` (see the module doc).

    Args:
        store: the hub's store (its ``events`` section), or None for
            events kept in memory only (the last max_events; a store
            without the events methods, e.g. etcd's until it has them).
        max_events, max_age_s: retention (count; seconds) of the hub's own
            events (in memory: of all).
        max_host_events: retention (count) of each host's agent events.
        max_agent_events: retention (count) of all hosts' agent events
            together (the largest sources cut first).

    Retention is per source (store.event_source): the hub's own events
    (host_added, placed, ...) keep ``max_events``, each host's agent
    events ``max_host_events``, apart, and all go after ``max_age_s``; so
    a host that floods (its key held by someone else, a buggy agent)
    pushes out only its own older events.  The fleet index stays one
    sequence (with holes where a source was pruned); ``since`` before
    what the hub's own count or the age limit dropped is EventsExpired (a
    host's events pushed out by its own count are that host's loss: they
    do not fail others' queries), and a follower is EventsExpired when
    pruning drops any event it had not read yet.
    """

    def __init__(self, store=None, *, max_events: int = MAX_EVENTS, max_age_s: float = MAX_AGE_SECONDS,
                 max_host_events: int = MAX_HOST_EVENTS, max_agent_events: int = MAX_AGENT_EVENTS):
        self.store = store
        self.max_events = max_events
        self.max_host_events = max_host_events
        self.max_agent_events = max_agent_events
        self.max_age_s = max_age_s
        self._memory: collections.deque = collections.deque(maxlen=max_events)  # store None only
        self._pending: collections.deque = collections.deque()  # refused by the store, oldest first
        #: one append at a time: an etcd store's append yields, and a second
        #: append sending the pending events the first is still writing
        #: would write them twice
        self._append_lock = gevent.lock.Semaphore()
        self._stored: dict[int, dict] = {}  # id(sent doc) -> stored event, of the last append (see _append)
        self.lost = 0  # dropped past MAX_PENDING
        self._appends = 0
        self.followers = 0  # follow() generators open now
        self._cursors: dict[str, int] = {}  # host -> agent index taken in (the store's, without a store)
        self._changed = gevent.event.Event()
        self.refused = 0  # agent events naming a container the hub places on another host (ingest)
        self._last_at = 0.0  # the newest event's at (_now)
        if store is not None:
            self._prune()
            last = self.store.events_bounds()["last"]
            newest = self.store.events_after(last - 1, 1) if last else []
            self._last_at = float(newest[0]["at"]) if newest else 0.0

    # ------------------------------------------------------------ writing
    def add(self, kind: str, **detail) -> dict | None:
        """Record a hub event {at (now), type, kind, **detail} (``name``
        also as ``container``).  Best effort: a store that refuses it (a
        full disk) keeps it pending, written with the next one that goes.
        Returns: the stored event (with its index), or None when pending."""
        doc = {"at": self._now(), "type": kind, "kind": kind, **detail}
        if "name" in doc and "container" not in doc:
            doc["container"] = doc["name"]
        stored = self._append([doc])
        return stored[-1] if stored else None

    def ingest(self, host: str, events: list, head: int | None = None,
               place_of: Callable[[str], str | None] | None = None) -> int:
        """Take an agent's container events (agents.events) in: those above
        the host's cursor, once each, in its index order.  ``head`` is the
        agent's newest index: one below the cursor means a jump undone or a
        journal that started over (see below).

        What a host sends is checked before anything is taken: at most
        MAX_INGEST events, each a map with an integer index (1 to
        MAX_AGENT_INDEX, each above the one before it in the batch, none
        above ``head``), a finite number ``at``, a type an agent emits
        (agents.events.EVENT_TYPES), a valid container name, and the
        AGENT_FIELDS agents send of their types (_check_fields).  Only
        AGENT_FIELDS are kept, strings cut (_kept_fields).  An event naming
        a container unknown to the hub is still recorded (a ``destroyed``
        arrives after the hub forgot the row): retention per host (see
        EventLog) bounds what such events can push out.

        A jump (the first new index past cursor + 1) is taken: an agent's
        journal retention may have dropped events the hub never got, and
        refusing would stop that host's events for good.  It is recorded
        (hub event ``agent_events_gap`` {host, after, first}), and the
        cursor the first jump since the journal began jumped from is kept
        as the host's floor (FLOOR_SUFFIX; 0: none).  A later head
        below the cursor but at or above the floor is that jump undone (an
        index a buggy or forged call sent past the agent's real journal):
        the cursor goes back to the floor, so the host's real events are
        neither lost nor taken twice (before, the cursor went to 0 and the
        agent sent its whole journal again).  A head below the floor is a
        journal that started over (a new state dir): cursor and floor go
        to 0.  A host's key moves its own cursor only: the fleet index is
        the hub's own sequence.  ``place_of(container)`` (the hub's placement:
        the host it places the container on, None when it knows none) keeps
        a host from speaking for another's containers: an event naming a
        container the hub places on another host is not recorded (its index
        is still passed, so the agent goes on; counted in ``refused``), one
        naming a container unknown to the hub is recorded with
        ``unknown_to_hub: true``.  An event's ``at`` in the log is the
        hub's receive time (``_now``: the log's times rise with its index,
        whatever the agents' clocks say); the agent's own is ``agent_at``.

        Returns: the host's cursor (the last agent index taken in).
        Raises: InvalidArgument (a check above failed: nothing was taken),
        StoreError (nothing was taken)."""
        if not isinstance(events, list) or len(events) > MAX_INGEST:
            raise errors.InvalidArgument(f"events must be a list of at most {MAX_INGEST}")
        if head is not None and (isinstance(head, bool) or not isinstance(head, int)
                                 or not 0 <= head <= MAX_AGENT_INDEX):
            raise errors.InvalidArgument(f"head must be an index (an integer from 0 to {MAX_AGENT_INDEX}), "
                                         f"not {head!r}")
        previous = 0
        for event in events:
            if not (isinstance(event, dict) and isinstance(event.get("index"), int)
                    and not isinstance(event.get("index"), bool)
                    and isinstance(event.get("at"), (int, float)) and not isinstance(event.get("at"), bool)
                    and isinstance(event.get("type"), str)):
                raise errors.InvalidArgument("an agent event needs an integer index, at and type")
            if not math.isfinite(event["at"]):
                raise errors.InvalidArgument(f"an agent event's at must be a finite number, not {event['at']!r}")
            if event["type"] not in AGENT_EVENT_TYPES:
                raise errors.InvalidArgument(f"event type {event['type']!r} is not an agent's",
                                             hint=f"types: {', '.join(AGENT_EVENT_TYPES)}")
            if not isinstance(event.get("container"), str) or not event["container"]:
                raise errors.InvalidArgument("an agent event names its container (a non-empty string)")
            validate.container_name(event["container"])
            if event["index"] > MAX_AGENT_INDEX:
                raise errors.InvalidArgument(f"agent event index {event['index']} is past {MAX_AGENT_INDEX}")
            if event["index"] <= previous:
                raise errors.InvalidArgument(f"agent event indexes must rise in a batch "
                                             f"({event['index']} after {previous})")
            if head is not None and event["index"] > head:
                raise errors.InvalidArgument(f"agent event index {event['index']} is past the head {head}")
            previous = event["index"]
        cursor, floor = self._cursor(host), None  # the floor is read only when needed
        if head is not None and head < cursor:
            floor = self._cursor(host + FLOOR_SUFFIX)
            if 0 < floor <= head:
                log.warning("host %s: head %d is below its cursor %d, which jumped from %d: back to %d",
                            host, head, cursor, floor, floor)
                cursor = floor
            else:
                log.warning("host %s: its event journal started over (head %d < %d)", host, head, cursor)
                cursor = floor = 0
                self._set_cursor(host + FLOOR_SUFFIX, 0)
            self._set_cursor(host, cursor)
        first = next((e["index"] for e in events if e["index"] > cursor), None)
        if first is not None and first > cursor + 1:
            log.warning("host %s: its events jump from %d to %d", host, cursor, first)
            if floor is None:
                floor = self._cursor(host + FLOOR_SUFFIX)
            if not floor:  # the first jump since the journal began: later ones keep it
                self._set_cursor(host + FLOOR_SUFFIX, cursor)
            self.add("agent_events_gap", host=host, after=cursor, first=first)
        docs, top, places = [], cursor, {}
        for event in events:
            if event["index"] <= top:
                continue
            top = event["index"]
            doc = _kept_fields(_check_fields(event))
            name = doc["container"]
            if place_of is not None:
                if name not in places:
                    places[name] = place_of(name)
                if places[name] is None:
                    doc["unknown_to_hub"] = True
                elif places[name] != host:
                    self.refused += 1
                    log.warning("host %s sent a %s event of %s, which the hub places on %s: not recorded",
                                host, doc["type"], name, places[name])
                    continue
            docs.append({**doc, "at": self._now(), "agent_at": event["at"], "kind": doc["type"], "name": name,
                         "host": host, "agent_index": event["index"], "source": "agent"})
        if self.store is None:
            if docs:
                self._append(docs)
        elif docs or top != cursor:
            self.store.events_append(docs, host=host, agent_index=top)
            self._counted(len(docs))
            self._wake()
        self._cursors[host] = top
        return top

    def _cursor(self, key: str) -> int:
        return self.store.event_cursor(key) if self.store is not None else self._cursors.get(key, 0)

    def _set_cursor(self, key: str, value: int) -> None:
        if self.store is not None:
            self.store.set_event_cursor(key, value)
        self._cursors[key] = value

    def _now(self) -> float:
        """The hub's time for an event it records now: never before the
        last one it recorded (a clock stepped back keeps the order)."""
        self._last_at = max(time.time(), self._last_at)
        return self._last_at

    def _append(self, docs: list[dict]) -> list[dict]:
        if self.store is None:
            base = self._memory[-1]["index"] if self._memory else 0
            out = [{**d, "index": base + i + 1} for i, d in enumerate(docs)]
            self._memory.extend(out)
            self._wake()
            return out
        self._pending.extend(docs)
        while len(self._pending) > MAX_PENDING:
            self._pending.popleft()
            self.lost += 1
        with self._append_lock:
            mine = {id(d) for d in docs}
            if not any(id(d) in mine for d in self._pending):
                # an append that ran while this one waited wrote them (it
                # sent everything pending): answer with what it stored
                return [self._stored[i] for i in (id(d) for d in docs) if i in self._stored]
            batch = list(self._pending)
            try:
                out = self.store.events_append(batch)
            except errors.StoreError as exc:
                log.warning("fleet events: %d not written yet (%s)", len(batch), exc)
                return []
            sent = {id(d) for d in batch}
            while self._pending and id(self._pending[0]) in sent:
                self._pending.popleft()
            # the stored copies by the identity of what was sent, for the
            # appends waiting on the lock (their docs are still referenced)
            self._stored = {id(d): o for d, o in zip(batch, out)}
        self._counted(len(out))
        self._wake()
        return [self._stored[id(d)] for d in docs if id(d) in self._stored]

    def _counted(self, n: int) -> None:
        self._appends += n
        if self._appends >= PRUNE_EVERY:
            self._appends = 0
            self._prune()

    def _prune(self) -> None:
        try:
            gone = self.store.events_prune(self.max_events, self.max_age_s, max_per_host=self.max_host_events,
                                           max_agent_events=self.max_agent_events)
        except errors.StoreError as exc:
            log.warning("fleet events: retention pass failed (%s)", exc)
            return
        if gone:
            log.info("fleet events: %d past retention dropped", gone)

    def _wake(self) -> None:
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

    # ------------------------------------------------------------ reading
    def _bounds(self) -> dict:
        if self.store is None:
            last = self._memory[-1]["index"] if self._memory else 0
            first = self._memory[0]["index"] if self._memory else last + 1
            return {"first": first, "last": last, "pruned_index": first - 1, "pruned_at": 0.0}
        return self.store.events_bounds()

    def _marks(self) -> dict[str, int]:
        """{retention source: the newest index its pruning dropped}."""
        if self.store is None:
            return {"hub": self._bounds()["pruned_index"]}
        return self.store.events_source_marks()

    def _after(self, index: int, limit: int) -> list[dict]:
        if self.store is None:
            return [e for e in self._memory if e["index"] > index][:limit]
        return self.store.events_after(index, limit)

    def parse_since(self, since: Any) -> int:
        """The fleet index to read after, for ``since`` (see the module doc).

        Raises: InvalidArgument (bad form, a time or index in the future),
        EventsExpired (events after it were dropped by retention)."""
        bounds = self._bounds()
        if isinstance(since, bool) or not isinstance(since, (int, float, str)):
            raise errors.InvalidArgument("since must be an index, a time or a duration")
        if isinstance(since, str):
            text = since.strip()
            if len(text) > 64 or (_DIGITS.match(text) and len(text) > MAX_SINCE_DIGITS):
                raise errors.InvalidArgument(f"since {text[:40]!r}... is too long: want an index, @UNIX "
                                             "seconds, an ISO 8601 time or a duration like 10m")
            if _DIGITS.match(text) and int(text) >= UNIX_FROM:
                text = "@" + text  # 10 digits or more: Unix seconds (Docker's --since)
            elif _DECIMAL.match(text):
                text = "@" + text
            if _DIGITS.match(text):
                index = int(text)
                if index == 0:  # from the oldest kept (of every source: see EventLog)
                    return 0
                if index > bounds["last"]:
                    raise errors.InvalidArgument(f"since index {index} is in the future (the newest is "
                                                 f"{bounds['last']})")
                if index < bounds["pruned_index"]:
                    raise errors.EventsExpired(f"events after index {index} are gone (retention)",
                                               hint=f"resume from {bounds['pruned_index']}")
                return index
            at = self._parse_time(text)
        else:
            at = float(since)
        if not math.isfinite(at):
            raise errors.InvalidArgument(f"since {since!r} is not a finite time")
        if at <= 0:  # from the oldest kept
            return 0
        if at > time.time() + 1.0:
            raise errors.InvalidArgument(f"since {since!r} is in the future")
        return self._expired_or(at, bounds)

    def _expired_or(self, at: float, bounds: dict) -> int:
        if bounds["pruned_index"] and at < bounds["pruned_at"]:
            raise errors.EventsExpired(f"events after {at:.3f} are gone (retention keeps events from "
                                       f"{bounds['pruned_at']:.3f} on)", hint=f"resume from {bounds['pruned_index']}")
        if self.store is None:
            return max([e["index"] for e in self._memory if e["at"] <= at], default=0)
        return self.store.events_index_at(at)

    @staticmethod
    def _parse_time(text: str) -> float:
        m = _DURATION.match(text)
        if m:
            return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
        if text.startswith("@"):
            if re.fullmatch(r"[0-9]+(\.[0-9]*)?", text[1:], re.ASCII):
                return float(text[1:])
        else:
            try:
                when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
                if when.tzinfo is None:
                    when = when.replace(tzinfo=datetime.timezone.utc)
                return when.timestamp()
            except (ValueError, OverflowError):
                pass
        raise errors.InvalidArgument(f"since {text!r}: want an index, @UNIX seconds, an ISO 8601 time or a "
                                     "duration like 10m")

    def query(self, since: Any = 0, filters: Any = None, limit: int = MAX_LIST,
              max_bytes: int = MAX_LIST_BYTES) -> list[dict]:
        """The matching events after ``since``, oldest first, at most
        ``limit`` of them and ``max_bytes`` of their JSON (the newest ones
        when more match; an answer never fails for its size: page on with
        events_follow from an index, which gives every event).
        Raises: as parse_since and parse_filters."""
        want = parse_filters(filters)
        cursor = self.parse_since(since)
        out: collections.deque = collections.deque()
        size = 0
        while True:
            batch = self._after(cursor, BATCH)
            if not batch:
                return [e for e, _ in out]
            for event in batch:
                if matches(event, want):
                    out.append((event, len(json.dumps(event, default=str)) + 2))
                    size += out[-1][1]
                    while len(out) > limit or size > max_bytes:
                        size -= out.popleft()[1]
            cursor = batch[-1]["index"]

    def follow(self, since: Any = 0, filters: Any = None) -> Iterator[dict]:
        """The matching events after ``since``, then each as it is added.
        Raises (also while iterating): as query; EventsExpired when the
        follower fell so far behind that retention dropped what it had
        not read yet."""
        want = parse_filters(filters)
        cursor = self.parse_since(since)
        start = self._marks()  # what retention had dropped when it began (not missed: never readable)
        self.followers += 1
        try:
            while True:
                changed = self._changed
                batch = self._after(cursor, BATCH)
                if not batch:
                    changed.wait()
                    continue
                if any(mark > cursor and mark > start.get(src, 0) for src, mark in self._marks().items()):
                    raise errors.EventsExpired(f"this follower fell behind retention after index {cursor}",
                                               hint="read faster, or resume with --since")
                for event in batch:
                    cursor = event["index"]
                    if matches(event, want):
                        yield event
        finally:
            self.followers -= 1

    # ------------------------------------------------------------ older callers
    def since(self, at: float) -> list[dict]:
        """The events after ``at`` (Unix s), oldest first (at most MAX_LIST)."""
        return self.query(float(at))

    def kinds(self) -> list[str]:
        """Every kept event's type, oldest first (at most MAX_LIST)."""
        return [e["type"] for e in self.query(0)]
