"""A host's container events: a journal on disk with a monotonically
increasing index, the agent's ``events`` / ``events_follow`` methods, and the
shipper that hands them to the hub.

Events (Docker's, in our tense): ``created``, ``started``, ``died``
(``exit_code``, ``oom_killed``), ``oom`` (just before its ``died``),
``restarted`` (``count``; a ``started`` follows), ``stopped``, ``destroyed``,
``exec_started`` / ``exec_ended`` (``exit_code``).  Each is ``{index, at
(Unix s), type, container, host, image?, ...}``.  The agent records them as
it acts (agents.containers) and as the supervisor finds a container's
command ended (its exit status, and the cgroup's oom_kill counter,
agents.supervisor).

On disk (``STATE_DIR/events/``): segments ``seg-<first index>.log`` of JSON
lines, each preallocated at SEGMENT_BYTES (zeros really written), so an
append writes over blocks the file already owns and a full disk does not
stop the journal; one spare segment is kept ready for the next roll.  Each
append is fsynced (in the thread pool).  An append that still fails
(no spare left on a full disk, an I/O error) keeps the event in memory,
counted in ``unsaved``, and is written by the next append or ``flush``;
followers on this host see it at once, the hub once it is written (so an
index the hub has seen is never reused by a restarted agent).  Retention:
whole segments go, oldest first, once the rest hold ``max_events`` or the
segment's newest event is older than ``max_age_s``.  The index goes on
from the last written one across restarts.
"""
from __future__ import annotations

import collections
import errno
import json
import logging
import os
import re
import time
from typing import Callable

import gevent
import gevent.event

from agents.background import BackgroundLoop
from dcctl import errors, wire
from dcctl.wire import expose

log = logging.getLogger(__name__)

EVENT_TYPES = ("created", "started", "died", "oom", "restarted", "stopped", "destroyed", "exec_started",
               "exec_ended")
MAX_EVENTS = 10_000
MAX_AGE_SECONDS = 7 * 86400.0
SEGMENT_BYTES = 256 << 10
#: Events kept in memory while the disk refuses them; past this the oldest is dropped (counted in ``lost``).
MAX_UNSAVED = 1000
#: Events per answer of ``events`` and per batch shipped to the hub.
BATCH = 500
_SEG_RE = re.compile(r"^seg-(\d{12})\.log$")


def _preallocate(path: str, size: int) -> None:
    """A file of ``size`` zero bytes really written (blocks taken), made atomically."""
    part = path + ".part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        chunk = bytes(64 << 10)
        left = size
        while left > 0:
            left -= os.write(fd, chunk[:min(left, len(chunk))])
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(part)
        except OSError:
            pass
        raise
    os.close(fd)
    os.replace(part, path)


class EventJournal:
    """The journal of one host's container events (see the module doc).

    Args:
        state_dir: the agent's state dir (the journal is its ``events/``).
        host: this host's name, put in every event.
        max_events, max_age_s: retention (count; seconds).
        segment_bytes: the size of each segment file.
    """

    def __init__(self, state_dir: str, host: str, *, max_events: int = MAX_EVENTS,
                 max_age_s: float = MAX_AGE_SECONDS, segment_bytes: int = SEGMENT_BYTES,
                 max_unsaved: int = MAX_UNSAVED):
        self.dir = os.path.join(state_dir, "events")
        self.host = host
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.segment_bytes = segment_bytes
        self.max_unsaved = max_unsaved
        self._refused = False  # the last write failed (logged once until one succeeds)
        self._flushing = False  # a greenlet is writing (flush)
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._kept: collections.deque = collections.deque()  # retained events, oldest first
        self._segments: list[tuple[int, str]] = []  # (first index, path), oldest first
        self._offset = 0  # where the newest segment's next line goes
        self._unsaved: collections.deque = collections.deque()
        self.lost = 0  # events dropped while the disk refused them (past max_unsaved)
        self._saved_index = 0  # the newest index on disk
        self._changed = gevent.event.Event()
        self._load()
        self.next_index = self._saved_index + 1

    # ------------------------------------------------------------ disk
    def _load(self) -> None:
        for entry in sorted(os.listdir(self.dir)):
            path = os.path.join(self.dir, entry)
            if entry.endswith(".part"):
                os.unlink(path)
                continue
            m = _SEG_RE.match(entry)
            if m:
                self._segments.append((int(m.group(1)), path))
        for first, path in self._segments:
            with open(path, "rb") as f:
                data = f.read()
            end = data.find(b"\0")
            data = data if end < 0 else data[:end]
            good = data.rfind(b"\n") + 1
            for line in data[:good].splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict) and isinstance(event.get("index"), int) \
                        and event["index"] > self._saved_index:
                    self._kept.append(event)
                    self._saved_index = event["index"]
            if path == self._segments[-1][1]:
                self._offset = good
                if good < len(data):  # a line cut short by a crash: zero it
                    with open(path, "r+b") as f:
                        f.seek(good)
                        f.write(bytes(len(data) - good))

    def _append_blocking(self, lines: list[bytes], first_index: int) -> int:
        """Write as many of ``lines`` (the first one's index ``first_index``)
        as fit the newest segment, rolling to a new one when none fits;
        returns how many were written (fsynced).  Raises: OSError."""
        if len(lines[0]) > self.segment_bytes:
            raise OSError(errno.EFBIG, "an event larger than a segment")
        if not self._segments or self._offset + len(lines[0]) > self.segment_bytes:
            self._roll(first_index)
        room, n = self.segment_bytes - self._offset, 0
        while n < len(lines) and len(lines[n]) <= room:
            room -= len(lines[n])
            n += 1
        data = b"".join(lines[:n])
        fd = os.open(self._segments[-1][1], os.O_WRONLY)
        try:
            os.pwrite(fd, data, self._offset)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._offset += len(data)
        return n

    def _roll(self, first_index: int) -> None:
        path = os.path.join(self.dir, f"seg-{first_index:012d}.log")
        spare = os.path.join(self.dir, "spare")
        if os.path.exists(spare):
            os.replace(spare, path)
        else:
            _preallocate(path, self.segment_bytes)
        self._segments.append((first_index, path))
        self._offset = 0
        try:
            _preallocate(spare, self.segment_bytes)
        except OSError as exc:  # best effort: the next roll makes its own
            log.warning("events: no spare segment (%s)", exc)
        self._prune()

    def _prune(self) -> None:
        now = time.time()
        while len(self._segments) > 1:
            first, path = self._segments[0]
            nxt = self._segments[1][0]
            newest_at = next((e["at"] for e in reversed(self._kept) if e["index"] < nxt), None)
            kept_after = sum(1 for e in self._kept if e["index"] >= nxt)
            if kept_after < self.max_events and (newest_at is None or now - newest_at < self.max_age_s):
                break
            os.unlink(path)
            self._segments.pop(0)
            while self._kept and self._kept[0]["index"] < nxt:
                self._kept.popleft()

    def flush(self) -> int:
        """Write the events not written yet (the disk refused them before);
        returns how many are still unsaved.  One greenlet writes at a time
        (a write yields to the thread pool): a flush called meanwhile
        returns at once, the writing one takes its events too."""
        if self._flushing:
            return len(self._unsaved)
        self._flushing = True
        try:
            return self._flush()
        finally:
            self._flushing = False

    def _flush(self) -> int:
        while self._unsaved:
            batch = list(self._unsaved)[:BATCH]
            lines = [json.dumps(e, sort_keys=True).encode() + b"\n" for e in batch]
            try:
                n = gevent.get_hub().threadpool.apply(self._append_blocking, (lines, batch[0]["index"]))
            except OSError as exc:
                if not self._refused:
                    log.warning("events: not written yet (%s); kept in memory, up to %d", exc, self.max_unsaved)
                    self._refused = True
                break
            if self._refused:
                log.info("events: written again")
                self._refused = False
            for _ in range(n):
                self._unsaved.popleft()
            self._saved_index = batch[n - 1]["index"]
            self._wake()
        return len(self._unsaved)

    # ------------------------------------------------------------ record and read
    def record(self, type_: str, container: str, **detail) -> dict:
        """Record an event now; returns it (with its index)."""
        event = {"index": self.next_index, "at": time.time(), "type": type_, "container": container,
                 "host": self.host, **detail}
        self.next_index += 1
        self._kept.append(event)
        self._unsaved.append(event)
        while len(self._unsaved) > self.max_unsaved:
            self._unsaved.popleft()
            self.lost += 1
        self.flush()
        self._wake()
        return event

    def _wake(self) -> None:
        changed, self._changed = self._changed, gevent.event.Event()
        changed.set()

    @property
    def unsaved(self) -> int:
        """Events recorded but not written yet."""
        return len(self._unsaved)

    def head(self) -> int:
        """The newest index (0: none yet)."""
        return self.next_index - 1

    def first(self) -> int:
        """The oldest retained index (head + 1 when none is kept)."""
        return self._kept[0]["index"] if self._kept else self.next_index

    def since(self, index: int, limit: int = BATCH, saved_only: bool = False) -> list[dict]:
        """Retained events with an index above ``index``, oldest first, at
        most ``limit``; ``saved_only``: those written to disk only."""
        top = self._saved_index if saved_only else self.head()
        out = []
        for event in self._kept:  # small: at most max_events
            if index < event["index"] <= top:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def wait(self, timeout_s: float | None) -> bool:
        """Wait for the next event (or write); True if one came."""
        return self._changed.wait(timeout_s)

    def check_since(self, since: int) -> None:
        """Raises InvalidArgument (negative, or past the head: the future)
        and EventsExpired (events after ``since`` were dropped by retention)."""
        if since < 0 or since > self.head():
            raise errors.InvalidArgument(f"since index {since} is not in 0..{self.head()} (the newest)")
        if since + 1 < self.first() and self.first() > 1:
            raise errors.EventsExpired(f"events after index {since} are gone (retention keeps {self.first()} on)",
                                       hint=f"resume from {self.first() - 1}")


class EventMethods:
    """The agent's event methods (a mixin of AgentService; uses ``self.m.events``)."""

    @expose(access="read")
    def events(self, since: int = 0, limit: int = BATCH) -> list:
        """This host's container events after index ``since``, oldest first.

        Args: since: an index (0: from the oldest kept); limit: at most this
        many (1..BATCH).
        Returns: [{index, at, type (created, started, died, oom, restarted,
        stopped, destroyed, exec_started, exec_ended), container, host,
        image?, exit_code?, oom_killed?, count?}].
        Raises: InvalidArgument (since past the newest index, a bad limit),
        EventsExpired (retention dropped events after ``since``).
        """
        if not 1 <= limit <= BATCH:
            raise errors.InvalidArgument(f"limit must be 1..{BATCH}")
        self.m.events.check_since(since)
        return self.m.events.since(since, limit)

    @expose(stream=True, access="read")
    def events_follow(self, since: int = 0) -> dict:
        """A stream of this host's container events after index ``since``:
        the kept ones, then each as it happens.

        Returns (a stream): one event per item, as ``events`` lists them.

        Raises: as ``events``; SlowConsumer (the reader took no events for
        the wire's stall limit: resume from the last index seen).
        """
        journal = self.m.events
        journal.check_since(since)
        cursor = since
        while True:
            batch = journal.since(cursor, BATCH)
            if not batch:
                journal.wait(None)
                continue
            for event in batch:
                yield event
                cursor = event["index"]


class EventShipper(BackgroundLoop):
    """Hands this host's written events to the hub (``host_events``): it
    asks the hub's cursor (the last index it has for this host), sends what
    follows in batches, then waits for new ones.  Best effort: a hub that
    is down is retried; nothing is lost while the journal keeps it."""

    def __init__(self, journal: EventJournal, hub: "str | Callable[[], str]", host: str, keys=None,
                 retry_s: float = 2.0):
        self.journal = journal
        self._hub = hub  # an endpoint, or what gives the endpoint to use now (HubLink.endpoint)
        self.host = host
        self.keys = keys
        self.retry_s = retry_s
        self.cursor: int | None = None
        self._last_error: str | None = None

    @property
    def hub(self) -> str:
        """The hub endpoint events go to now."""
        return self._hub() if callable(self._hub) else self._hub

    def _loop(self) -> None:
        while True:
            hub = self.hub  # the one this round uses: the log names it, not the one the link moved to since
            try:
                with wire.connect(hub, timeout_s=10.0, keys=self.keys) as client:
                    self._ship(client)
            except Exception as exc:  # noqa: BLE001 - best effort: retried (a bug is logged with its traceback)
                if not isinstance(exc, errors.DcError):
                    log.exception("events to hub %s failed; retrying", hub)
                text = f"{type(exc).__name__}: {exc}"
                if text != self._last_error:
                    log.warning("events to hub %s: %s; retrying", hub, text)
                    self._last_error = text
            gevent.sleep(self.retry_s)

    def _ship(self, client) -> None:
        journal = self.journal
        self.cursor = client.call("host_events", self.host, [], journal.head())["cursor"]
        while True:
            journal.flush()
            batch = journal.since(self.cursor, BATCH, saved_only=True)
            if batch:
                self.cursor = client.call("host_events", self.host, batch, journal.head())["cursor"]
                self._last_error = None
                continue
            journal.wait(5.0)
