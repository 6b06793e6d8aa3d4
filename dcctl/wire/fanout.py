"""The lean fan-out client: one request to many servers, the replies
gathered, without a zerorpc Client (socket, channel, heartbeat greenlets,
handshake monitor) per server.

``FanoutClient.call_many(targets, method, args, timeout_s)`` sends one
zerorpc request to each target and waits for every answer up to
``timeout_s``.  Under it are two ZeroMQ ROUTER sockets (one plain,
for ``ipc://``; one CURVE client, for ``tcp://`` servers with a key; one
more of a kind only for a second target at an endpoint already held) that
connect to every server with ``ZMQ_CONNECT_ROUTING_ID`` set per connect, so
each reply's first frame names its connection; one reader greenlet per
socket takes every reply.  CURVE's server key is a socket option read at
each connect, so it is set per server just before its connect.

It speaks zerorpc's protocol v3 exactly as the servers' stock zerorpc
expects: a request ``[{message_id, v: 3}, method, args]``; answers carry
``response_to``: ``OK [result]``, ``ERR [name, message, detail]`` (decoded
into the same dcctl.errors classes as RpcClient's), ``_zpc_hb`` (the
server's heartbeat).  A call still waiting after a heartbeat interval is
sent ``_zpc_hb`` every interval, so the server keeps its channel; a server
that sends nothing for three intervals is lost (Unreachable), as with
RpcClient's heartbeats.

Guarantees: a reply counts only for the call whose message id and
connection it names (a late reply to an earlier call is dropped and counted
in ``late_replies``); at the deadline the calls left are CallTimeout and the
connection of each is closed once no other call waits on it (its queued
request dropped: a server that never answered costs nothing afterwards;
the next call connects again); a
server that refuses our key (the socket monitor's HANDSHAKE_FAILED) fails
its call at once with Unauthorized, one whose connection drops mid-call
(or that sends a message over MAX_RESULT_BYTES and its envelope: ZeroMQ
drops it unread) with Unreachable; nothing grows per call (``retain`` drops the connections
of servers no longer wanted).
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from typing import Any, Iterable

import gevent
import gevent.event
import msgpack
import zmq

from dcctl import errors
from dcctl.wire import codec, zrpc, zrpcfast
from dcctl.wire.client import remote_error
from dcctl.wire.endpoint import parse_endpoint
from dcctl.wire.ipcpath import ipc_listening
from dcctl.wire.server import DEFAULT_HEARTBEAT_SECONDS

__all__ = ["Target", "FanoutClient"]

log = logging.getLogger("dcctl.wire")

_MONITORED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
              | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_DISCONNECTED
              | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECT_RETRIED)
_HANDSHAKE_FAILED = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_ids = itertools.count(1)  # monitor addresses and message ids, unique in this process
# plain integers: pyzmq's flag enums cost an enum operation per frame on the hot path
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_MORE_NOW = _NOBLOCK | _SNDMORE
#: room for an answer's header, name and the list around its result
_ENVELOPE_BYTES = 64 * 1024


def _send(sock: Any, rid: bytes, payload: bytes) -> None:
    """One message [routing id, "", payload] without waiting (zmq.ZMQError if it cannot go now)."""
    sock.send(rid, _MORE_NOW)
    sock.send(b"", _MORE_NOW)
    sock.send(payload, _NOBLOCK)


@dataclasses.dataclass(frozen=True)
class Target:
    """One server to call: ``name`` (the caller's key for its answer),
    ``endpoint`` (``ipc://PATH``, or ``tcp://HOST:PORT`` with
    ``server_key``, its CURVE public key in Z85, 40 bytes)."""

    name: str
    endpoint: str
    server_key: bytes | None = None


class _Conn:
    __slots__ = ("target", "kind", "rid", "refused", "waiting", "up")

    def __init__(self, target: Target, kind: str, rid: bytes):
        # kind: the key of its socket in FanoutClient._socks ("plain", "curve", "curve#1"...)
        self.target, self.kind, self.rid, self.refused = target, kind, rid, None
        self.waiting = 0  # calls sent on it and not over
        self.up = False  # a handshake succeeded on it (so a retried connect is a reconnect)


class _Call:
    __slots__ = ("conn", "method", "sent", "seen", "outcome", "round")

    def __init__(self, conn: _Conn, method: str, now: float, round_: "_Round"):
        self.conn, self.method, self.sent, self.seen, self.outcome, self.round = conn, method, now, now, None, round_


class _Round:
    __slots__ = ("left", "done")

    def __init__(self, left: int):
        self.left, self.done = left, gevent.event.Event()
        if left == 0:
            self.done.set()


class FanoutClient:
    """Calls many servers at once over two shared sockets (see the module doc).

    Args:
        client_pair: our CURVE key pair (public, secret), Z85 bytes, for
            ``tcp://`` targets; None: such targets are Unreachable.
        heartbeat_s: zerorpc heartbeat interval, seconds (the servers').

    Attributes: ``late_replies`` (replies dropped because their call was
    over), ``connections`` (servers connected now).
    """

    def __init__(self, client_pair: tuple[bytes, bytes] | None = None,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_SECONDS):
        self._pair = client_pair
        self.heartbeat_s = heartbeat_s
        self._ctx = zrpc.Context()
        self._socks: dict[str, Any] = {}
        self._monitors: dict[str, Any] = {}
        self._tasks: list[gevent.Greenlet] = []
        self._conns: dict[str, _Conn] = {}  # target name -> its connection
        self._by_endpoint: dict[tuple[str, str], _Conn] = {}  # (socket key, endpoint) -> connection
        self._calls: dict[bytes, _Call] = {}  # message id -> call waiting for its answer
        self._rids = itertools.count(1)
        self._base = os.urandom(6).hex().encode()
        self._beater: gevent.Greenlet | None = None
        self._closed = False
        self.late_replies = 0

    @property
    def connections(self) -> int:
        return len(self._conns)

    # ------------------------------------------------------------ sockets
    def _slot(self, kind: str, endpoint: str) -> str:
        """The key of a socket of ``kind`` with no connection to
        ``endpoint`` yet.  ZeroMQ's monitor names a connection by its
        endpoint alone, and a disconnect closes every connection to it, so
        two targets at one endpoint (a host that registered with another
        host's endpoint) each get their own socket: neither's handshake
        failure, loss or timeout touches the other's calls."""
        slot, n = kind, 0
        while (slot, endpoint) in self._by_endpoint:
            n += 1
            slot = f"{kind}#{n}"
        self._sock(slot)
        return slot

    def _sock(self, kind: str) -> Any:
        sock = self._socks.get(kind)
        if sock is None:
            sock = self._ctx.socket(zmq.ROUTER)
            sock.linger = 0
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
            # an honest server's answer is at most MAX_RESULT_BYTES (check_result) and its
            # envelope; ZeroMQ drops a peer sending more, before it is buffered
            sock.setsockopt(zmq.MAXMSGSIZE, codec.MAX_RESULT_BYTES + _ENVELOPE_BYTES)
            if kind.partition("#")[0] == "curve":
                sock.curve_publickey, sock.curve_secretkey = self._pair
            mon = sock.get_monitor_socket(_MONITORED, addr=f"inproc://dcfleet-fanout-{os.getpid()}-{next(_ids)}")
            mon.linger = 0
            self._socks[kind], self._monitors[kind] = sock, mon
            self._tasks += [gevent.spawn(self._read, sock), gevent.spawn(self._watch, kind, mon)]
        return sock

    def _connect(self, target: Target) -> _Conn:
        """The connection to ``target``, made (or made again, if its
        endpoint or key changed) now.  Raises: Unreachable, InvalidArgument."""
        conn = self._conns.get(target.name)
        if conn is not None and conn.target == target and conn.refused is None:
            return conn
        if conn is not None:
            self._disconnect(target.name)
        ep = parse_endpoint(target.endpoint)
        if target.server_key is not None:
            if not ep.is_tcp or self._pair is None:
                raise errors.Unreachable(f"{target.name} has a key but no CURVE endpoint this client can verify")
            kind = "curve"
        elif ep.is_ipc:
            kind = "plain"
        else:
            raise errors.Unreachable(f"{target.name}: a tcp:// endpoint needs the server's key")
        kind = self._slot(kind, target.endpoint)
        sock = self._socks[kind]
        conn = _Conn(target, kind, b"fan-%d" % next(self._rids))
        try:
            if target.server_key is not None:
                sock.curve_serverkey = target.server_key  # read by this connect
            sock.setsockopt(zmq.CONNECT_ROUTING_ID, conn.rid)
            sock.connect(target.endpoint)
        except zmq.ZMQError as exc:
            raise errors.Unreachable(f"cannot connect to {target.endpoint}: {exc}") from exc
        self._conns[target.name] = conn
        self._by_endpoint[(kind, target.endpoint)] = conn
        return conn

    def _disconnect(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is None:
            return
        if self._by_endpoint.get((conn.kind, conn.target.endpoint)) is conn:
            del self._by_endpoint[(conn.kind, conn.target.endpoint)]
        try:
            self._socks[conn.kind].disconnect(conn.target.endpoint)  # linger 0: its queued messages go
        except zmq.ZMQError:
            pass

    def retain(self, names: Iterable[str]) -> None:
        """Close the connections of every server not in ``names`` (servers
        that left); the others stay for the next call."""
        keep = set(names)
        for name in [n for n in self._conns if n not in keep]:
            self._disconnect(name)

    # ------------------------------------------------------------ calls
    def call_many(self, targets: list[Target], method: str, args: list | tuple = (),
                  timeout_s: float = 10.0) -> dict[str, tuple[bool, Any]]:
        """Call ``method(*args)`` on every target at once; wait for the
        answers at most ``timeout_s`` seconds.

        Returns: {target name: (True, result) | (False, error)}, where error
        is a dcctl.errors instance: the server's own error, CallTimeout (no
        answer in time), Unreachable (no server at an ipc path, a lost
        connection or heartbeat, a closed client), Unauthorized (the server
        refused our key, or the CURVE handshake failed), InvalidArgument or
        ResultTooLarge (arguments the wire cannot carry: every target).
        """
        if self._closed:
            return {t.name: (False, errors.Unreachable("the fan-out client is closed")) for t in targets}
        out: dict[str, tuple[bool, Any]] = {}
        try:
            codec.check_wire_ints(list(args), f"{method}: argument")
            codec.check_request(method, tuple(args))
            tail = msgpack.packb(method, use_bin_type=True) + msgpack.packb(list(args), use_bin_type=True)
        except errors.DcError as exc:
            return {t.name: (False, exc) for t in targets}
        now = time.monotonic()
        round_ = _Round(0)
        sent: dict[bytes, _Call] = {}
        for t in targets:
            try:
                conn = self._connect(t)
                if conn.refused:
                    raise errors.Unauthorized(f"{t.endpoint}: {conn.refused}")
                ep = parse_endpoint(t.endpoint)
                if ep.is_ipc and not os.path.exists(ep.path):
                    raise errors.Unreachable(f"no server at {t.endpoint} (socket missing)")
                msgid = b"%s%08x" % (self._base, next(_ids))
                payload = b"\x93" + msgpack.packb({"message_id": msgid, "v": 3}, use_bin_type=True) + tail
                _send(self._socks[conn.kind], conn.rid, payload)
            except errors.DcError as exc:
                out[t.name] = (False, exc)
                continue
            except zmq.ZMQError as exc:  # EHOSTUNREACH (no such peer) or EAGAIN (its queue is full)
                self._disconnect(t.name)
                out[t.name] = (False, errors.Unreachable(f"cannot send to {t.endpoint}: {exc}"))
                continue
            call = _Call(conn, method, now, round_)
            sent[msgid] = self._calls[msgid] = call
            conn.waiting += 1
            round_.left += 1
        self._refresh()
        if round_.left:
            round_.done.clear()
            if self._beater is None or self._beater.dead:
                self._beater = gevent.spawn(self._beat)
        try:
            round_.done.wait(timeout_s)
        finally:
            for msgid, call in sent.items():
                self._calls.pop(msgid, None)
                call.conn.waiting -= 1
                if call.outcome is None:
                    call.outcome = (False, self._timed_out(call, timeout_s))
                    if call.conn.waiting == 0 and self._conns.get(call.conn.target.name) is call.conn:
                        self._disconnect(call.conn.target.name)  # its queued request goes with it
                out[call.conn.target.name] = call.outcome
        return out

    def _refresh(self) -> None:
        """After sends without waiting: wake the readers if a reply came meanwhile."""
        for sock in self._socks.values():
            if not sock.closed:
                zrpcfast.refresh_state(sock)

    def _timed_out(self, call: _Call, timeout_s: float) -> errors.DcError:
        ep = parse_endpoint(call.conn.target.endpoint)
        if ep.is_ipc and not ipc_listening(ep.path):
            return errors.Unreachable(f"no server listens at {call.conn.target.endpoint} (a stale socket)")
        return errors.CallTimeout(f"no answer from {call.conn.target.endpoint} to {call.method} within "
                                  f"{timeout_s:g} s", hint="is the server running and reachable?")

    def _finish(self, call: _Call, outcome: tuple[bool, Any]) -> None:
        if call.outcome is None:
            call.outcome = outcome
            call.round.left -= 1
            if call.round.left <= 0:
                call.round.done.set()

    def _read(self, sock: Any) -> None:
        """The socket's reader: every answer to its call, the rest dropped."""
        while True:
            try:
                frame = sock.recv(copy=False)  # waits; the rest of a message is there at once
                frames = [frame.bytes]
                while frame.more:
                    frame = sock.recv(_NOBLOCK, copy=False)
                    frames.append(frame.bytes)
                zrpcfast.refresh_state(sock)  # what the NOBLOCK reads may have consumed
            except (zmq.ZMQError, gevent.GreenletExit):
                return
            header, name, args, problem = codec.decode(frames[-1], request=False)
            header = codec.clean_header(header)
            call = self._calls.get(header.get("response_to")) if header else None
            if call is None or call.conn.rid != frames[0]:
                self.late_replies += 1
                continue
            call.seen = time.monotonic()
            try:
                self._answer(call, name, args, problem)
            except Exception as exc:  # a bug here must not end the reader: every later call would time out
                log.exception("the answer to %s from %s could not be taken", call.method, call.conn.target.endpoint)
                self._finish(call, (False, errors.InternalError(
                    f"the server's answer could not be taken: {type(exc).__name__}")))

    def _answer(self, call: _Call, name: Any, args: Any, problem: str | None) -> None:
        """Give ``call`` the outcome its answer (name, args) says, if it says one."""
        if problem and not isinstance(name, str):
            self._finish(call, (False, errors.InternalError(f"the server's answer cannot be decoded: {problem}")))
        elif name == "OK":
            self._finish(call, (True, args[0] if isinstance(args, (list, tuple)) and args else None))
        elif name == "ERR":
            self._finish(call, (False, remote_error(args)))
        elif name in ("STREAM", "STREAM_DONE"):
            self._finish(call, (False, errors.InvalidArgument(
                f"{call.method} is a stream method; a fan-out takes plain methods")))

    def _watch(self, kind: str, mon: Any) -> None:
        """The socket monitor: a refused handshake or a dropped connection
        fails the calls waiting on that connection at once."""
        from zmq.utils.monitor import parse_monitor_message
        while True:
            try:
                msg = parse_monitor_message(mon.recv_multipart())
            except (zmq.ZMQError, gevent.GreenletExit):
                return
            endpoint = msg["endpoint"].decode(errors="replace") if isinstance(msg["endpoint"], bytes) \
                else str(msg["endpoint"])
            conn = self._by_endpoint.get((kind, endpoint))
            if conn is None:
                continue
            event = msg["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                conn.up = True
                continue
            if event & _HANDSHAKE_FAILED:
                conn.refused = ("the server refused this client's key" if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                else "the CURVE handshake failed (wrong server key, or the server is not CURVE)")
                error: errors.DcError = errors.Unauthorized(f"{endpoint}: {conn.refused}")
            elif event == zmq.EVENT_CONNECT_RETRIED:
                if conn.up:
                    continue  # a reconnect after a loss: its calls were failed at the loss
                # never connected and the connect is being retried: nothing
                # listens there (a killed server's port or socket file)
                error = errors.Unreachable(f"no server at {endpoint} (connection refused)")
            else:
                error = errors.Unreachable(f"lost {endpoint} (its connection closed)")
            for call in [c for c in self._calls.values() if c.conn is conn]:
                self._finish(call, (False, error))
            if not event & _HANDSHAKE_FAILED and self._conns.get(conn.target.name) is conn:
                # a lost or refused connection is made anew by the next call:
                # a request sent on this one would wait in ZeroMQ's queue for a
                # reconnect (and reach a restarted server late), so a call
                # to a server killed since the last fan-out fails at once too
                self._disconnect(conn.target.name)

    def _beat(self) -> None:
        """While calls wait: a heartbeat to each call older than an
        interval, every interval; a call whose server sent nothing for
        three intervals is lost."""
        while self._calls:
            gevent.sleep(self.heartbeat_s)
            now = time.monotonic()
            for msgid, call in list(self._calls.items()):
                if call.outcome is not None:
                    continue
                if now - call.seen > 3 * self.heartbeat_s:
                    self._finish(call, (False, errors.Unreachable(
                        f"lost {call.conn.target.endpoint} during {call.method} (no heartbeat)")))
                    continue
                header = {"message_id": b"%s%08x" % (self._base, next(_ids)), "v": 3, "response_to": msgid}
                try:
                    _send(self._socks[call.conn.kind], call.conn.rid,
                          msgpack.packb((header, "_zpc_hb", (0,)), use_bin_type=True))
                except zmq.ZMQError:
                    pass  # its connection is gone: the monitor or the deadline ends the call
            self._refresh()

    def close(self) -> None:
        """Fail the calls waiting (Unreachable), close the sockets; idempotent."""
        if self._closed:
            return
        self._closed = True
        for call in list(self._calls.values()):
            self._finish(call, (False, errors.Unreachable("the fan-out client was closed")))
        for sock in self._socks.values():
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        gevent.killall(self._tasks + ([self._beater] if self._beater else []), timeout=zrpc.CLOSE_TIMEOUT_SECONDS)
        for s in list(self._monitors.values()) + list(self._socks.values()):
            s.close()
        self._conns.clear()
        self._by_endpoint.clear()
        self._ctx.term()
