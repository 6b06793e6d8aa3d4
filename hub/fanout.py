"""Calling many hosts at once (broadcast) and one idle host (worker queue).

Broadcast: one greenlet per targeted host from a bounded pool, gathered with
a deadline; a slow, frozen or dead host is reported as ``timeout`` and never
delays the answer past it (the stragglers' greenlets are killed).  The hub's
own broadcast and fleet views take ``lean_broadcast``: the same results over
one dcctl.wire.fanout.FanoutClient (shared sockets, no client per host).

Worker queue (the ZeroMQ guide's load-balancing broker, built at the hub):
idle hosts wait in a FIFO; each call takes the host idle the longest, runs on
it, and puts it back.  A host runs at most one queued call at a time, so a
busy host never gets a second call while another is idle.  Callers wait for
an idle host up to their timeout.  If the host dies mid-call the caller gets
HostLost; calls marked idempotent are retried once on another host.
"""
from __future__ import annotations

import collections
import fnmatch
import time
from typing import Callable

import gevent
import gevent.pool
from gevent.event import Event

from dcctl import errors
from dcctl.wire.fanout import FanoutClient, Target

MAX_PARALLEL_CALLS = 256


def targets(hosts: list[dict], target: str | None) -> list[dict]:
    """Hosts matching ``target``: a glob on the host name (``host-*``), or
    ``label:KEY=VALUE``; None or "" means every host."""
    if not target:
        return list(hosts)
    if target.startswith("label:"):
        key, _, value = target[len("label:"):].partition("=")
        return [h for h in hosts if (h.get("labels") or {}).get(key) == value]
    return [h for h in hosts if fnmatch.fnmatchcase(h["name"], target)]


def broadcast(hosts: list[dict], call: Callable[[dict], object], timeout_s: float) -> dict:
    """Run ``call(host)`` on every host in parallel for up to ``timeout_s``.

    A call that raises reports ``error`` with the exception's class name
    (a wire error's, or any other's, e.g. TypeError); only a call still
    running at the deadline (or raising CallTimeout) is ``timeout``.

    Returns: {"summary": {targeted, ok, error, timeout, duration_s},
              "results": {host: {"status": "ok", "result": ...} |
                                 {"status": "error", "error": Name, "message": str} |
                                 {"status": "timeout"}}}
    """
    started = time.monotonic()
    pool = gevent.pool.Pool(MAX_PARALLEL_CALLS)
    results: dict[str, dict] = {}

    def one(host: dict) -> None:
        if host.get("state") not in (None, "alive"):
            results[host["name"]] = {"status": "error", "error": "Unreachable",
                                     "message": f"host is {host['state']}"}
            return
        try:
            results[host["name"]] = {"status": "ok", "result": call(host)}
        except errors.CallTimeout:
            results[host["name"]] = {"status": "timeout"}
        except Exception as exc:  # a wire error or any other: the host's error, never a timeout
            results[host["name"]] = {"status": "error", "error": type(exc).__name__, "message": str(exc)}

    greenlets = [pool.spawn(one, h) for h in hosts]
    gevent.joinall(greenlets, timeout=timeout_s)
    gevent.killall([g for g in greenlets if not g.ready()], block=False)
    return _gathered(hosts, results, started)


def lean_broadcast(fan: FanoutClient, hosts: list[dict], method: str, args: list, timeout_s: float,
                   server_pair: tuple[bytes, bytes] | None) -> dict:
    """``broadcast`` of ``method(*args)`` to the agents of ``hosts`` (store
    rows: name, state, endpoint, key) over the one FanoutClient ``fan``
    (dcctl.wire.fanout: no zerorpc client per host), with the same results
    and statuses: a host not alive, or whose row has a key but no tcp
    endpoint (or no key and no ipc endpoint), is an Unreachable error, as
    Agents.client makes it; a host that registered with a key is reached
    over CURVE with that key as the expected server key."""
    started = time.monotonic()
    results: dict[str, dict] = {}
    todo: list[Target] = []
    for h in hosts:
        if h.get("state") not in (None, "alive"):
            results[h["name"]] = {"status": "error", "error": "Unreachable", "message": f"host is {h['state']}"}
        elif h.get("key") and not server_pair:
            results[h["name"]] = {"status": "error", "error": "Unreachable",
                                  "message": f"host {h['name']} has a key but no CURVE endpoint the hub can verify"}
        else:
            todo.append(Target(h["name"], h["endpoint"], h["key"].encode() if h.get("key") else None))
    for name, (ok, value) in fan.call_many(todo, method, args, timeout_s).items():
        if ok:
            results[name] = {"status": "ok", "result": value}
        elif isinstance(value, errors.CallTimeout):
            results[name] = {"status": "timeout"}
        else:
            results[name] = {"status": "error", "error": type(value).__name__, "message": str(value)}
    return _gathered(hosts, results, started)


def _gathered(hosts: list[dict], results: dict[str, dict], started: float) -> dict:
    for h in hosts:
        results.setdefault(h["name"], {"status": "timeout"})
    counts = collections.Counter(r["status"] for r in results.values())
    return {"summary": {"targeted": len(hosts), "ok": counts["ok"], "error": counts["error"],
                        "timeout": counts["timeout"], "duration_s": round(time.monotonic() - started, 6)},
            "results": dict(sorted(results.items()))}


class WorkQueue:
    """Idle hosts in FIFO order; see the module doc for the guarantees."""

    def __init__(self):
        self._idle: collections.deque[str] = collections.deque()
        self._busy: set[str] = set()
        self._members: set[str] = set()
        self._changed = Event()
        # for the hub's metrics (hub/metrics.py): callers waiting for an idle
        # host now, hosts handed out, and the seconds callers waited in all
        self.waiting = 0
        self.acquired_total = 0
        self.wait_seconds_total = 0.0

    def set_members(self, alive: set[str]) -> None:
        """Make the alive hosts the members (new ones join as idle)."""
        for name in alive - self._members:
            if name not in self._busy:
                self._idle.append(name)
        self._members = set(alive)
        self._idle = collections.deque(h for h in self._idle if h in alive)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = Event()

    def acquire(self, timeout_s: float, exclude: set[str] = frozenset()) -> str:
        """Take the host idle the longest (not in ``exclude``).

        Raises: NoCapacity when no host becomes idle within ``timeout_s``."""
        started = time.monotonic()
        deadline = started + timeout_s
        self.waiting += 1
        try:
            while True:
                for name in list(self._idle):
                    if name not in exclude:
                        self._idle.remove(name)
                        self._busy.add(name)
                        self.acquired_total += 1
                        return name
                left = deadline - time.monotonic()
                if left <= 0:
                    raise errors.NoCapacity(
                        f"no idle host within {timeout_s:g} s ({len(self._busy)} busy, "
                        f"{len(self._members)} in the fleet)")
                self._changed.wait(left)
        finally:
            self.waiting -= 1
            self.wait_seconds_total += time.monotonic() - started

    def release(self, name: str) -> None:
        """Give a host back (to the end of the idle line) if still a member."""
        self._busy.discard(name)
        if name in self._members and name not in self._idle:
            self._idle.append(name)
        self._wake()

    def stats(self) -> dict:
        return {"idle": list(self._idle), "busy": sorted(self._busy), "members": sorted(self._members)}
