"""The connection watch of a client socket (ZeroMQ's socket monitor).

A client learns from the monitor, at once instead of after its call's
timeout or two missed heartbeats:

* that a server refused its key (HANDSHAKE_FAILED_AUTH or _PROTOCOL:
  Unauthorized);
* that an established connection closed (DISCONNECTED after a
  HANDSHAKE_SUCCEEDED: the server process died, its kernel closed the
  socket; no reply to a call in flight can come, since the server's
  ROUTER has lost that connection);
* that nothing listens at the endpoint (a connect attempt given up for a
  retry before it CONNECTED: the peer's kernel refused it; over ipc, no
  server owns the socket file).

A handshake that fails never counts as a lost connection (it was never
established), so a refused key stays Unauthorized.  A host that vanished
without closing (power off, partition) gives no event: heartbeats stay the
bound for that one.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Callable

import gevent
import zmq

from dcctl.wire.zrpc import CLOSE_TIMEOUT_SECONDS

__all__ = ["ConnectionWatch", "HandshakeWatch"]

_monitor_ids = itertools.count(1)  # each watch's own inproc:// address

# a refused key or a mechanism/key mismatch; HANDSHAKE_FAILED_NO_DETAIL is an
# I/O error during the handshake (a server dying as it accepted): no refusal
_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_EVENTS = (_HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
           | zmq.EVENT_CONNECTED | zmq.EVENT_CONNECT_RETRIED)


def _ignore(*_args) -> None:
    pass


class ConnectionWatch:
    """Watch the connection of a client's zmq socket ``sock`` (ZeroMQ's socket
    monitor, ``zmq_socket_monitor``) in a greenlet, calling:

    * ``on_failure(refused)`` for each failed handshake, ``refused`` True
      when the server's ZAP handler refused our key (False: a protocol
      failure, e.g. a wrong server key or a server without CURVE);
    * ``on_up()`` when a connection's handshake succeeded;
    * ``on_down()`` when that established connection closed (ZeroMQ then
      reconnects by itself);
    * ``on_refused()`` when a connect attempt ended (CONNECT_RETRIED)
      without having connected (nothing listens there).

    ``up`` is True while a connection is established.  ``stop()`` (before
    ``sock`` closes) ends the watch and closes the monitor's sockets.

    Each watch binds its own ``inproc://`` address: pyzmq's default names it
    after the socket's file descriptor, which a new socket can reuse while
    libzmq's reaper has not yet unbound the old monitor, and the new
    client's constructor then fails with 'Address already in use'."""

    def __init__(self, sock: Any, on_failure: Callable[[bool], None],
                 on_up: Callable[[], None] = _ignore, on_down: Callable[[], None] = _ignore,
                 on_refused: Callable[[], None] = _ignore):
        self._sock = sock
        self._on_failure = on_failure
        self._on_up, self._on_down, self._on_refused = on_up, on_down, on_refused
        self.up = False
        self._connected = False  # the current connect attempt CONNECTED
        self._mon = self._sock.get_monitor_socket(
            _EVENTS, addr=f"inproc://dcfleet-monitor-{os.getpid()}-{next(_monitor_ids)}")
        self._mon.linger = 0
        self._task = gevent.spawn(self._watch)

    def _handle(self, events: list[int]) -> None:
        """One batch of events (all the monitor had queued): a refusal
        followed in the same batch by a connection is no refusal."""
        refused = False
        for event in events:
            if event & _HANDSHAKE_FAILED:
                self._on_failure(event == zmq.EVENT_HANDSHAKE_FAILED_AUTH)
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.up, refused = True, False
                self._on_up()
            elif event == zmq.EVENT_DISCONNECTED:
                if self.up:  # an established connection, not a failed handshake
                    self.up = False
                    self._on_down()
            elif event == zmq.EVENT_CONNECTED:
                self._connected, refused = True, False
            elif event == zmq.EVENT_CONNECT_RETRIED:  # this attempt ended; ZeroMQ tries again later
                refused, self._connected = refused or (not self._connected and not self.up), False
        if refused:
            self._on_refused()

    def _watch(self) -> None:
        from zmq.utils.monitor import parse_monitor_message
        try:
            while True:
                batch = [self._mon.recv_multipart()]
                while self._mon.poll(0):
                    batch.append(self._mon.recv_multipart())
                self._handle([parse_monitor_message(m)["event"] for m in batch])
        except (zmq.ZMQError, gevent.GreenletExit):
            pass

    def stop(self) -> None:
        """End the watch: the socket stops reporting (``disable_monitor``),
        the greenlet ends and the monitor socket is closed, even when the
        greenlet never ran (a kill before its first switch skips its body)."""
        try:
            if not self._sock.closed:
                self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._task.kill(block=True, timeout=CLOSE_TIMEOUT_SECONDS)
        self._mon.close()  # linger 0, set at creation


HandshakeWatch = ConnectionWatch  # its earlier name: a watch of failed handshakes only
