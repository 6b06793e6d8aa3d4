"""The agent's side of fleet membership: register with the hub, then send a
heartbeat with a hostinfo summary every ``heartbeat_s`` seconds.

Best effort (DESIGN, failure class 1): a hub that is down or restarting is
retried; a hub that no longer knows this host (it lost its store, or marked
the host gone) gets a fresh registration.  Every error the hub answers (a
refused key, a name not added with host_add, a bad endpoint) is logged at
WARNING once per distinct error, with the hub's hint, and retried; the
next success is logged too, so the log says what state the link is in.

Registration and every heartbeat carry a boot id, new each time the agent
process starts: a hub that sees it change knows the calls it had in flight to
this host died with the previous process, and fails them at once.

Several hubs (``--hub A,B``, hubs sharing an etcd store): after
``FAILOVER_AFTER`` beats in a row that got no answer (Unreachable,
CallTimeout), the link moves to the next hub.  Whenever the link lost its
hub (a restart, a failover), it waits a random delay of up to ``jitter_s``
(default one heartbeat) before it registers again, so a thousand agents do
not all register in the same instant (Salt's ``random_reauth_delay``).
"""
from __future__ import annotations

import logging
import random
import uuid

import gevent

from agents.background import BackgroundLoop
from dcctl import errors, wire

log = logging.getLogger(__name__)


FAILOVER_AFTER = 2  # beats in a row without an answer before the next hub is tried


class _Reconnect(Exception):
    """Start over with a new connection (the hub refused our key)."""


class _NextHub(Exception):
    """Move to the next hub endpoint (this one stopped answering)."""


class HubLink(BackgroundLoop):
    """Keeps this host registered with the hub at ``endpoint``.

    Args:
        endpoint: the hub's endpoint, or a list of the endpoints of a
            fleet's hubs (tried in turn, see the module doc).
        identity: {name, endpoint, address, labels} of this host.
        summary: callable returning the heartbeat summary (must include
            "capacity"); called every beat.
        heartbeat_s: seconds between beats.
        keys: CURVE ClientKeys for a tcp:// hub.
        boot_id: this process's boot id (default: a new random one).
        jitter_s: the longest random delay (seconds) before registering
            again after the hub was lost (default heartbeat_s).
    """

    def __init__(self, endpoint: str | list[str], identity: dict, summary, heartbeat_s: float = 3.0, keys=None,
                 on_beat=None, boot_id: str | None = None, jitter_s: float | None = None):
        self.boot_id = boot_id or uuid.uuid4().hex
        self.on_beat = on_beat  # called after each heartbeat the hub accepted
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self._index = 0
        self.jitter_s = heartbeat_s if jitter_s is None else jitter_s
        self.unanswered = 0  # beats in a row that got no answer (Unreachable, CallTimeout)
        self.switches = 0  # moves to another hub
        self.lost_hub = False  # the last call got no answer: jitter before registering again
        self.keys = keys
        self.identity = identity
        self.summary = summary
        self.heartbeat_s = heartbeat_s
        self.registered = False
        self.last_error: str | None = None  # the last error logged, until a success
        self.failures = 0  # calls to the hub failed since the last accepted heartbeat

    @property
    def endpoint(self) -> str:
        """The hub endpoint the link uses now."""
        return self.endpoints[self._index]

    def _failed(self, what: str, exc: errors.DcError) -> None:
        """Log ``exc`` at WARNING unless it is the error logged last."""
        self.failures += 1
        text = f"{what}: {type(exc).__name__}: {exc}"
        if text != self.last_error:
            self.last_error = text
            hint = f" (hint: {exc.hint})" if getattr(exc, "hint", None) else ""
            log.warning("hub %s: %s%s; retrying", self.endpoint, text, hint)

    def _loop(self) -> None:
        while True:
            client = wire.connect(self.endpoint, timeout_s=max(2.0, self.heartbeat_s * 2), keys=self.keys)
            try:
                while True:
                    if not self.registered and self.lost_hub:
                        gevent.sleep(random.uniform(0, self.jitter_s))  # no stampede of registrations
                    self.beat(client)
                    if self.unanswered >= FAILOVER_AFTER and len(self.endpoints) > 1:
                        raise _NextHub()
                    gevent.sleep(self.heartbeat_s)
            except _Reconnect:
                continue
            except _NextHub:
                old = self.endpoint
                self._index = (self._index + 1) % len(self.endpoints)
                self.switches += 1
                self.unanswered = 0 if self._index else self.unanswered  # a full round keeps counting
                log.warning("hub %s does not answer: moving to hub %s", old, self.endpoint)
            finally:
                client.close()

    def beat(self, client: wire.RpcClient) -> None:
        """One registration or heartbeat; errors are logged, not raised."""
        try:
            summary = self.summary()
        except errors.DcError as exc:
            self._failed("hostinfo for the heartbeat", exc)
            return
        what = "heartbeat"
        try:
            if not self.registered:
                what = "registration"
                client.call("host_register", {**self.identity, "capacity": summary["capacity"],
                                               "boot_id": self.boot_id})
                self.registered = True
                log.info("registered with hub %s as %s at %s", self.endpoint, self.identity["name"],
                         self.identity["endpoint"])
                what = "heartbeat"
            client.call("host_heartbeat", self.identity["name"], {**summary, "boot_id": self.boot_id})
            if self.last_error is not None:
                log.info("hub %s: heartbeats accepted again", self.endpoint)
                self.last_error = None
            self.failures = 0
            self.unanswered, self.lost_hub = 0, False
            if self.on_beat is not None:
                self.on_beat()
        except errors.NoSuchHost:
            self.registered = False  # the hub forgot us: register on the next beat
        except errors.Unauthorized as exc:
            self._failed(what, exc)
            self.registered = False
            client.close()
            gevent.sleep(self.heartbeat_s * 5)  # a new connection, a new handshake, later
            raise _Reconnect() from exc
        except errors.DcError as exc:
            self._failed(what, exc)
            self.registered = False
            if isinstance(exc, (errors.Unreachable, errors.CallTimeout)):
                self.unanswered += 1
                self.lost_hub = True
