"""zerorpc and ZeroMQ compatibility: the one module that knows zerorpc
0.6.3's private attributes and ZeroMQ's socket options.

The rest of the wire layer (server, client) asks this module and never
reaches into zerorpc or pyzmq itself; no zerorpc or zmq type leaves the
wire package (callers see ``dcctl.errors`` classes only).  What is private
here, and why we touch it:

- ``obj._events._socket``: the pyzmq socket under a zerorpc Client or
  Server, for linger, CURVE keys, MAXMSGSIZE and the handshake monitor;
- ``events._recv`` / ``events.recv``: the socket reader, replaced by ours
  (``intercept_recv``: zerorpc's reader greenlet closed, the multiplexer
  reads the socket itself) to decode messages tolerantly and to stamp
  requests with the authenticated caller;
- ``Server._inject_builtins`` and ``Server._print_traceback``: overridden
  (``Server``) so the ``_zerorpc_*`` builtins are ours and no traceback is
  ever sent;
- ``BufferedChannel._remote_queue_open_slots`` / ``_remote_can_recv`` (a
  stream's credit) and ``HeartBeatOnChannel._lost_remote`` /
  ``_heartbeat_freq``: bounded stream sends and readers that notice a dead
  server (``bounded_stream``, ``ClientStream``; see "streams" below);
- ``zerorpc.gevent_zmq.Socket``'s send, recv and state check: replaced on
  import by the same logic on plain integers, for speed (dcctl.wire.zrpcfast);
- ``Server._async_task``, ``_acceptor``, ``_methods``, ``_task_pool``,
  ``_multiplexer._active_channels`` / ``_broadcast_queue``: plain calls
  served without a channel stack each, and requests spawned by the reader
  (dcctl.wire.zrpcserve).

It also quiets zerorpc's own log lines that report no problem of ours
(PITFALLS, "zerorpc's own log lines").
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable

import gevent
import zerorpc
import zerorpc.decorators
import zerorpc.events
import zerorpc.patterns
import zmq
from zerorpc.exceptions import LostRemote, RemoteError, TimeoutExpired

from dcctl import errors
from dcctl.wire import zrpcfast, zrpcserve

zrpcfast.install_fast_sockets()  # zerorpc's gevent socket without pyzmq's enum arithmetic

__all__ = ["Client", "Context", "Event", "LostRemote", "RemoteError", "Server", "TimeoutExpired",
           "ZERORPC_NOISE", "ZerorpcNoiseFilter", "abandon_call", "capture", "connect", "frame_buffer", "make_event", "frame_user_id", "intercept_recv",
           "quiet_zerorpc_noise", "rep", "set_client_curve", "set_linger", "set_max_message_bytes",
           "set_server_curve", "socket_of", "stop_call", "stream", "watch_connection",
           "CLOSE_TIMEOUT_SECONDS", "STREAM_STALL_SECONDS", "STREAM_WINDOW_ITEMS", "NOTHING_YET", "ClientStream",
           "StreamPatterns", "bounded_stream"]

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


def watch_connection(peer: Any, on_failure: Callable[[bool], None], *, on_up: Callable[[], None],
                     on_down: Callable[[], None], on_refused: Callable[[], None]) -> Any:
    """A dcctl.wire.monitor.ConnectionWatch of ``peer``'s socket (see its
    callbacks); call its ``stop()`` before closing the peer."""
    from dcctl.wire.monitor import ConnectionWatch
    return ConnectionWatch(socket_of(peer), on_failure, on_up=on_up, on_down=on_down, on_refused=on_refused)


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
    sock = events._socket
    events._recv.close()  # zerorpc's reader greenlet and its queue: the multiplexer's reader reads itself

    def recv(timeout=None):
        while True:
            if timeout is None:
                parts = zrpcfast.read_message(sock)
            else:
                with gevent.Timeout(timeout, TimeoutExpired(timeout)):
                    parts = zrpcfast.read_message(sock)
            event = read(parts)
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
        self._fast = zrpcserve.FastCalls(self, describe)
        self._fast.spawn_from_dispatcher()

    def _acceptor(self):
        self._fast.accept()

    def _async_task(self, initial_event):
        if self._fast.takes(initial_event):  # a plain call: no channel stack (dcctl.wire.zrpcserve)
            return self._fast.serve(initial_event)
        return super()._async_task(initial_event)

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


# ---------------------------------------------------------------- streams
#
# zerorpc streams flow under credit (the reader grants slots, ``_zpc_more``,
# up to its window).  zerorpc 0.6.3's sender waits for a slot for ever (a
# reader that stops taking items holds its server greenlet for ever), and
# its reader's iterator misses a lost heartbeat (a dead server hangs it for
# ever).  ``bounded_stream`` waits at most ``stall_s``, then ends the stream
# with SlowConsumer; ``ClientStream`` polls and raises LostRemote.  After
# its first item the sender keeps one slot of the window free, so the final
# event (STREAM_DONE or ERR) always fits the reader's queue (past its window
# zerorpc's reader loses it, "queue overflow") and never waits for credit.
# The protocol is zerorpc's own: the stock client reads these streams.

#: How long a stream's sender waits for its reader to take items (its
#: window full) before ending the stream with SlowConsumer, seconds.
STREAM_STALL_SECONDS = 30.0

#: A reader's window: items the sender may have in flight (zerorpc's default).
STREAM_WINDOW_ITEMS = 100


def _slots(bufchan: Any) -> int:
    return bufchan._remote_queue_open_slots


def _reserve_final_slot(bufchan: Any) -> None:
    """Let the final event go at once: the reader keeps room for it (see above)."""
    if bufchan._remote_queue_open_slots < 1:
        bufchan._remote_queue_open_slots = 1
        bufchan._remote_can_recv.set()


def _wait_for_slots(bufchan: Any, need: int, stall_s: float, method: str) -> None:
    """Wait until the reader has granted ``need`` slots, at most ``stall_s``.

    Raises: SlowConsumer."""
    if bufchan._remote_queue_open_slots >= need:
        return
    deadline = gevent.get_hub().loop.now() + stall_s
    while bufchan._remote_queue_open_slots < need:
        left = deadline - gevent.get_hub().loop.now()
        if left <= 0:
            raise errors.SlowConsumer(
                f"{method}: the reader took no item for {stall_s:g} s with its window full; stream dropped",
                hint="read the stream as it comes; a follower resumes from the last index it saw")
        bufchan._remote_can_recv.clear()
        bufchan._remote_can_recv.wait(timeout=left)


class _BoundedReqStream(zerorpc.patterns.ReqStream):
    """Server side of a stream whose sender waits at most ``stall_s`` for
    credit, and which always closes the method's generator (its finally
    blocks run: a relayed agent stream is closed) however the call ends:
    done, failed, the reader dropped or lost (LostRemote)."""

    def __init__(self, stall_s: float):
        self.stall_s = stall_s

    def process_call(self, context, channel, req_event, functor):
        context.hook_server_before_exec(req_event)
        xheader = context.hook_get_task_context()
        items = iter(functor(*req_event.args))
        sent = 0
        try:
            for item in items:
                # after the first item, keep one slot free for the final event
                _wait_for_slots(channel, 1 if sent == 0 else 2, self.stall_s, req_event.name)
                channel.emit(u"STREAM", item, xheader)
                sent += 1
            done_event = channel.new_event(u"STREAM_DONE", None, xheader)
            context.hook_server_after_exec(req_event, done_event)
            _reserve_final_slot(channel)
            channel.emit_event(done_event)
        except Exception:
            _reserve_final_slot(channel)  # zerorpc sends the ERR next
            raise
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()


class _BoundedStreamDecorator(zerorpc.decorators.DecoratorBase):
    def __init__(self, functor, pattern):
        super().__init__(functor)
        self.pattern = pattern


def bounded_stream(functor: Callable, stall_s: float = STREAM_STALL_SECONDS) -> Any:
    """A zerorpc stream functor (``functor`` returns an iterable) whose
    sender waits at most ``stall_s`` seconds for its reader's credit, then
    ends the stream with SlowConsumer (see the notes above)."""
    return _BoundedStreamDecorator(functor, _BoundedReqStream(stall_s))


#: What ``ClientStream.next_item`` returns when nothing came within its timeout.
NOTHING_YET = object()


class ClientStream:
    """The reading end of a stream (what a call of a stream method returns
    to a client whose context has ``StreamPatterns``): zerorpc's iterator,
    with a timeout per wait and heartbeat loss noticed.

    ``next_item(timeout_s)``: the next item; NOTHING_YET if none came in
    ``timeout_s``; raises StopIteration at the end, the server's error
    (mapped by the context's middleware), or LostRemote (no heartbeat from
    the server for two intervals).  Iterating waits as long as it takes
    (heartbeats tell a dead server).  ``close()`` ends it (the server sees
    the reader gone within two heartbeats)."""

    def __init__(self, context, bufchan, req_event, first_event, handle_remote_error):
        self._context = context
        self._bufchan = bufchan
        self._hbchan = bufchan.channel
        self._req_event = req_event
        self._pending = first_event
        self._handle_remote_error = handle_remote_error
        self._done = False
        freq = getattr(self._hbchan, "_heartbeat_freq", None) or 5.0
        self._poll_s = max(0.05, min(1.0, freq / 2))
        bufchan.on_close_if = lambda event: event.name == u"STREAM_DONE"

    def _lost(self) -> bool:
        return bool(getattr(self._hbchan, "_lost_remote", False))

    def next_item(self, timeout_s: float | None = None) -> Any:
        if self._done:
            raise StopIteration
        event, self._pending = self._pending, None
        if event is None:
            try:
                event = self._bufchan.recv(timeout=timeout_s)
            except TimeoutExpired:
                if self._lost():
                    self.close()
                    raise LostRemote(f"lost the server during {self._req_event.name} (no heartbeat)") from None
                return NOTHING_YET
        if event.name == u"STREAM":
            return event.args
        self.close()
        if event.name == u"ERR":
            exception = self._handle_remote_error(event)
            self._context.hook_client_after_request(self._req_event, event, exception)
            raise exception
        self._context.hook_client_after_request(self._req_event, event)
        raise StopIteration

    def __iter__(self) -> "ClientStream":
        return self

    def __next__(self) -> Any:
        while True:
            item = self.next_item(self._poll_s)
            if item is not NOTHING_YET:
                return item

    def close(self) -> None:
        if not self._done:
            self._done = True
            self._bufchan.close()


class _ClientReqStream(zerorpc.patterns.ReqStream):
    def process_answer(self, context, channel, req_event, rep_event, handle_remote_error):
        return ClientStream(context, channel, req_event, rep_event, handle_remote_error)


class StreamPatterns:
    """Client middleware: stream answers become ClientStream objects instead
    of zerorpc's iterator (register it on the client's Context)."""

    def client_patterns_list(self, patterns: list) -> list:
        return [_ClientReqStream() if isinstance(p, zerorpc.patterns.ReqStream) else p for p in patterns]
