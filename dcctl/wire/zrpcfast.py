"""zerorpc's gevent socket (``zerorpc.gevent_zmq.Socket``) without pyzmq's
enum arithmetic on its hot path; part of the zerorpc compatibility layer
(dcctl.wire.zrpc, which installs it when imported).

pyzmq 23+ made its constants ``IntFlag`` members: every ``events & POLLIN``
and ``flags | NOBLOCK`` in zerorpc 0.6.3's gevent socket (send, recv and
the state check after each) is a Python-level enum operation, 52 of them in
a trivial call, about a tenth of its CPU at each end (bench/rpc,
bench/scale).  The three methods here are zerorpc's own logic on plain
integers: the same non-blocking tries, the same forced state check after
each send and recv, the same 1 s catch-up wait and log line.
"""
from __future__ import annotations

import errno
import logging

import gevent
import zmq
from zerorpc import gevent_zmq

__all__ = ["fast_sockets_installed", "install_fast_sockets", "read_message", "refresh_state"]

_gevent_zmq_log = logging.getLogger("zerorpc.gevent_zmq")  # zerorpc's logger: its noise filter applies
_NOBLOCK = int(zmq.NOBLOCK)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_EVENTS = int(zmq.EVENTS)
_RETRY = (int(zmq.EAGAIN), errno.EINTR)
_BASE = zmq.Socket  # what zerorpc's gevent socket's own methods call up to


def _fast_on_state_changed(self, event=None, _evtype=None):
    if self.closed:
        self._writable.set()
        self._readable.set()
        return
    while True:
        try:
            events = int(self.getsockopt(_EVENTS))
            break
        except zmq.ZMQError as e:
            if e.errno not in _RETRY:
                raise
    if events & _POLLOUT:
        self._writable.set()
    if events & _POLLIN:
        self._readable.set()


def _fast_send(self, data, flags=0, copy=True, track=False):
    flags = int(flags)
    if flags & _NOBLOCK:
        return _BASE.send(self, data, flags, copy, track)
    flags |= _NOBLOCK
    while True:
        try:
            msg = _BASE.send(self, data, flags, copy, track)
            self._on_state_changed()  # zerorpc's forced poll: a POLLIN is often missed while sending
            return msg
        except zmq.ZMQError as e:
            if e.errno not in _RETRY:
                raise
        self._writable.clear()
        gevent.sleep(0)
        while not self._writable.wait(timeout=1):
            try:
                if int(self.getsockopt(_EVENTS)) & _POLLOUT:
                    _gevent_zmq_log.error("/!\\ gevent_zeromq BUG /!\\ catching up after missing event (SEND) /!\\")
                    break
            except zmq.ZMQError as e:
                if e.errno not in _RETRY:
                    raise


def _fast_recv(self, flags=0, copy=True, track=False):
    flags = int(flags)
    if flags & _NOBLOCK:
        return _BASE.recv(self, flags, copy, track)
    flags |= _NOBLOCK
    while True:
        try:
            msg = _BASE.recv(self, flags, copy, track)
            self._on_state_changed()  # zerorpc's forced poll: a POLLOUT is often missed while receiving
            return msg
        except zmq.ZMQError as e:
            if e.errno not in _RETRY:
                raise
        self._readable.clear()
        gevent.sleep(0)
        while not self._readable.wait(timeout=1):
            try:
                if int(self.getsockopt(_EVENTS)) & _POLLIN:
                    _gevent_zmq_log.error("/!\\ gevent_zeromq BUG /!\\ catching up after missing event (RECV) /!\\")
                    break
            except zmq.ZMQError as e:
                if e.errno not in _RETRY:
                    raise


def refresh_state(sock) -> None:
    """The forced state check of zerorpc's gevent socket ``sock``, for a
    caller that sent or read without waiting (``NOBLOCK``), which skips it:
    ZeroMQ's edge-triggered fd may have signalled, and that call consumed,
    a readable or writable change that a greenlet waiting on the socket
    would otherwise see only at the 1 s catch-up."""
    _fast_on_state_changed(sock)


def read_message(sock) -> list:
    """The next message on zerorpc's gevent socket ``sock``, its frames
    (zmq.Frame) in a list: waits for the first; the rest of a multipart
    message is there at once (read without waiting, then one state check).
    What zerorpc's reader greenlet does, without that greenlet and its queue."""
    parts = [sock.recv(copy=False)]
    while parts[-1].more:
        parts.append(_BASE.recv(sock, _NOBLOCK, False))
    _fast_on_state_changed(sock)
    return parts


def fast_sockets_installed() -> bool:
    """Whether zerorpc's gevent socket runs the integer versions above."""
    return gevent_zmq.Socket.recv is _fast_recv


def install_fast_sockets() -> None:
    """Put the integer send, recv and state check on zerorpc's gevent
    socket class (idempotent; dcctl.wire.zrpc does it when imported)."""
    gevent_zmq.Socket._on_state_changed = _fast_on_state_changed
    gevent_zmq.Socket.send = _fast_send
    gevent_zmq.Socket.recv = _fast_recv

