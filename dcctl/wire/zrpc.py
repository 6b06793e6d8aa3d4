"""zerorpc and ZeroMQ compatibility: the one module that knows zerorpc
0.6.3's private attributes and ZeroMQ's socket options.

The rest of the wire layer (server, client) asks this module and never
reaches into zerorpc or pyzmq itself; no zerorpc or zmq type leaves the
wire package (callers see ``dcctl.errors`` classes only).  What is private
here, and why we touch it:

- ``obj._events._socket``: the pyzmq socket under a zerorpc Client or
  Server, for linger, CURVE keys, MAXMSGSIZE and the handshake monitor;
- ``events._recv`` / ``events.recv``: the socket reader, replaced by ours
  (``intercept_recv``) to decode messages tolerantly and to stamp requests
  with the authenticated caller;
- ``Server._inject_builtins`` and ``Server._print_traceback``: overridden
  (``Server``) so the ``_zerorpc_*`` builtins are ours and no traceback is
  ever sent;
- ``zerorpc.gevent_zmq.Socket``'s send, recv and state check: replaced (on
  import) by the same logic on plain integers, for speed (the last section).

It also quiets zerorpc's own log lines that report no problem of ours
(PITFALLS, "zerorpc's own log lines").
"""
from __future__ import annotations

import errno
import logging
from typing import Any, Callable, Iterable

import gevent
import zerorpc
import zerorpc.events
from zerorpc import gevent_zmq
import zmq
from zerorpc.exceptions import LostRemote, RemoteError, TimeoutExpired

from dcctl import errors

__all__ = ["Client", "Context", "Event", "LostRemote", "RemoteError", "Server", "TimeoutExpired",
           "ZERORPC_NOISE", "ZerorpcNoiseFilter", "abandon_call", "capture", "connect", "frame_buffer", "make_event", "frame_user_id", "intercept_recv",
           "quiet_zerorpc_noise", "rep", "set_client_curve", "set_linger", "set_max_message_bytes",
           "set_server_curve", "socket_of", "stop_call", "stream", "watch_handshake_failures",
           "fast_sockets_installed", "install_fast_sockets",
           "CLOSE_TIMEOUT_SECONDS"]

Client = zerorpc.Client
Context = zerorpc.Context
Event = zerorpc.events.Event
rep = zerorpc.rep
stream = zerorpc.stream
CLOSE_TIMEOUT_SECONDS = 2.0

# ---------------------------------------------------------------- zerorpc's noise

#: zerorpc 0.6.3's own log lines that report no problem of ours (PITFALLS,
#: "zerorpc's own log lines"): (logger name, start of the message).
#:
#: * gevent_zmq's "BUG catching up after missing event" (ERROR, every few
#:   seconds on an idle socket): its poller woke late and caught up; nothing
#:   was lost.
#: * the multiplexer's "unable to route event" (WARNING): a reply or
#:   heartbeat for a call whose caller gave up (a late answer), or for a
#:   channel of a peer's previous process.
ZERORPC_NOISE = (
    ("zerorpc.gevent_zmq", "/!\\ gevent_zeromq BUG /!\\ catching up after missing event"),
    ("zerorpc.channel", "zerorpc.ChannelMultiplexer, unable to route event"),
)


class ZerorpcNoiseFilter(logging.Filter):
    """Demotes exactly the messages in ZERORPC_NOISE to DEBUG (dropped
    unless their logger is enabled for DEBUG); every other record passes
    unchanged."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG or not isinstance(record.msg, str) \
                or not record.msg.startswith(self.prefixes):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def quiet_zerorpc_noise() -> None:
    """Install ZerorpcNoiseFilter on zerorpc's loggers (idempotent).  Every
    Service and RpcClient calls it, so each server and client entry point
    has it."""
    for name in {n for n, _ in ZERORPC_NOISE}:
        logger = logging.getLogger(name)
        if not any(isinstance(f, ZerorpcNoiseFilter) for f in logger.filters):
            logger.addFilter(ZerorpcNoiseFilter(tuple(m for n, m in ZERORPC_NOISE if n == name)))


# ---------------------------------------------------------------- the socket

def socket_of(peer: Any) -> Any:
    """The ZeroMQ socket under a zerorpc Client or Server."""
    return peer._events._socket


def set_linger(peer: Any, linger_ms: int = 0) -> None:
    """Set the socket's linger (0: a close never waits for unsent
    messages); a socket already closed is left alone."""
    try:
        socket_of(peer).linger = linger_ms
    except zmq.ZMQError:
        pass


def set_max_message_bytes(peer: Any, limit_bytes: int) -> None:
    """ZeroMQ drops (and disconnects) any peer sending a message over ``limit_bytes``."""
    socket_of(peer).setsockopt(zmq.MAXMSGSIZE, limit_bytes)


def set_client_curve(peer: Any, public: bytes, secret: bytes, server_public: bytes) -> None:
    """CURVE client keys for the socket under ``peer``.

    Raises: InvalidArgument (a key ZeroMQ refuses: not 40 Z85 characters)."""
    sock = socket_of(peer)
    try:
        sock.curve_serverkey = server_public
        sock.curve_publickey = public
        sock.curve_secretkey = secret
    except zmq.ZMQError as exc:
        raise errors.InvalidArgument(f"bad CURVE key: {exc}",
                                     hint="a key is a key file or 40 Z85 characters") from exc


def set_server_curve(peer: Any, public: bytes, secret: bytes) -> None:
    """Make the socket under ``peer`` a CURVE server with this key pair.

    Raises: InvalidArgument (a key ZeroMQ refuses)."""
    sock = socket_of(peer)
    try:
        sock.curve_server = True
        sock.curve_secretkey = secret
        sock.curve_publickey = public
    except zmq.ZMQError as exc:
        raise errors.InvalidArgument(f"bad CURVE key pair: {exc}") from exc


def connect(peer: Any, endpoint: str) -> None:
    """``peer.connect(endpoint)``.

    Raises: Unreachable (ZeroMQ refused the endpoint, e.g. a bind address
    like ``tcp://*:7000``), never zmq.ZMQError."""
    try:
        peer.connect(endpoint)
    except zmq.ZMQError as exc:
        raise errors.Unreachable(f"cannot connect to {endpoint}: {exc}",
                                 hint="give the server's address, not a bind address") from exc


def watch_handshake_failures(peer: Any, on_failure: Callable[[bool], None]) -> gevent.Greenlet:
    """Watch the CURVE handshakes of ``peer``'s socket (ZeroMQ's socket
    monitor) in a greenlet: each failed one calls ``on_failure(refused)``,
    ``refused`` True when the server's ZAP handler refused our key (False:
    a protocol failure, e.g. a wrong server key or a server without CURVE).
    Kill the greenlet to stop watching; it closes its monitor socket."""
    from zmq.utils.monitor import recv_monitor_message
    mon = socket_of(peer).get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                             | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
    mon.linger = 0

    def watch() -> None:
        try:
            while True:
                on_failure(recv_monitor_message(mon)["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        except (zmq.ZMQError, gevent.GreenletExit):
            pass
        finally:
            mon.linger = 0
            mon.close()

    return gevent.spawn(watch)


# ---------------------------------------------------------------- the reader

def frame_buffer(frame: Any) -> Any:
    """The bytes of a received frame, as zerorpc's unpacker takes them."""
    return zerorpc.events.get_pyzmq_frame_buffer(frame)


def frame_user_id(frame: Any) -> str | None:
    """The frame's ZAP User-Id (the CURVE key our ZAP handler accepted), or None."""
    try:
        return frame.get("User-Id") or None
    except zmq.ZMQError:
        return None


def make_event(name: Any, args: Any, header: dict, identity: Iterable | None = None) -> Any:
    """A zerorpc Event (what a socket reader returns) with a routing identity."""
    event = Event(name, args, None, header)
    event.identity = identity
    return event


def intercept_recv(peer: Any, read: Callable[[list], Any]) -> None:
    """Replace the socket reader of ``peer`` (a zerorpc Client or Server):
    each received message (its list of frames, the payload last) goes to
    ``read``, which returns the Event to hand to zerorpc, or None to drop
    the message and read the next one."""
    events = peer._events
    receive = events._recv

    def recv(timeout=None):
        while True:
            event = read(receive(timeout=timeout))
            if event is not None:
                return event

    events.recv = recv


# ---------------------------------------------------------------- server and calls

class Server(zerorpc.Server):
    """zerorpc.Server whose ``_zerorpc_*`` builtins are the table's own
    (zerorpc's are not injected) and whose failed calls are answered with
    ``describe(exc_infos) -> (name, message, detail)``, never a traceback.
    ``describe`` gets zerorpc's LostRemote (the caller went away) as well."""

    def __init__(self, methods: dict, *, describe: Callable[[tuple], tuple[str, str, str]], **kw):
        super().__init__(methods, **kw)
        self._describe = describe

    def _inject_builtins(self):
        pass  # the Service puts its own in the table

    def _print_traceback(self, protocol_v1, exc_infos):
        name, msg, detail = self._describe(tuple(exc_infos))
        return (msg,) if protocol_v1 else (name, msg, detail)


def capture(fn: Callable, *args, **kw) -> tuple[bool, Any]:
    """(True, result) or (False, exception): a greenlet body whose failure is
    the caller's to raise, not the hub's to print."""
    try:
        return True, fn(*args, **kw)
    except Exception as exc:  # re-raised by the caller
        return False, exc


def stop_call(task: gevent.Greenlet) -> None:
    """End a call's task: TimeoutExpired, thrown where it waits for the
    answer, takes zerorpc's own path that closes the call's channel and its
    heartbeat (a plain kill would leave them behind)."""
    task.kill(TimeoutExpired(0, "call abandoned"), block=True, timeout=CLOSE_TIMEOUT_SECONDS)
    if not task.ready():
        task.kill(block=False)


def abandon_call(task: gevent.Greenlet) -> None:
    """Stop a call's task without waiting (its caller was itself killed)."""
    task.kill(TimeoutExpired(0, "call abandoned"), block=False)


# ---------------------------------------------------------------- zerorpc's gevent socket, without enum arithmetic
#
# pyzmq 23+ made its constants ``IntFlag`` members: every ``events & POLLIN``
# and ``flags | NOBLOCK`` in zerorpc 0.6.3's gevent socket (send, recv and
# the state check after each) is a Python-level enum operation, about a tenth
# of the CPU of a trivial call at each end (bench/rpc, bench/scale).  The
# three methods below are zerorpc's own logic on plain integers: the same
# non-blocking tries, the same forced state check after each send and recv,
# the same 1 s catch-up wait and log line.

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


def fast_sockets_installed() -> bool:
    """Whether zerorpc's gevent socket runs the integer versions above."""
    return gevent_zmq.Socket.recv is _fast_recv


def install_fast_sockets() -> None:
    """Put the integer send, recv and state check on zerorpc's gevent
    socket class (idempotent; done when this module is imported)."""
    gevent_zmq.Socket._on_state_changed = _fast_on_state_changed
    gevent_zmq.Socket.send = _fast_send
    gevent_zmq.Socket.recv = _fast_recv


install_fast_sockets()
