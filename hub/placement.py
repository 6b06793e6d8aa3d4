"""Placing containers on hosts: the reservation, the agent calls that make a
container real on the chosen host, the retry on the next feasible host, and
the journal of placements a hub restart interrupted.

A placement claims the name and reserves capacity atomically (SQLite BEGIN
IMMEDIATE, HubStore.claim) before any agent call; the row is "reserved"
until the container runs on its host, then "placed".  When the chosen host
fails with an error worth retrying elsewhere (RETRYABLE), its half-made
container is destroyed (best effort) and the reservation moves to the next
feasible host; NoCapacity then names each host's reason.
"""
from __future__ import annotations

import logging

import gevent

from dcctl import errors
from hub import scheduler
from hub.agents import VIEW_TIMEOUT_SECONDS, Agents
from hub.store import HubStore

log = logging.getLogger(__name__)

RETRYABLE = (errors.Unreachable, errors.CallTimeout, errors.NoCapacity, errors.LxcFailure,
             errors.StoreError, errors.NetworkError, errors.Busy)
PULL_TIMEOUT_SECONDS = 600.0


class Placer:
    """Makes reserved containers real on hosts, through ``agents``."""

    def __init__(self, store: HubStore, agents: Agents):
        self.store = store
        self.agents = agents

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
        failed); the host's own error when it is not worth retrying
        elsewhere (the reservation is dropped in every failure).
        """
        row = self.store.claim(name, manifest["id"], request.memory_bytes, spec,
                               scheduler.choose(self.store.hosts(), request))
        host, tried = row["host"], set()
        while True:
            tried.add(host)
            try:
                result = self.realize(host, manifest, name, agent_opts, no_start)
            except RETRYABLE as exc:
                log.warning("create %s on %s failed (%s: %s); trying another host", name, host,
                            type(exc).__name__, exc)
                self.undo(host, name)
                try:
                    host = self.store.move(name, scheduler.choose(self.store.hosts(), request, exclude=tried))
                except errors.DcError as nc:
                    self.store.forget(name)
                    raise type(nc)(f"{nc}; last failure on {host}: {type(exc).__name__}: {exc}") from exc
                continue
            except BaseException:
                self.undo(host, name)
                self.store.forget(name)
                raise
            self.store.set_placed(name, manifest["id"], result["ports"])
            return result

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

    def undo(self, host: str, name: str) -> None:
        """Best effort: destroy a half-made container on ``host``
        (reconciliation cleans up later if the host is unreachable now).
        Never raises a DcError."""
        try:
            self.agents.call(host, "container_destroy", name, True, timeout_s=VIEW_TIMEOUT_SECONDS * 3)
        except errors.DcError:
            pass

    def recover(self, journal: set[str], interval_s: float) -> None:
        """Finish or roll back the placements a hub restart interrupted (the
        ``journal``: names of rows "reserved" when this hub started): a row
        whose host has the container becomes placed, one whose host does not
        is dropped.  A row whose host does not answer yet stays undecided
        and is asked again every ``interval_s`` seconds, until each one is
        decided; ``journal`` is emptied as they are.  Runs until then (the
        hub spawns it)."""
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
                    info = self.agents.call(row["host"], "container_inspect", name, timeout_s=VIEW_TIMEOUT_SECONDS)
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
                gevent.sleep(interval_s)
