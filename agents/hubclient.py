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
"""
from __future__ import annotations

import logging
import uuid

import gevent

from agents.background import BackgroundLoop
from dcctl import errors, wire

log = logging.getLogger(__name__)


class _Reconnect(Exception):
    """Start over with a new connection (the hub refused our key)."""


class HubLink(BackgroundLoop):
    """Keeps this host registered with the hub at ``endpoint``.

    Args:
        endpoint: the hub's endpoint.
        identity: {name, endpoint, address, labels} of this host.
        summary: callable returning the heartbeat summary (must include
            "capacity"); called every beat.
        heartbeat_s: seconds between beats.
        keys: CURVE ClientKeys for a tcp:// hub.
        boot_id: this process's boot id (default: a new random one).
    """

    def __init__(self, endpoint: str, identity: dict, summary, heartbeat_s: float = 3.0, keys=None,
                 on_beat=None, boot_id: str | None = None):
        self.boot_id = boot_id or uuid.uuid4().hex
        self.on_beat = on_beat  # called after each heartbeat the hub accepted
        self.endpoint = endpoint
        self.keys = keys
        self.identity = identity
        self.summary = summary
        self.heartbeat_s = heartbeat_s
        self.registered = False
        self.last_error: str | None = None  # the last error logged, until a success
        self.failures = 0  # calls to the hub failed since the last accepted heartbeat

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
                    self.beat(client)
                    gevent.sleep(self.heartbeat_s)
            except _Reconnect:
                continue
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
