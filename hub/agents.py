"""The hub's link to its agents: one zerorpc client per host, the boot id
each agent last reported, and the one way the hub calls an agent.

Every part of the hub that talks to an agent (placement, forwarding,
fan-out, the healer) goes through ``Agents.call``: a host marked unreachable
fails at once, and an agent that restarted (a new boot id) has its calls in
flight failed at once, instead of each caller waiting out its timeout.
"""
from __future__ import annotations

import logging
from typing import Callable

from dcctl import auth, errors, wire
from hub.store import HubStore

log = logging.getLogger(__name__)

#: Timeout of the hub's short agent calls (listings, inspection, a destroy's third of it), seconds.
VIEW_TIMEOUT_SECONDS = 5.0


class Agents:
    """Clients to the fleet's agents, made on first use from their store rows.

    Args:
        store: the fleet's store (host rows: endpoint, key, state).
        call_timeout_s: default timeout of a call, seconds.
        heartbeat_s: the fleet's heartbeat, seconds (kept for callers; each
            client's zerorpc heartbeat is the wire's default, the agents').
        server_pair: the hub's CURVE key pair (public, secret), its client
            key towards agents; None for a hub without keys.
        on_event: ``on_event(kind, **detail)``, told "host_restarted".
    """

    def __init__(self, store: HubStore, *, call_timeout_s: float = 60.0, heartbeat_s: float = 3.0,
                 server_pair: tuple[bytes, bytes] | None = None,
                 on_event: Callable[..., None] = lambda kind, **detail: None):
        self.store = store
        self.call_timeout_s = call_timeout_s
        self.heartbeat_s = heartbeat_s
        self.server_pair = server_pair
        self.on_event = on_event
        self._clients: dict[str, tuple[tuple[str, str], wire.RpcClient]] = {}  # host: ((endpoint, key), client)
        self._boots: dict[str, str] = {}  # host -> the boot id its agent last reported

    def client(self, host: str, row: dict | None = None) -> wire.RpcClient:
        """The hub's zerorpc client for ``host`` (made on first use);
        ``row`` is its store row when the caller has it already.

        A host that registered with a key is reached over CURVE with that
        key as the expected server key (an agent's client key is its server
        key), so an endpoint of any other server fails the handshake; a host
        that joined locally (no key) is reached at its ipc endpoint only.

        Raises: NoSuchHost; Unreachable (the row's endpoint and key do not
        fit)."""
        row = row or self.store.host(host)
        endpoint = row["endpoint"]
        cached = self._clients.get(host)
        if cached is None or cached[0] != (endpoint, row["key"]):
            if cached is not None:
                cached[1].close()
                del self._clients[host]
            keys = None
            if row["key"]:
                if not wire.parse_endpoint(endpoint).is_tcp or not self.server_pair:
                    raise errors.Unreachable(f"host {host} has a key but no CURVE endpoint the hub can verify",
                                             hint="it registers again with a tcp:// endpoint")
                keys = auth.ClientKeys(self.server_pair[0], self.server_pair[1], row["key"].encode())
            elif not wire.parse_endpoint(endpoint).is_ipc:
                raise errors.Unreachable(f"host {host} joined without a key at a non-local endpoint")
            # zerorpc's peers must beat at the same interval: each side drops
            # the other after two of ITS OWN intervals without a beat, so a 1 s
            # (or 3 s) hub client under an agent's 5 s beat lost every call and
            # stream longer than ~4 s ("no heartbeat": long imports).  The
            # agents serve with the wire's default; the hub calls with it.
            cached = ((endpoint, row["key"]), wire.RpcClient(endpoint, timeout_s=self.call_timeout_s, keys=keys,
                                                             heartbeat_s=wire.DEFAULT_HEARTBEAT_SECONDS))
            self._clients[host] = cached
        return cached[1]

    def cached(self, host: str) -> wire.RpcClient | None:
        """The client already made for ``host``, or None (no call yet, or
        dropped since)."""
        cached = self._clients.get(host)
        return cached[1] if cached else None

    def call(self, host: str, method: str, *args, timeout_s: float | None = None, row: dict | None = None):
        """Call ``method(*args)`` on the agent of ``host``.

        However long ``timeout_s`` is (a pull's), a call to an agent that
        dies or freezes fails within two heartbeats (zerorpc's per-call
        heartbeats, the wire's DEFAULT_HEARTBEAT_SECONDS), and one to an agent that restarts fails as soon as it
        reports its new boot id.

        Args: timeout_s: seconds to wait for the answer (None: the default);
        row: the host's store row when the caller has just read it (a
        fan-out over ``store.hosts()``), which saves a store read per host.
        Returns: the agent's answer.
        Raises: NoSuchHost; Unreachable (the host is marked unreachable,
        at once; lost, closed or restarted during the call); CallTimeout;
        the agent's own errors.
        """
        row = row if row is not None and row.get("name") == host else self.store.host(host)  # one read per call
        if row["state"] != "alive":
            raise errors.Unreachable(f"host {host} is unreachable (missed heartbeats)",
                                     hint="its containers with a restart policy are re-created elsewhere")
        return self.client(host, row).call(method, *args, timeout_s=timeout_s)

    def drop(self, host: str, reason: str) -> None:
        """Close the hub's client for ``host``: calls in flight on it fail at
        once with Unreachable(``reason``); the next call makes a new one."""
        cached = self._clients.pop(host, None)
        if cached is not None:
            cached[1].close(reason)

    def note_boot(self, host: str, boot_id: str | None) -> bool:
        """Record the boot id an agent reports (None: an agent that sends
        none); True if it differs from the one it reported before (the agent
        restarted: its calls in flight are dead and fail at once, and
        ``on_event("host_restarted", host=...)`` is told)."""
        if boot_id is None:
            return False
        before = self._boots.get(host)
        self._boots[host] = boot_id
        if before is None or before == boot_id:
            return False
        log.warning("host %s restarted (boot id %s, was %s): failing its calls in flight", host, boot_id, before)
        self.on_event("host_restarted", host=host)
        self.drop(host, f"the agent on {host} restarted")
        return True

    def forget(self, host: str, reason: str) -> None:
        """Drop ``host``'s client and boot id (the host was removed)."""
        self.drop(host, reason)
        self._boots.pop(host, None)

    def close(self) -> None:
        """Close every client."""
        for host in list(self._clients):
            self.drop(host, "the hub stopped")
