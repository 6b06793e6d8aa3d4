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

Rejoining without a stampede (Salt's ``random_reauth_delay``): when a call
to the hub fails (the hub is down, restarting, or answers an error), the
link drops its connection, so the requests ZeroMQ queued for a hub that was
gone are never delivered in one burst when it is back.  It then pings the
hub on a fresh connection until it answers (a ping costs the hub no store
write), waits a random delay in [0, ``rejoin_jitter_s``] and only then
registers again.  A hub that answers NoSuchHost (it lost its store, or
another hub took over) gets the same random delay before the registration.
So a hub restart with 1,000 agents sees their registrations spread evenly
over the jitter window instead of all at once.
"""
from __future__ import annotations

import logging
import random
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
        rejoin_jitter_s: seconds over which a re-registration after a lost
            hub is spread (a random delay in [0, this]); None or negative:
            one heartbeat_s, which a hub's start-up grace (missed heartbeats,
            3 by default) covers.
    """

    def __init__(self, endpoint: str, identity: dict, summary, heartbeat_s: float = 3.0, keys=None,
                 on_beat=None, boot_id: str | None = None, rejoin_jitter_s: float | None = None):
        self.boot_id = boot_id or uuid.uuid4().hex
        self.rejoin_jitter_s = heartbeat_s if rejoin_jitter_s is None or rejoin_jitter_s < 0 else rejoin_jitter_s
        self.rejoins = 0  # registrations after a lost hub (each after its random delay)
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

    def _connect(self) -> wire.RpcClient:
        return wire.connect(self.endpoint, timeout_s=max(2.0, self.heartbeat_s * 2), keys=self.keys)

    def rejoin_delay(self) -> float:
        """A random delay in [0, rejoin_jitter_s] seconds before registering
        again after a lost hub."""
        return random.uniform(0.0, self.rejoin_jitter_s)

    def _wait_for_hub(self) -> wire.RpcClient:
        """A fresh connection to a hub that answers a ping (tried every
        heartbeat_s); then the random rejoin delay.  Returns the connection."""
        while True:
            client = self._connect()
            try:
                client.call("_zerorpc_ping")
            except errors.DcError as exc:
                client.close()
                self._failed("ping", exc)
                gevent.sleep(self.heartbeat_s * (5 if isinstance(exc, errors.Unauthorized) else 1))
                continue
            gevent.sleep(self.rejoin_delay())
            self.rejoins += 1
            return client

    def _loop(self) -> None:
        client = self._connect()
        while True:
            try:
                while True:
                    self.beat(client)
                    gevent.sleep(self.heartbeat_s)
            except _Reconnect:
                client.close()  # requests queued for a hub that is gone are dropped with it
                client = self._wait_for_hub()
            except BaseException:
                client.close()
                raise

    def beat(self, client: wire.RpcClient) -> None:
        """One registration or heartbeat; errors are logged, not raised,
        except that a failed call ends this connection (_Reconnect)."""
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
            self.registered = False  # the hub forgot us: register after the random delay
            gevent.sleep(self.rejoin_delay())  # then the beat's own sleep, then the registration
            self.rejoins += 1
        except errors.Unauthorized as exc:
            self._failed(what, exc)
            self.registered = False
            client.close()
            gevent.sleep(self.heartbeat_s * 5)  # a new connection, a new handshake, later
            raise _Reconnect() from exc
        except errors.DcError as exc:
            self._failed(what, exc)
            self.registered = False
            raise _Reconnect() from exc  # a fresh connection, once the hub answers, after the random delay
