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

Several hubs (``--hub A,B``, hubs sharing an etcd store): a hub whose
connection closes (its process died: the wire's socket monitor sees it at
once, between beats too) or refuses a connection (nothing listens) is left
at once for the next hub; one that answers nothing (a host that vanished)
after ``FAILOVER_AFTER`` calls in a row without an answer.  Only the
registration waits for the random delay below, never the detection: with
several hubs an agent is registered with the next one within about
``jitter_s`` (plus a ping) of its hub's death.

Rejoining without a stampede (Salt's ``random_reauth_delay``): a call that
got no answer ends its connection, so the requests ZeroMQ queued for a hub
that was gone are never delivered in one burst when it is back.  The link
then pings the hub on a fresh connection until one answers (a ping costs
the hub no store write; the next hub after FAILOVER_AFTER unanswered
tries), waits a random delay in [0, ``jitter_s``] (default one heartbeat)
and only then registers again.  A hub that answers NoSuchHost (it lost its
store, or forgot the host) gets the same random delay before the
registration.  So a hub restart with 1,000 agents sees their registrations
spread evenly over the jitter window instead of all at once (bench/scale).
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
    """Start over with a new connection (the hub refused our key, or a call
    got no answer)."""


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
            again after the hub was lost (None or negative: heartbeat_s,
            which a hub's start-up grace of missed heartbeats covers).
    """

    def __init__(self, endpoint: str | list[str], identity: dict, summary, heartbeat_s: float = 3.0, keys=None,
                 on_beat=None, boot_id: str | None = None, jitter_s: float | None = None):
        self.boot_id = boot_id or uuid.uuid4().hex
        self.on_beat = on_beat  # called after each heartbeat the hub accepted
        self.endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        self._index = 0
        self.jitter_s = heartbeat_s if jitter_s is None or jitter_s < 0 else jitter_s
        self.rejoins = 0  # registrations after a lost hub (each after its random delay)
        self.unanswered = 0  # beats in a row that got no answer (Unreachable, CallTimeout)
        self.switches = 0  # moves to another hub
        self.lost_hub = False  # a call got no answer since the last accepted heartbeat
        self.dropped = False  # the hub's connection closed or was refused: the next hub at once
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

    def _connect(self) -> wire.RpcClient:
        return wire.connect(self.endpoint, timeout_s=max(2.0, self.heartbeat_s * 2), keys=self.keys)

    def rejoin_delay(self) -> float:
        """A random delay in [0, jitter_s] seconds before registering again
        after a lost hub."""
        return random.uniform(0.0, self.jitter_s)

    def _next_hub(self) -> None:
        old = self.endpoint
        self._index = (self._index + 1) % len(self.endpoints)
        self.switches += 1
        self.unanswered = 0 if self._index else self.unanswered  # a full round keeps counting
        log.warning("hub %s does not answer: moving to hub %s", old, self.endpoint)

    def _rejoin(self) -> wire.RpcClient:
        """A fresh connection to a hub that answers a ping, then the random
        delay.  The next hub is tried at once after a hub whose connection
        closed or was refused (one round of the hubs, then every
        heartbeat_s), and after FAILOVER_AFTER unanswered tries; the same
        hub is tried again every heartbeat_s.  Returns the connection; the
        registration is the next beat's."""
        fast_tries = 0  # hubs tried at once, without a sleep, in this round
        while True:
            if len(self.endpoints) > 1 and (self.dropped or self.unanswered >= FAILOVER_AFTER):
                self._next_hub()
            self.dropped = False
            client = self._connect()
            try:
                client.call("_zerorpc_ping")
            except errors.DcError as exc:
                dropped = client.lost is not None
                client.close()
                self._failed("ping", exc)
                if isinstance(exc, (errors.Unreachable, errors.CallTimeout)):
                    self.unanswered += 1
                if dropped and fast_tries < len(self.endpoints) - 1:
                    fast_tries += 1
                    self.dropped = True
                    continue
                fast_tries = 0
                self.dropped = dropped
                gevent.sleep(self.heartbeat_s * (5 if isinstance(exc, errors.Unauthorized) else 1))
                continue
            gevent.sleep(self.rejoin_delay())  # no stampede of registrations
            self.rejoins += 1
            return client

    def _loop(self) -> None:
        client = self._connect()
        try:
            while True:
                try:
                    while True:
                        self.beat(client)
                        if client.wait_lost(self.heartbeat_s):  # the hub's connection closed between beats
                            self.registered, self.lost_hub, self.dropped = False, True, True
                            log.warning("hub %s: %s", self.endpoint, client.lost or "connection lost")
                            raise _Reconnect()
                except _Reconnect:
                    client.close()  # requests queued for a hub that is gone are dropped with it
                    client = self._rejoin()
        finally:
            client.close()

    def beat(self, client: wire.RpcClient) -> None:
        """One registration or heartbeat; errors are logged, not raised,
        except that a call with no answer (or a refused key) ends this
        connection (_Reconnect)."""
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
            self.registered = False  # the hub forgot us: register after the random delay and the beat's sleep
            gevent.sleep(self.rejoin_delay())
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
            if isinstance(exc, (errors.Unreachable, errors.CallTimeout)):
                self.unanswered += 1
                self.lost_hub = True
                self.dropped = client.lost is not None  # closed or refused: the next hub at once
                raise _Reconnect() from exc  # a fresh connection, once a hub answers, after the random delay
