"""The CURVE handshake watch of a client socket (ZeroMQ's socket monitor).

A client learns that a server refused its key from the monitor's
HANDSHAKE_FAILED events at once, instead of after its call's timeout.
"""
from __future__ import annotations

import itertools
import os
from typing import Any, Callable

import gevent
import zmq

from dcctl.wire.zrpc import CLOSE_TIMEOUT_SECONDS

_monitor_ids = itertools.count(1)  # each watch's own inproc:// address


class HandshakeWatch:
    """Watch the CURVE handshakes of a client's zmq socket ``sock`` (ZeroMQ's socket
    monitor, ``zmq_socket_monitor``) in a greenlet: each failed one calls
    ``on_failure(refused)``, ``refused`` True when the server's ZAP handler
    refused our key (False: a protocol failure, e.g. a wrong server key or a
    server without CURVE).  ``stop()`` (before ``sock`` closes)
    ends the watch and closes the monitor's sockets.

    Each watch binds its own ``inproc://`` address: pyzmq's default names it
    after the socket's file descriptor, which a new socket can reuse while
    libzmq's reaper has not yet unbound the old monitor, and the new
    client's constructor then fails with 'Address already in use'."""

    def __init__(self, sock: Any, on_failure: Callable[[bool], None]):
        self._sock = sock
        self._on_failure = on_failure
        self._mon = self._sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            addr=f"inproc://dcfleet-monitor-{os.getpid()}-{next(_monitor_ids)}")
        self._mon.linger = 0
        self._task = gevent.spawn(self._watch)

    def _watch(self) -> None:
        from zmq.utils.monitor import recv_monitor_message
        try:
            while True:
                self._on_failure(recv_monitor_message(self._mon)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH)
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
