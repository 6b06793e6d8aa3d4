"""The hub's event methods (a mixin of HubService): ``events`` (a list),
``events_follow`` (a stream) and ``host_events`` (agents ship their
container events).  The log itself is hub/events.py."""
from __future__ import annotations

from dcctl import errors, wire
from dcctl.wire import expose
from hub import events as fleet_events


class EventMethods:
    """Fleet event methods of HubService; they use the hub's ``events_log`` and ``store``."""

    @expose(access="read")
    def events(self, since: str | float | int = 0, filters: list | dict | None = None) -> list:
        """Fleet events after ``since``, oldest first (at most the newest
        10000 that match, and the newest that fit 16 MB of JSON,
        fleet_events.MAX_LIST_BYTES: the call never fails for its size;
        events_follow from an index gives every event).

        Args:
            since: an index (a string of digits below 1000000000: the
                events after it); Unix seconds (``@UNIX``, a string of 10
                digits or more, 1000000000 and above, or with a fraction
                such as ``1796131100.5``, or a JSON number); an ISO 8601
                time; a duration ago (``10m``, ``2h``); 0: from the oldest kept.
            filters: ["KEY=VALUE", ...] or {KEY: VALUE | [VALUES]}; keys
                container (name), host, type (event, kind), image; the same
                key ORs, different keys AND (Docker's).

        Returns: [{index, at, type, kind (= type), host?, container?, ...}]:
        the hub's events (host_lost, host_back, placed, rescheduled,
        stale_copy_removed, route_added, ...) and the agents' container
        events (created, started, died {exit_code, oom_killed}, oom,
        restarted, stopped, destroyed, exec_started, exec_ended; with
        agent_index, source "agent").
        Raises: InvalidArgument (an unknown filter key, a bad or future
        since), EventsExpired (since is before what retention kept).
        """
        return self.events_log.query(since, filters)

    @expose(stream=True, access="read")
    def events_follow(self, since: str | float | int = 0, filters: list | dict | None = None) -> dict:
        """A stream of the fleet events after ``since`` (those kept), then of
        each as it happens; arguments and items as ``events``.  Resuming with
        ``since`` = the last index seen gives every later event exactly once.

        Returns (a stream): one event per item, as ``events`` lists them.

        Raises: as ``events``; SlowConsumer (the reader took no events for
        the hub's stall limit: resume from the last index seen);
        EventsExpired (a follower so far behind that retention dropped what
        it had not read).
        """
        return self.events_log.follow(since, filters)

    @expose(access="agent")
    def host_events(self, name: str, events: list, head: int | None = None) -> dict:
        """Called by agents: their container events after the hub's cursor
        for that host (agents.events.EventShipper); each agent index is
        taken once.  ``events`` [] asks for the cursor only; ``head`` is the
        agent's newest index (below the cursor: its journal started over).

        The hub checks what a host sends (EventLog.ingest): container events
        of the types agents emit, indexes that rise and stay at or below
        ``head``; an event naming a container the hub places on another
        host is not recorded (its index is passed), one naming a container
        the hub does not know is recorded with ``unknown_to_hub: true``.
        Only the fields agents send are kept (fleet_events.AGENT_FIELDS;
        others dropped, strings cut to 256 chars, a command to 16 words);
        ``at`` must be finite.  Each host's events are retained apart
        (fleet_events.MAX_HOST_EVENTS), so a flood pushes out only that
        host's own.  The event's ``at`` in the fleet log is the hub's receive time; the
        agent's is kept as ``agent_at``.  An index that jumps past the
        cursor is taken and recorded (``agent_events_gap``); a later head
        below the cursor puts it back where the host's events stood before
        its first jump, or at 0 for a journal that started over
        (EventLog.ingest), so a jump loses and repeats no real event.  A
        key moves its own host's cursor only.

        Returns: {cursor} (the last agent index the hub has for the host).
        Raises: NoSuchHost (not registered), Unauthorized (another host's
        key), InvalidArgument (a malformed event, a type no agent emits, an
        index that does not rise or is past ``head``, an index or head past
        2**53 - 1, over 1000 at once, an at that is not finite, an invalid
        container name; nothing is taken).  A known field of the wrong type
        or range is dropped from its event (hub.events._check_fields).
        """
        if not isinstance(events, list) or len(events) > fleet_events.MAX_INGEST:
            raise errors.InvalidArgument(f"at most {fleet_events.MAX_INGEST} events per call")
        caller = wire.current_caller()
        if self.store.host_state(name, caller.key if caller else "") is None:
            raise errors.NoSuchHost(f"host {name!r} is not registered")
        here: set | None = None

        def place_of(container: str) -> str | None:
            nonlocal here
            if here is None:  # one read of the host's rows per batch
                here = {row["name"] for row in self.store.containers(name)}
            if container in here:
                return name
            try:
                return self.store.container(container).get("host") or None
            except errors.NoSuchContainer:
                return None

        return {"cursor": self.events_log.ingest(name, events, head, place_of=place_of)}


__all__ = ["EventMethods", "fleet_events"]
