"""The terminal relay's channel (``container_enter``): a ZeroMQ PAIR socket
carrying msgpack lists, one session each, beside the RPC endpoints.

The agent binds one per session (``Channel.bind``, green: it runs on the
agent's gevent loop); dcctl connects to it (``Channel.connect``, blocking:
dcctl's loop polls the channel and its terminal together with
``Channel.wait``).  Over tcp the channel is CURVE-encrypted with the
agent's key; any client key may connect, since the session's one-time token
(the first message) admits it.  The messages are described in agents.enter.

No zmq type leaves this module: a failed send is ``Unreachable``; a frame
that is not a non-empty msgpack list is read as ``["bad"]``.
"""
from __future__ import annotations

import os
import select
import time
from typing import Any, Iterable

import gevent.select

import msgpack
import zmq
import zmq.green

from dcctl import errors
from dcctl.wire.endpoint import parse_endpoint

__all__ = ["BAD", "Channel"]

#: What recv returns for a frame that is not a non-empty msgpack list.

BAD = ["bad"]


class Channel:
    """One end of a relay channel; make it with ``bind`` or ``connect``."""

    _green_context: Any = None

    def __init__(self, sock: Any, poller_cls: Any, max_frame_bytes: int | None):
        self._sock = sock
        self._poller_cls = poller_cls
        self._max_frame_bytes = max_frame_bytes
        #: where the bound end listens: {"transport": "tcp", "port": N} or
        #: {"transport": "ipc", "path": P} (None for a connected end)
        self.address: dict | None = None

    @classmethod
    def bind(cls, endpoint: str, *, curve: tuple[bytes, bytes] | None = None, max_frame_bytes: int,
             linger_ms: int = 1000) -> "Channel":
        """A green channel bound at ``endpoint``: an ipc path (made 0600), or
        a tcp endpoint whose port is chosen here (the port given is ignored).

        Args:
            curve: (public, secret) CURVE server keys for a tcp channel.
            max_frame_bytes: ZeroMQ drops a peer sending a larger frame.

        Raises: InvalidArgument (bad endpoint), Unreachable (cannot bind)."""
        where = parse_endpoint(endpoint)
        if cls._green_context is None:
            Channel._green_context = zmq.green.Context()
        sock = cls._green_context.socket(zmq.PAIR)
        chan = cls(sock, None, max_frame_bytes)
        try:
            sock.setsockopt(zmq.LINGER, linger_ms)
            sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes)
            if where.is_tcp:
                if curve is not None:
                    sock.curve_server = True
                    sock.curve_publickey, sock.curve_secretkey = curve
                chan.address = {"transport": "tcp", "port": sock.bind_to_random_port(where.without_port())}
            else:
                sock.bind(endpoint)
                os.chmod(where.path, 0o600)
                chan.address = {"transport": "ipc", "path": where.path}
        except zmq.ZMQError as exc:
            sock.close(0)
            raise errors.Unreachable(f"cannot bind a relay at {endpoint}: {exc}") from exc
        return chan

    @classmethod
    def connect(cls, endpoint: str, *, server_key: str | None = None, linger_ms: int = 500) -> "Channel":
        """A blocking channel connected to ``endpoint``; over tcp with
        ``server_key`` (Z85) it is CURVE-encrypted with a throwaway client key.

        Raises: InvalidArgument (bad endpoint or key), Unreachable."""
        where = parse_endpoint(endpoint)
        sock = zmq.Context.instance().socket(zmq.PAIR)
        try:
            sock.setsockopt(zmq.LINGER, linger_ms)
            if where.is_tcp and server_key:
                try:
                    sock.curve_serverkey = server_key.encode()
                except zmq.ZMQError as exc:
                    sock.close(0)
                    raise errors.InvalidArgument(f"bad relay server key {server_key!r:.60}: {exc}") from exc
                sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()  # the token admits us
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            raise errors.Unreachable(f"cannot connect to the relay at {endpoint}: {exc}") from exc
        return cls(sock, zmq.Poller, None)

    def send(self, *msg: Any) -> None:
        """Send one message (a list).  Raises: Unreachable (the socket failed)."""
        try:
            self._sock.send(msgpack.packb(list(msg), use_bin_type=True))
        except zmq.ZMQError as exc:
            raise errors.Unreachable(f"relay channel: {exc}") from exc

    def recv(self, timeout_s: float) -> list | None:
        """The next message, waiting up to ``timeout_s`` seconds; None when
        none came; BAD for a frame that is not a non-empty msgpack list
        (or is over the bound end's max_frame_bytes)."""
        if not self.wait((), timeout_s)[0]:
            return None
        frame = self._sock.recv()
        if self._max_frame_bytes is not None and len(frame) > self._max_frame_bytes:
            return list(BAD)
        try:
            msg = msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
            return list(BAD)
        return msg if isinstance(msg, list) and msg else list(BAD)

    def wait(self, fds: Iterable[int], timeout_s: float) -> tuple[bool, set[int]]:
        """Wait up to ``timeout_s`` for a message or for one of ``fds`` to
        be readable: (a message is waiting, the readable fds).

        Never select(2): the agent (the bound, green end) may hold file
        descriptors past FD_SETSIZE (1024), where select() fails with
        ValueError, and so may dcctl's caller.  The connected end uses
        zmq_poll (poll(2) inside libzmq); the green end waits in gevent's
        poll (a libev watcher per fd) on the socket's ZMQ_FD, checking
        ZMQ_EVENTS each time it signals (its edge-triggered contract)."""
        fds = list(fds)
        if self._poller_cls is not None:
            poller = self._poller_cls()
            poller.register(self._sock, zmq.POLLIN)
            for fd in fds:
                poller.register(fd, zmq.POLLIN)
            events = dict(poller.poll(int(timeout_s * 1000)))
            return self._sock in events, {fd for fd in events if isinstance(fd, int)}
        signal_fd = self._sock.getsockopt(zmq.FD)
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            now = select.poll()  # poll(2) with no wait: what is ready already
            for fd in fds:
                now.register(fd, select.POLLIN)
            ready = {fd for fd, _ in now.poll(0)}
            waiting = bool(self._sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)
            left_s = deadline - time.monotonic()
            if waiting or ready or left_s <= 0:
                return waiting, ready
            green = gevent.select.poll()  # yields to other greenlets until something signals
            for fd in (signal_fd, *fds):
                green.register(fd, gevent.select.POLLIN)
            green.poll(left_s * 1000)

    def close(self) -> None:
        """Close the socket (pending messages get the linger given)."""
        self._sock.close()
