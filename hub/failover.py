"""Healing the fleet: re-creating a lost host's containers elsewhere, and
reconciling what a host reports with the fleet store.

* When a host is lost (missed heartbeats), its containers that have a
  restart policy are re-created on other hosts with capacity: names kept,
  exposed ports mapped anew, exponential backoff and another host each
  attempt, as Nomad's reschedule block does; it stops as soon as the lost
  host is back.
* Each heartbeat lists the host's containers.  A container the store places
  on another host is a stale copy (its host was lost and came back): it is
  stopped and destroyed, so a name never runs twice.  What a heartbeat
  claims is never trusted on its own: a copy is removed only on the host
  that reported it (reached at its own verified endpoint), and only when
  the hub's own record places that container, placed and not moving, on
  another host the hub knows; the record is read again just before the
  removal.  The same rule removes a copy a failed create left on a host it
  could not undo on (an abandoned row, hub/placement.py).  A container the store
  does not know (made on the host directly, or a create the hub lost in a
  restart) is adopted after the host confirms it.
* A container the store places on a host whose heartbeats no longer list
  it, and which the host (asked directly) says it does not have, was
  removed there behind the hub's back (a broadcast ``container_destroy``,
  a host whose state was wiped): its row and routes are forgotten and
  told as ``container_vanished``, so the name can be used again.  Checked
  at most every VANISHED_CHECK_SECONDS per host, for rows placed at least
  VANISHED_MIN_AGE_SECONDS ago, by the leading hub only (the one that
  moves containers, so the one that knows which are moving; with several
  hubs, hosts that beat to another hub are checked when they beat to it).
"""
from __future__ import annotations

import logging
import time

import gevent

from dcctl import errors
from hub import scheduler
from hub.agents import VIEW_TIMEOUT_SECONDS, Agents
from hub.events import EventLog
from hub.placement import Placer
from hub.registry import Registry
from hub.store import HubStore

log = logging.getLogger(__name__)

RESCHEDULE_ATTEMPTS = 8
RESCHEDULE_BACKOFF_MAX_SECONDS = 30.0
#: A host's placed rows are checked against its heartbeats at most this often, seconds.
VANISHED_CHECK_SECONDS = 30.0
#: Rows placed (or changed) less than this many seconds ago are not checked:
#: a heartbeat taken before the create may arrive after it.
VANISHED_MIN_AGE_SECONDS = 10.0


class Healer:
    """Failover and reconciliation: reads and writes the fleet ``store``,
    takes manifests from the ``registry``, calls agents through ``agents``,
    makes containers on new hosts with ``placer`` and records what it does
    in ``events``."""

    def __init__(self, store: HubStore, registry: Registry, agents: Agents, placer: Placer, events: EventLog):
        self.store = store
        self.registry = registry
        self.agents = agents
        self.placer = placer
        self.events = events
        self.moving: set[str] = set()  # containers being re-created elsewhere
        self.reaping: set[tuple[str, str]] = set()  # (host, name) stale copies being removed or adopted
        self._vanish_checked: dict[str, float] = {}  # host -> when its placed rows were last checked (monotonic)

    def host_lost(self, lost: str) -> None:
        """Re-create the lost host's containers that have a restart policy on
        other hosts (names kept, exposed ports mapped anew).  A container
        with volumes stays (its data is on the lost host): event
        reschedule_skipped."""
        for row in self.store.containers(lost):
            policy = str((row["spec"].get("options") or {}).get("restart") or "no")
            if row["state"] == "placed" and policy != "no" and (row["spec"].get("options") or {}).get("volumes"):
                self.events.add("reschedule_skipped", name=row["name"], host=lost,
                                reason="its volumes are on the lost host")
                continue
            if row["state"] == "placed" and policy != "no" and row["name"] not in self.moving:
                self.moving.add(row["name"])
                gevent.spawn(self._reschedule, row["name"], lost)

    def _reschedule(self, name: str, lost: str) -> None:
        """Nomad's reschedule block, in short: exponential backoff (1 s, 2 s,
        4 s ... 30 s), another host each attempt, and give up after
        RESCHEDULE_ATTEMPTS; stop as soon as the lost host is back (its
        copy may still run) or the container was removed."""
        started, tried = time.monotonic(), {lost}
        try:
            for attempt in range(RESCHEDULE_ATTEMPTS):
                if attempt:
                    gevent.sleep(min(RESCHEDULE_BACKOFF_MAX_SECONDS, 2.0 ** (attempt - 1)))
                try:
                    row = self.store.container(name)
                except errors.NoSuchContainer:
                    return
                if row["host"] != lost or self.store.host(lost)["state"] == "alive":
                    return
                spec = row["spec"]
                opts = spec.get("options") or {}
                manifest = self.registry.get(row["image"])
                request = scheduler.Request(row["memory_bytes"] or 0, spec.get("labels") or {}, None,
                                            spec.get("strategy") or "spread")
                try:
                    host = self.store.move(name, scheduler.choose(self.store.hosts(), request, exclude=tried))
                except errors.DcError as exc:
                    self.events.add("reschedule_waiting", name=name, reason=str(exc))
                    continue
                tried.add(host)
                # the row's ports are the lost host's: until the new ones are
                # written, its routes must not point at the new host with them
                # (another container there may map that port)
                self.store.set_ports(name, [])
                try:
                    result = self.placer.realize(host, manifest, name, opts, False)
                except errors.DcError as exc:
                    if not self.placer.undo(host, name):
                        self.store.abandon(name, host)
                    self.store.assign(name, lost)
                    self.store.set_ports(name, row["ports"] or [])
                    self.events.add("reschedule_failed", name=name, host=host, error=f"{type(exc).__name__}: {exc}")
                    continue
                if not self.store.set_placed(name, manifest["id"], result["ports"], host=host):
                    # destroyed (or its host removed) while it was being made again
                    self.placer.undo_or_abandon(host, name)
                    self.events.add("reschedule_cancelled", name=name, host=host,
                                    reason="its record was removed during the move")
                    log.info("reschedule of %s cancelled: its record was removed meanwhile", name)
                    return
                self.events.add("rescheduled", name=name, from_host=lost, host=host,
                                after_s=round(time.monotonic() - started, 3))
                log.info("rescheduled %s from lost %s to %s", name, lost, host)
                return
            self.events.add("reschedule_gave_up", name=name, host=lost)
        finally:
            self.moving.discard(name)

    def reconcile(self, host: str, reported: list) -> None:
        """A host reports its containers: destroy each copy the hub's record
        says does not live there (placed elsewhere after the host was lost,
        or left by a create the hub gave up on: ``_not_here``), so a name
        never runs twice; adopt one the store does not know at all."""
        listed = {c.get("name") for c in reported if isinstance(c, dict)}
        for name in self.store.destroying(host):
            if name not in listed and (host, name) not in self.reaping:
                self.reaping.add((host, name))
                gevent.spawn(self._forget_destroyed, host, name)
        for c in reported:
            name = c.get("name") if isinstance(c, dict) else None
            if not isinstance(name, str) or (host, name) in self.reaping:
                continue
            try:
                self.store.container(name)
            except errors.InvalidArgument:
                continue
            except errors.NoSuchContainer:  # made on the host directly, or a create the hub lost
                if not self.store.is_abandoned(name, host):
                    self.reaping.add((host, name))
                    gevent.spawn(self._adopt, host, name)
                    continue
            if self._not_here(name, host):
                self.reaping.add((host, name))
                gevent.spawn(self._reap_one, host, name)
        self._check_vanished(host, listed)

    def _check_vanished(self, host: str, listed: set) -> None:
        """reconcile's check for rows placed on ``host`` that its heartbeat
        (``listed``: the names it reported) no longer lists: each is asked
        of the host (``_forget_vanished``); at most every
        VANISHED_CHECK_SECONDS per host."""
        now = time.monotonic()
        if now - self._vanish_checked.get(host, float("-inf")) < VANISHED_CHECK_SECONDS:
            return
        self._vanish_checked[host] = now
        if not self.store.is_leader():  # only the leader moves containers, so only it knows which are moving
            return
        settled = time.time() - VANISHED_MIN_AGE_SECONDS
        for row in self.store.containers(host):
            name = row["name"]
            if (row["state"] == "placed" and name not in listed and name not in self.moving
                    and (host, name) not in self.reaping and (row.get("updated_at") or 0) < settled):
                self.reaping.add((host, name))
                gevent.spawn(self._forget_vanished, host, name, row.get("created_at"))

    def _forget_vanished(self, host: str, name: str, created_at: float | None = None) -> None:
        """Forget ``name``'s row (and its routes) when ``host``, which the
        row places it on, confirms it has no such container; the row must
        still be the one checked (the same ``created_at``), placed there
        and not moving (changed meanwhile: left)."""
        def still_ours(row: dict) -> bool:
            return (row["host"] == host and row.get("created_at") == created_at and name not in self.moving
                    and self.store.set_state(name, "destroying", was="placed"))
        if self._forget_if_gone(host, name, still_ours, "container_vanished"):
            log.warning("%s is gone from %s, which did not say so: its row and routes are forgotten", name, host)

    def _forget_if_gone(self, host: str, name: str, forgettable, kind: str) -> bool:
        """Ask ``host`` for ``name``; on NoSuchContainer, forget its row
        when ``forgettable(row)`` and tell it as event ``kind``.  Returns
        whether it was forgotten; errors leave it for a later heartbeat."""
        try:
            self.agents.call(host, "container_inspect", name, timeout_s=VIEW_TIMEOUT_SECONDS)
        except errors.NoSuchContainer:
            try:
                if forgettable(self.store.container(name)):
                    self.store.forget(name)
                    self.events.add(kind, name=name, host=host)
                    return True
            except errors.DcError:
                pass
        except errors.DcError:
            pass
        finally:
            self.reaping.discard((host, name))
        return False

    def _not_here(self, name: str, host: str) -> bool:
        """The one rule for removing a host's copy: True when the hub's own
        record says ``name`` does not live on ``host``: a failed create left
        it there (an abandoned row), or it is placed on another known host."""
        return self.store.is_abandoned(name, host) or self._elsewhere(name, host)

    def _elsewhere(self, name: str, host: str) -> bool:
        """True when the hub's own record says ``name`` lives on a known
        host other than ``host`` (placed there, not being moved)."""
        if name in self.moving:
            return False
        try:
            row = self.store.container(name)
            self.store.host(row["host"])
        except errors.DcError:  # no record, or its owner is gone: nothing says it lives elsewhere
            return False
        return row["host"] != host and row["state"] == "placed"

    def _adopt(self, host: str, name: str) -> None:
        """Record a container a host has but the fleet store lacks (checked
        with the host first: a heartbeat may predate a destroy), so names
        stay fleet-unique and the store matches reality."""
        try:
            info = self.agents.call(host, "container_inspect", name, timeout_s=VIEW_TIMEOUT_SECONDS)
            self.store.adopt(name, host, info.get("image_id") or "", info.get("ports") or [],
                             int(info.get("memory_limit_bytes") or 0))
            self.events.add("adopted", name=name, host=host)
        except errors.DcError:
            pass
        finally:
            self.reaping.discard((host, name))

    def _forget_destroyed(self, host: str, name: str) -> None:
        """Forget ``name``'s "destroying" row when ``host`` (whose heartbeat
        no longer lists it) confirms it has no such container: the destroy
        the hub lost track of was finished there."""
        if self._forget_if_gone(host, name, lambda row: row["host"] == host and row["state"] == "destroying",
                                "destroy_finished"):
            log.info("%s is gone from %s: its destroying row is forgotten", name, host)

    def _reap_one(self, host: str, name: str) -> None:
        """Destroy the stale copy of ``name`` on ``host`` (the host that
        reported it), if the record still says it does not live there
        (``_not_here``); an abandoned row is forgotten once it is gone."""
        try:
            if not self._not_here(name, host):
                return
            self.agents.call(host, "container_destroy", name, True, timeout_s=VIEW_TIMEOUT_SECONDS * 3)
            self.store.unabandon(name, host)
            self.events.add("stale_copy_removed", name=name, host=host)
            log.info("removed stale copy of %s from %s", name, host)
        except errors.DcError as exc:
            log.warning("could not remove stale %s from %s: %s", name, host, exc)
            if isinstance(exc, errors.NoSuchContainer):  # not there (any more): nothing is left to remove
                try:
                    self.store.unabandon(name, host)
                except errors.DcError:
                    pass
        finally:
            self.reaping.discard((host, name))

