"""The client side of the wire: ``RpcClient`` / ``connect``.

``RpcClient`` wraps zerorpc's client with a timeout on every call, refuses
to send what a server could not read (InvalidArgument, or ResultTooLarge
over MAX_REQUEST_BYTES, which ZeroMQ would answer by dropping the
connection), and turns remote error names back into ``dcctl.errors``
classes, so callers never catch ``zerorpc.*`` or ``zmq.*`` types.

A call of a stream method (``@expose(stream=True)``) returns a
``StreamIter``: iterate it (no timeout per item; a server that dies is
noticed by its lost heartbeat, Unreachable), and close it (or use it in a
``with``) to stop early.  ``RpcClient.stream`` waits for the first item
without a timeout too (a follower of events that may not come for a while).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable

import gevent
import gevent.event

from dcctl import auth, errors
from dcctl.wire import codec, zrpc
from dcctl.wire.endpoint import parse_endpoint
from dcctl.wire.failover import IDEMPOTENT
from dcctl.wire.ipcpath import ipc_listening
from dcctl.wire.server import DEFAULT_HEARTBEAT_SECONDS

__all__ = ["DEFAULT_TIMEOUT_SECONDS", "RpcClient", "StreamIter", "connect"]

log = logging.getLogger("dcctl.wire")

DEFAULT_TIMEOUT_SECONDS = 30.0


class _ErrorMapper:
    """zerorpc middleware: remote error names become dcctl.errors classes."""

    def client_handle_remote_error(self, event):
        return remote_error(event.args)


def remote_error(args) -> errors.DcError:
    """The dcctl.errors instance for the arguments of a zerorpc ERR event
    ([name, message, detail]; detail's "hint: " line becomes the hint).
    Arguments of any other shape (a broken or hostile server's: a map, a
    number, a short list) become InternalError, never an exception here."""
    name, msg, detail = "InternalError", "", ""
    if isinstance(args, (list, tuple)) and len(args) >= 2:
        name, msg = str(args[0]), str(args[1])
        detail = str(args[2]) if len(args) > 2 and args[2] else ""
    elif isinstance(args, (list, tuple)) and args:
        msg = str(args[0])
    elif args is not None and not isinstance(args, (list, tuple)):
        msg = f"a malformed error answer: {str(args)[:200]}"
    return errors.from_wire(name, msg, _hint_of(detail))


def _hint_of(detail: str) -> str | None:
    for line in detail.splitlines():
        if line.startswith("hint: "):
            return line[len("hint: "):]
    return None


_context: zrpc.Context | None = None


def _client_context() -> zrpc.Context:
    global _context
    if _context is None:
        _context = zrpc.Context()
        _context.register_middleware(_ErrorMapper())
        _context.register_middleware(zrpc.StreamPatterns())
    return _context


def _read_reply(parts: list):
    """The client's socket reader: answers decoded tolerantly (a stock
    server's integer map keys arrive as they are); an answer that cannot be
    decoded becomes an error for its call instead of a silent drop."""
    header, name, args, problem = codec.decode(zrpc.frame_buffer(parts[-1]), request=False)
    header = codec.clean_header(header)
    if header is None or "response_to" not in header:
        log.warning("dropped an undecodable answer (%s)", problem or "no response_to")
        return None
    if problem and not isinstance(name, str):
        name, args = "ERR", ["InternalError", f"the server's answer cannot be decoded: {problem}", ""]
    return zrpc.make_event(name, args, header)


class RpcClient:
    """A client for one dcfleet endpoint; every call has a timeout.

    Args:
        endpoint: ``ipc://PATH`` or ``tcp://HOST:PORT``.
        timeout_s: default seconds to wait for each answer.
        heartbeat_s: zerorpc heartbeat interval in seconds: a server that
            dies or freezes during a call is noticed after two of them
            (Unreachable), whatever the call's timeout.
        keys: CURVE keys (dcctl.auth.ClientKeys) for a tcp:// endpoint that
            requires them; None for ipc:// and insecure loopback endpoints.

    Calls: ``client.call("container_ls")`` or ``client.container_ls()``;
    ``call(..., timeout_s=S)`` overrides the timeout for one call.

    Raises (from calls): the server's DcError subclass; Unauthorized as soon
    as the server refuses the handshake (ZeroMQ's socket monitor reports it)
    rather than after the timeout; CallTimeout when no answer comes in time;
    Unreachable when the ipc socket does not exist, the client was closed
    (``close(reason)``) while the call waited, or the server was lost
    mid-call: at once when its connection closed (the monitor's
    DISCONNECTED: a server killed, even with -9, closes its sockets) or a
    connect attempt was refused (nothing listens), after two heartbeats
    when it vanished without closing (power off, partition); a call that
    changes something then has the hint that it may have run (not after a
    refused connection: nothing was sent); InvalidArgument for an integer
    msgpack cannot carry.  Raises (from the constructor): InvalidArgument (a bad endpoint or CURVE key),
    Unreachable (an endpoint ZeroMQ cannot connect to, e.g. ``tcp://*:PORT``).
    """

    def __init__(self, endpoint: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_SECONDS, keys: auth.ClientKeys | None = None):
        zrpc.quiet_zerorpc_noise()
        self._endpoint = parse_endpoint(endpoint)
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._heartbeat_s = heartbeat_s
        self._keys = keys
        self._refused: str | None = None
        self._refused_event = gevent.event.Event()
        self._closed: str | None = None  # why, once closed
        self._closed_event = gevent.event.Event()
        self._calls: set[gevent.Greenlet] = set()  # in flight
        self._streams: set[StreamIter] = set()  # open
        self._client = None
        self._monitor_task = None
        self._lost: str | None = None  # the connection closed or was refused: why (see _open)
        self._lost_after_up = False  # it was lost after it had been established
        self._lost_event = gevent.event.Event()  # set (and replaced) each time it is lost
        self.reopened = 0  # sockets replaced after a lost connection
        self._open()

    def _open(self) -> None:
        """A new socket and its connection watch.  A lost connection (the
        watch saw the established connection close, or a connect attempt
        refused: nothing listens there) fails the calls waiting on it at
        once, and the socket is then replaced (``_reopen``), so requests
        ZeroMQ queued for the reconnect are dropped with it, never delivered
        late to a restarted server.

        Raises: InvalidArgument (a bad CURVE key), Unreachable (an endpoint
        ZeroMQ cannot connect to)."""
        self._lost = None
        self._client = zrpc.Client(context=_client_context(), timeout=self.timeout_s,
                                   heartbeat=self._heartbeat_s)
        zrpc.set_linger(self._client, 0)  # a close never waits for unsent messages
        keys = self._keys
        try:
            if keys is not None:
                zrpc.set_client_curve(self._client, keys.public, keys.secret, keys.server_public)
            zrpc.intercept_recv(self._client, _read_reply)
            self._monitor_task = zrpc.watch_connection(
                self._client, lambda refused: self._handshake_failed(refused, keys is not None),
                on_up=self._connection_up,
                on_down=lambda: self._connection_lost("lost the connection (the server went away)", True),
                on_refused=lambda: self._connection_lost("connection refused (nothing listens there)", False))
            zrpc.connect(self._client, self.endpoint)
        except errors.DcError:
            self.close()
            raise

    def _connection_up(self) -> None:
        if not self._calls:  # no request is queued on this socket
            self._lost = None

    def _connection_lost(self, why: str, after_up: bool) -> None:
        if self._lost and self._lost_after_up and not after_up and (self._calls or self._streams):
            return  # the calls on the closed connection stay "may have run" (ZeroMQ is retrying)
        self._lost, self._lost_after_up = why, after_up
        event, self._lost_event = self._lost_event, gevent.event.Event()
        event.set()

    @property
    def lost(self) -> str | None:
        """Why the connection is known lost (the server closed it, or
        nothing listens: a connect attempt refused), else None."""
        return self._lost

    def wait_lost(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` seconds for the connection to be lost
        (see ``lost``); True if it was (already, or during the wait)."""
        if self._lost:
            return True
        return self._lost_event.wait(timeout_s)

    def _reopen(self) -> None:
        """Replace the socket (closing it drops what ZeroMQ queued on it);
        the streams read on it end (Unreachable at their next read)."""
        for stream in list(self._streams):
            stream.close()
        if self._monitor_task is not None:
            self._monitor_task.stop()
            self._monitor_task = None
        zrpc.set_linger(self._client, 0)
        self._client.close()
        self.reopened += 1
        self._open()

    def _handshake_failed(self, refused: bool, with_keys: bool) -> None:
        if refused:
            self._refused = "the server refused this client's key"
        elif with_keys:
            self._refused = "the CURVE handshake failed (wrong server key, or the server is not CURVE)"
        else:
            self._refused = "the server requires CURVE keys (give a key pair and the server's key)"
        self._refused_event.set()

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call ``method`` with ``args``; wait ``timeout_s`` (default the
        client's) seconds for the answer (for a stream method: its first
        item; the result is then a StreamIter).  Raises: see the class doc."""
        return self._call(method, args, self.timeout_s if timeout_s is None else timeout_s)

    def stream(self, method: str, *args: Any) -> "StreamIter":
        """Send a call of the stream method ``method`` with ``args`` and
        return its StreamIter at once; its first ``next`` waits for the
        first item as long as it takes (a dead or frozen server is noticed
        by its heartbeat: Unreachable), and raises the call's own error if
        the server refused it.  A method that answers with a plain result
        gives a StreamIter of that one item.  Raises (from ``next``): see
        the class doc (never CallTimeout)."""
        if self._closed:
            raise errors.Unreachable(f"{self.endpoint}: {self._closed}")
        # capture: the call's error is the reader's to raise (StreamIter._started), not gevent's to print
        return StreamIter(self, method, gevent.spawn(zrpc.capture, self._call, method, args, None))

    def _lost_error(self, method: str, why: str) -> errors.Unreachable:
        hint = None
        if self._lost_after_up and method not in IDEMPOTENT:  # the request may have reached the server
            hint = f"{method} may have run: check before calling it again"
        return errors.Unreachable(f"{self.endpoint}: {why} during {method}", hint=hint)

    def _call(self, method: str, args: tuple, timeout: float | None) -> Any:
        if self._closed:
            raise errors.Unreachable(f"{self.endpoint}: {self._closed}")
        if self._endpoint.is_ipc and not os.path.exists(self._endpoint.path):
            raise errors.Unreachable(f"no server at {self.endpoint} (socket missing)")
        codec.check_wire_ints(list(args), f"{method}: argument")
        codec.check_request(method, args)
        if self._refused:
            raise errors.Unauthorized(f"{self.endpoint}: {self._refused}")
        if self._lost:
            if self._calls:  # calls on the lost connection are still being stopped
                raise errors.Unreachable(f"{self.endpoint}: {self._lost}", hint="is the server running?")
            self._reopen()  # a fresh socket: nothing queued for a reconnect
        lost_event = self._lost_event
        # The call runs in a task of its own, so that a refused handshake, a
        # lost connection or a close() ends the wait at once, and stopping
        # the task never throws into the caller's greenlet.
        task = gevent.spawn(zrpc.capture, self._client, method, *args, timeout=timeout)
        self._calls.add(task)
        lost = False
        try:
            gevent.wait([task, self._refused_event, self._closed_event, lost_event], count=1)
            if not task.ready():
                zrpc.stop_call(task)
                if self._closed:
                    raise errors.Unreachable(f"{self.endpoint}: {self._closed} during {method}")
                if self._refused:
                    raise errors.Unauthorized(f"{self.endpoint}: {self._refused}")
                lost = True
                raise self._lost_error(method, self._lost or "lost the connection")
            ok, value = task.value
            if not ok:
                raise value
            if isinstance(value, zrpc.ClientStream):
                return StreamIter(self, method, value)
            return value
        except zrpc.TimeoutExpired as exc:
            if self._closed:
                raise errors.Unreachable(f"{self.endpoint}: {self._closed} during {method}") from exc
            if self._endpoint.is_ipc and not ipc_listening(self._endpoint.path):
                raise errors.Unreachable(f"no server listens at {self.endpoint} (a stale socket)") from exc
            raise errors.CallTimeout(
                f"no answer from {self.endpoint} to {method} within {timeout:g} s",
                hint="is the server running and reachable?") from exc
        except zrpc.LostRemote as exc:
            raise errors.Unreachable(f"lost {self.endpoint} during {method} (no heartbeat)") from exc
        except zrpc.RemoteError as exc:  # not mapped by the middleware (should not happen)
            raise errors.from_wire(exc.name, exc.msg, _hint_of(exc.traceback or "")) from exc
        finally:
            self._calls.discard(task)
            if not task.ready():  # the caller itself was killed
                zrpc.abandon_call(task)
            if lost and not self._calls and not self._closed and self._lost:
                self._reopen()  # drop what ZeroMQ queued for the reconnect

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)
        return lambda *args, **kw: self.call(method, *args, **kw)

    def close(self, reason: str = "client closed") -> None:
        """Close the connection; never blocks for long (linger 0, each step
        bounded).  Calls still waiting on this client fail at once with
        Unreachable(``reason``)."""
        if self._closed:
            return
        self._closed = reason
        self._closed_event.set()
        for task in list(self._calls):
            zrpc.stop_call(task)
        for stream in list(self._streams):
            stream.close()
        if self._monitor_task is not None:
            self._monitor_task.stop()  # before the socket closes: it unbinds the monitor
            self._monitor_task = None
        if self._client is not None:
            zrpc.set_linger(self._client, 0)
            self._client.close()

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StreamIter:
    """The items of a stream method's answer, as they come.

    Iterating waits as long as it takes for each item.  Raises (from
    ``next``): the server's DcError (SlowConsumer when the server dropped
    this reader for taking no items past its stall limit); Unreachable when
    the server's heartbeat was lost (it died or froze) or the client was
    closed.  ``close()`` stops early (the server notices within two of its
    heartbeats and closes its end); a StreamIter is a context manager."""

    def __init__(self, client: RpcClient, method: str, raw: Any):
        self._client = client
        self.method = method
        self._raw = raw
        self._poll_s = 0.5
        self._lost_event = client._lost_event  # set when the connection it reads is lost
        client._streams.add(self)

    def __iter__(self) -> "StreamIter":
        return self

    def _started(self) -> None:
        """Wait for the answer of a call sent by RpcClient.stream."""
        task, self._raw = self._raw, iter(())
        try:
            ok, value = task.get()
            if not ok:
                raise value
        except BaseException:
            self.close()
            raise
        if isinstance(value, StreamIter):
            self._client._streams.discard(value)
            self._raw = value._raw
        else:
            self._raw = iter([value])

    def __next__(self) -> Any:
        client = self._client
        if isinstance(self._raw, gevent.Greenlet):
            self._started()
        while True:
            if client._closed:
                self.close()
                raise errors.Unreachable(f"{client.endpoint}: {client._closed} during {self.method}")
            if self._lost_event.is_set():
                self.close()
                raise client._lost_error(self.method, client._lost or "its connection closed")
            try:
                if isinstance(self._raw, zrpc.ClientStream):
                    item = self._raw.next_item(self._poll_s)
                else:
                    item = next(self._raw)
            except StopIteration:
                self.close()
                raise
            except errors.DcError:
                self.close()
                raise
            except zrpc.LostRemote as exc:
                self.close()
                raise errors.Unreachable(f"lost {client.endpoint} during {self.method} (no heartbeat)") from exc
            except zrpc.RemoteError as exc:  # not mapped by the middleware (should not happen)
                self.close()
                raise errors.from_wire(exc.name, exc.msg, _hint_of(exc.traceback or "")) from exc
            if item is not zrpc.NOTHING_YET:
                return item

    def close(self) -> None:
        """Stop reading; idempotent."""
        self._client._streams.discard(self)
        if isinstance(self._raw, gevent.Greenlet):  # the call not answered yet
            self._raw.kill(block=True, timeout=zrpc.CLOSE_TIMEOUT_SECONDS)
            self._raw = iter(())
            return
        close = getattr(self._raw, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> "StreamIter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def connect(endpoint: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
            keys: auth.ClientKeys | None = None) -> RpcClient:
    """Open an RpcClient to ``endpoint`` (see RpcClient)."""
    return RpcClient(endpoint, timeout_s=timeout_s, keys=keys)
