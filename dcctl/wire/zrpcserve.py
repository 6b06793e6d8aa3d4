"""zerorpc's server task for plain (request/reply) calls without a channel
stack per call; part of the zerorpc compatibility layer (dcctl.wire.zrpc's
Server uses it).

zerorpc 0.6.3 serves every request through a Channel, a HeartBeatOnChannel
(two greenlets: a reader and a heartbeat timer) and a BufferedChannel (a
third reader greenlet), each event handed on through their queues, and all
of them killed after the reply: most of a trivial call's server CPU
(bench/rpc, bench/scale's hollow agents).  ``FastCalls`` serves a protocol
v2+ request of a ``rep`` method in its task greenlet alone, with the same
wire behaviour:

- the same hooks in the same order (load_task_context, before_exec,
  after_exec; inspect_exception on a failure) and the same OK / ERR events;
- the call is registered under its message id while it runs, so the
  client's ``_zpc_hb`` events reach it (no "unable to route event");
- one heartbeat loop per server sends ``_zpc_hb`` to each call running
  longer than an interval, every interval, and kills a call whose client
  sent no heartbeat for two intervals after the first with LostRemote
  (reported, not answered), as zerorpc's own heartbeat does.

Streams, protocol v1 callers and unknown methods take zerorpc's own path.
Requests also skip zerorpc's acceptor hop: the multiplexer's reader spawns
each one's task itself (``spawn_from_dispatcher``).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

import gevent
import gevent.event
from zerorpc import Event, LostRemote, ReqRep

__all__ = ["FastCalls"]


class _Running:
    """A call being served: what the multiplexer routes its client's
    events to (``_queue.put``), and what the heartbeat loop checks."""

    __slots__ = ("task", "identity", "msgid", "started", "last_hb", "_queue")

    def __init__(self, task: gevent.Greenlet, identity: Any, msgid: Any, now: float):
        self.task, self.identity, self.msgid, self.started = task, identity, msgid, now
        self.last_hb = None  # the client's last heartbeat (None: none yet)
        self._queue = self

    def put(self, event: Any) -> None:
        if event.name == "_zpc_hb":
            self.last_hb = time.monotonic()


class FastCalls:
    """The fast path of one zerorpc Server (see the module doc).

    Args:
        server: the zerorpc Server (its multiplexer, context, methods and
            heartbeat interval are used).
        describe: ``describe(exc_infos) -> (name, message, detail)``, the
            ERR event's arguments for a failed call.
    """

    def __init__(self, server: Any, describe: Callable[[tuple], tuple[str, str, str]]):
        self._server = server
        self._describe = describe
        self._running: dict[Any, _Running] = {}
        self._beater: gevent.Greenlet | None = None

    def spawn_from_dispatcher(self) -> None:
        """Requests go from the multiplexer's reader straight to a task
        (zerorpc hands each through a queue to its acceptor greenlet, which
        spawns it); none is taken once the server stopped."""
        server = self._server
        fast = self

        class _Spawner:
            def put(self, event: Any) -> None:
                if not fast.stopped:
                    server._task_pool.spawn(server._async_task, event)

        self.stopped = False
        server._multiplexer._broadcast_queue = _Spawner()

    def accept(self) -> None:
        """The acceptor's body: requests are spawned by the reader (above);
        this waits until the server stops (zerorpc's run and stop kill it)."""
        self.stopped = False
        try:
            gevent.event.Event().wait()
        finally:
            self.stopped = True

    def takes(self, event: Any) -> bool:
        """Whether the fast path serves this request."""
        functor = self._server._methods.get(event.name)
        return (isinstance(getattr(functor, "pattern", None), ReqRep) and isinstance(event.header, dict)
                and event.header.get("v", 1) >= 2 and "message_id" in event.header)

    def _event(self, name: str, args: Any, running: _Running, xheader: dict | None) -> Any:
        ctx = self._server._context
        header = {"message_id": ctx.new_msgid(), "v": 3, "response_to": running.msgid}
        if xheader:
            header.update(xheader)
        event = Event(name, args, None, header)
        event.identity = running.identity
        return event

    def serve(self, req: Any) -> None:
        """Serve request ``req`` in the calling (task) greenlet."""
        server, ctx = self._server, self._server._context
        running = _Running(gevent.getcurrent(), req.identity, req.header["message_id"], time.monotonic())
        channels = server._multiplexer._active_channels
        channels[running.msgid] = running
        self._running[running.msgid] = running
        if self._beater is None or self._beater.dead:
            self._beater = gevent.spawn(self._beat)
        try:
            ctx.hook_load_task_context(req.header)
            functor = server._methods[req.name]
            ctx.hook_server_before_exec(req)
            result = functor(*req.args)
            reply = self._event("OK", (result,), running, ctx.hook_get_task_context())
            ctx.hook_server_after_exec(req, reply)
            server._multiplexer.emit_event(reply)
        except LostRemote:
            self._describe(tuple(sys.exc_info()))  # logged; nobody to answer
        except Exception:
            exc_infos = list(sys.exc_info())
            reply = self._event("ERR", self._describe(tuple(exc_infos)), running, ctx.hook_get_task_context())
            ctx.hook_server_inspect_exception(req, reply, exc_infos)
            server._multiplexer.emit_event(reply)
            del exc_infos
        finally:
            if self._running.get(running.msgid) is running:  # a reused id is another call's now
                del self._running[running.msgid]
            if channels.get(running.msgid) is running:
                del channels[running.msgid]

    def _beat(self) -> None:
        freq = self._server._heartbeat_freq
        while self._running and freq:
            gevent.sleep(freq)
            now = time.monotonic()
            for running in list(self._running.values()):
                if now - running.started < freq * 0.999:
                    continue
                if running.last_hb is None:  # zerorpc's first tick starts the count
                    running.last_hb = now
                if now > running.last_hb + 2 * freq:
                    self._running.pop(running.msgid, None)
                    running.task.kill(LostRemote(f"Lost remote after {freq * 2}s heartbeat"), block=False)
                    continue
                try:
                    self._server._multiplexer.emit_event(self._event("_zpc_hb", (0,), running, None))
                except Exception:  # the socket closed under us: the server is stopping
                    return
