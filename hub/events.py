"""The hub's fleet events: the last MAX_EVENTS, in memory (a hub restart
starts a new list)."""
from __future__ import annotations

import collections
import time

MAX_EVENTS = 500


class EventLog:
    """Fleet events, oldest first, at most ``max_events``."""

    def __init__(self, max_events: int = MAX_EVENTS):
        self._recent: collections.deque = collections.deque(maxlen=max_events)

    def add(self, kind: str, **detail) -> None:
        """Record an event {at (Unix s, now), kind, **detail}."""
        self._recent.append({"at": time.time(), "kind": kind, **detail})

    def since(self, at: float) -> list[dict]:
        """The events after ``at`` (Unix s), oldest first."""
        return [e for e in self._recent if e["at"] > at]

    def kinds(self) -> list[str]:
        """Every kept event's kind, oldest first."""
        return [e["kind"] for e in self._recent]
