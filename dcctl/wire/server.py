"""The server side of the wire: ``Service`` serves an explicit table of
``@expose`` methods (dcctl.wire.methods) over ZeroRPC.

Only methods in the table are callable; every call's arity and argument
types are checked before any work; each call is authorized by its caller's
role (``current_caller``); errors leave as (name, message) with no
traceback (the traceback goes to the local log); results that msgpack
cannot carry become ``ResultTooLarge`` or ``InternalError`` instead of a
silent client timeout; ``_zerorpc_inspect`` answers correctly on Python
3.11 (zerorpc's own uses the removed ``inspect.getargspec``).  Requests are
decoded tolerantly (dcctl.wire.codec): any request with a message id that
cannot be served (non-string map keys, invalid UTF-8, extension types,
nesting past MAX_NESTING, a broken tail) is answered with
``InvalidArgument``; garbage without a message id is logged and dropped,
and the server goes on.  ``claim_ipc_path`` (dcctl.wire.ipcpath) keeps a second server off a
live local endpoint.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import uuid
from typing import Any, Callable

import gevent

from dcctl import auth, errors
from dcctl.wire import codec, zrpc
from dcctl.wire.codec import MAX_REQUEST_BYTES
from dcctl.wire.endpoint import parse_endpoint
from dcctl.wire.ipcpath import claim_ipc_path, ipc_listening
from dcctl.wire.methods import MethodSpec, check_result, method_table

__all__ = ["DEFAULT_HEARTBEAT_SECONDS", "Caller", "current_caller", "Service",
           "describe_failure"]

log = logging.getLogger("dcctl.wire")

DEFAULT_HEARTBEAT_SECONDS = 5.0
#: how long a stopped server's sockets go on sending what they still hold
CLOSE_LINGER_MS = 1000
#: how long Service.stop waits for its ipc:// paths to stop listening
IPC_FREE_SECONDS = 2.0


@dataclasses.dataclass(frozen=True)
class Caller:
    """Who made the current call: ``role`` ("admin", "read", "agent"),
    ``key`` (Z85 public key; "" on the local endpoint) and ``name`` (the
    key file's name, or "local")."""

    role: str
    key: str
    name: str


_LOCAL = "local"
_REFUSE = "_dc_refuse"
_BAD_REQUEST = "_dc_bad_request"


def _refuse(*args):
    raise errors.Unauthorized("this client's key is not allowed (any more) on this server")


def _bad_request(problem="malformed request", *args):
    raise errors.InvalidArgument(str(problem))


def current_caller() -> Caller | None:
    """The Caller of the call running in this greenlet (or its shielded
    child), as checked by the Service; None outside a served call."""
    g = gevent.getcurrent()
    while g is not None:
        caller = getattr(g, "dc_caller", None)
        if caller is not None:
            return caller
        g = getattr(g, "dc_parent", None)
    return None


class _CallerMiddleware:
    """Takes the caller id the socket reader put in the request header and
    keeps it on the call's greenlet."""

    def load_task_context(self, header):
        gevent.getcurrent().dc_caller_id = header.get("dc_caller") if isinstance(header, dict) else None


class Service:
    """Serves the ``@expose`` methods of ``target`` over ZeroRPC.

    Args:
        target: the object whose marked methods form the table.
        name: the service name reported by ``_zerorpc_name``.
        translate: callable mapping a non-DcError exception to a DcError, or
            None when it is unexpected (then the caller sees InternalError and
            the traceback is logged here).
        heartbeat_s: zerorpc heartbeat interval in seconds.
        keys_dir: the server's keys and client allowlist (dcctl.auth);
            required to bind a tcp:// endpoint with CURVE.
        allowlist: the client allowlist ZAP and every call consult
            (dcctl.auth.Allowlist); default: one of ``keys_dir``'s files
            (a hub on etcd passes one whose hosts' keys come from the store).
        stream_stall_s: how long a stream method's sender waits for a
            reader that takes no items (its window of
            zrpc.STREAM_WINDOW_ITEMS full) before it drops that reader with
            SlowConsumer, seconds.

    Stream methods (``@expose(stream=True)``, generators) send each item as
    the reader takes it: at most a window of items is in flight per
    reader, nothing is buffered for a reader beyond that, and one reader's
    pace never holds another's.  Each item is checked like a result
    (check_result); an error raised while iterating ends the stream with
    that error, translated like a call's; the generator is always closed
    (its finally blocks run), also when the reader goes away.

    Endpoints: ``ipc://PATH`` (made 0600; callers are local root: admin),
    ``tcp://`` with CURVE (callers are the allowlist's keys, each call
    checked against its role), or ``tcp://`` loopback without CURVE when
    bound with insecure=True (admin; for tests and ad hoc use only).
    """

    def __init__(self, target: Any, name: str, *,
                 translate: Callable[[BaseException], errors.DcError | None] | None = None,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_SECONDS, keys_dir: str | None = None,
                 stream_stall_s: float = zrpc.STREAM_STALL_SECONDS, allowlist: auth.Allowlist | None = None):
        zrpc.quiet_zerorpc_noise()
        self.name = name
        self.target = target
        self.table = method_table(target)
        self._translate = translate or (lambda exc: None)
        self.keys_dir = keys_dir
        self.allowlist = allowlist if allowlist is not None else auth.Allowlist(keys_dir) if keys_dir else None
        self._heartbeat_s = heartbeat_s
        self._functors: dict[str, Any] = {}
        for mname, spec in self.table.items():
            wrapped = self._wrap(spec)
            self._functors[mname] = (zrpc.bounded_stream(wrapped, stream_stall_s) if spec.exposed.stream
                                     else zrpc.rep(wrapped))
        self._functors.update(self._builtins())
        self._servers: dict[str, zrpc.Server] = {}  # "local", "curve", "insecure"
        self._contexts: dict[str, zrpc.Context] = {}  # each server's own, terminated by stop
        self._zap: auth.ZapHandler | None = None
        self._tasks: list[gevent.Greenlet] = []
        #: ``observer(method, outcome, seconds)`` after each served call
        #: (outcome "ok", a DcError's class name, or "error"); None: none.
        #: Metrics set it (agents/metrics.py); it must not raise or block.
        self.observer: Callable[[str, str, float], None] | None = None

    # -- builtins answered by our code, not zerorpc's
    def _builtins(self) -> dict[str, Any]:
        def lookup(m):
            if m not in self.table:
                raise errors.NoSuchMethod(f"no method {m!r}")
            return self.table[m]

        def argspec(m):
            spec = lookup(m)
            names = [p.name for p in spec.params if p.kind is not p.VAR_POSITIONAL]
            var = next((p.name for p in spec.params if p.kind is p.VAR_POSITIONAL), None)
            defaults = [p.default for p in spec.params if p.default is not p.empty] or None
            return [names, var, None, defaults]

        def guarded(builtin: str, fn):
            # every allowed role may call the builtins (a router's key lists the table too)
            def call(*args):
                self._authorize(None, builtin)
                return fn(*args)
            return zrpc.rep(call)

        return {
            "_zerorpc_list": guarded("_zerorpc_list", lambda: sorted(self.table)),
            "_zerorpc_name": guarded("_zerorpc_name", lambda: self.name),
            "_zerorpc_ping": guarded("_zerorpc_ping", lambda: ["pong", self.name]),
            "_zerorpc_help": guarded("_zerorpc_help", lambda m: lookup(m).doc),
            "_zerorpc_args": guarded("_zerorpc_args", argspec),
            "_zerorpc_inspect": guarded("_zerorpc_inspect", self.inspect),
            _REFUSE: zrpc.rep(_refuse),
            _BAD_REQUEST: zrpc.rep(_bad_request),
        }

    def inspect(self) -> dict:
        """The ``_zerorpc_inspect`` answer: {name, methods: {m: {args, doc}}};
        each arg is {name, type[, default]}."""
        return {"name": self.name,
                "methods": {m: {"args": s.inspect_args(), "doc": s.doc, "access": s.exposed.access}
                            for m, s in sorted(self.table.items())}}

    def _authorize(self, access: str | None, method: str) -> Caller:
        """The call's Caller, if its role may call ``access``-level methods
        (None: any allowed key may, as for the builtins).

        Raises: Unauthorized (key no longer allowed), PermissionDenied."""
        g = gevent.getcurrent()
        caller_id = getattr(g, "dc_caller_id", None)
        if caller_id in (None, _LOCAL):
            caller = Caller(auth.LOCAL_ROLE, "", "local")
        else:
            found = self.allowlist.lookup(caller_id) if self.allowlist else None
            if found is None:
                raise errors.Unauthorized("this client's key is not allowed (any more) on this server")
            caller = Caller(found[0], caller_id, found[1])
        if access is not None and access not in auth.GRANTS[caller.role]:
            raise errors.PermissionDenied(f"role {caller.role!r} ({caller.name}) may not call {method}",
                                          hint=f"{method} needs the {access!r} access level")
        g.dc_caller = caller
        return caller

    def _wrap(self, spec: MethodSpec) -> Callable:
        translate = self._translate

        def failed(exc: Exception) -> errors.DcError:
            mapped = translate(exc)
            if mapped is None:
                ref = uuid.uuid4().hex[:8]
                log.exception("%s failed (ref %s)", spec.name, ref)
                return errors.InternalError(
                    f"{spec.name} failed unexpectedly (ref {ref}); the server log has details")
            return mapped

        def items(result):
            # a stream's items, each checked; errors translated as a call's
            iterator = iter(result)
            try:
                while True:
                    try:
                        item = next(iterator)
                    except StopIteration:
                        return
                    except (errors.DcError, zrpc.LostRemote):
                        raise
                    except Exception as exc:  # translate at the boundary
                        raise failed(exc) from exc
                    yield check_result(spec.name, item)
            finally:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()

        def body(*args):
            try:
                result = spec.fn(*args)
                return items(result) if spec.exposed.stream else check_result(spec.name, result)
            except errors.DcError:
                raise
            except Exception as exc:  # translate at the boundary
                raise failed(exc) from exc

        def run(*args):
            if spec.exposed.shielded:
                child = gevent.Greenlet(zrpc.capture, body, *args)
                child.dc_parent = gevent.getcurrent()
                child.start()
                ok, value = child.get()
                if not ok:
                    raise value
                return value
            return body(*args)

        def served(*args):
            caller = self._authorize(spec.exposed.access, spec.name)
            spec.check(args)
            result = run(*args)
            if spec.exposed.redact_env and caller.role in auth.REDACTED_ROLES:
                if spec.exposed.stream:
                    return (auth.redact_env(item) for item in result)
                return auth.redact_env(result)
            return result

        def call(*args):
            observer = self.observer
            if observer is None:
                return served(*args)
            started = time.monotonic()
            try:
                result = served(*args)
            except BaseException as exc:
                outcome = type(exc).__name__ if isinstance(exc, errors.DcError) else "error"
                observer(spec.name, outcome, time.monotonic() - started)
                raise
            observer(spec.name, "ok", time.monotonic() - started)  # a stream: until its first item is due
            return result

        call.__name__ = spec.name
        call.__doc__ = spec.doc
        return call

    # -- lifecycle
    def _server(self, kind: str) -> zrpc.Server:
        server = self._servers.get(kind)
        if server is not None:
            return server
        if kind == "curve" and self.keys_dir is None:
            raise errors.InvalidArgument("a tcp:// endpoint needs CURVE keys (keys_dir)",
                                         hint="or bind it insecure, on loopback only")
        ctx = zrpc.Context()  # our own: its ZAP handler and middleware
        ctx.linger = CLOSE_LINGER_MS  # each socket made on it: what stop's close may still send
        self._contexts[kind] = ctx
        ctx.register_middleware(_CallerMiddleware())
        server = zrpc.Server(self._functors, name=self.name, heartbeat=self._heartbeat_s, context=ctx,
                             describe=describe_failure)
        self._servers[kind] = server  # from here stop closes it, whatever fails next
        zrpc.set_max_message_bytes(server, MAX_REQUEST_BYTES)
        if kind == "curve":
            public, secret = auth.ensure_server_pair(self.keys_dir)
            self._zap = auth.ZapHandler(ctx, self.allowlist)
            zrpc.set_server_curve(server, public, secret)
        _tag_callers(server, curve=(kind == "curve"),
                     allowed=(lambda key: self.allowlist is not None and self.allowlist.lookup(key) is not None))
        return server

    def bind(self, endpoint: str, *, insecure: bool = False) -> None:
        """Bind ``ipc://PATH`` (made 0600) or ``tcp://ADDR:PORT`` (CURVE; or,
        with ``insecure``, plain on a loopback address only, logged).

        Raises: InvalidArgument."""
        ep = parse_endpoint(endpoint)
        if ep.is_ipc:
            claim_ipc_path(ep.path)
            self._server("local").bind(endpoint)
            os.chmod(ep.path, 0o600)
            self._ipc_paths = (*self._ipc_paths, ep.path)
        elif insecure:
            if not ep.is_loopback:
                raise errors.InvalidArgument(f"refusing plain TCP on {endpoint}: only loopback may go without CURVE")
            log.warning("serving %s WITHOUT authentication or encryption (asked for)", endpoint)
            self._server("insecure").bind(endpoint)
        else:
            self._server("curve").bind(endpoint)

    @property
    def public_key(self) -> str | None:
        """This server's CURVE public key (Z85), once a CURVE endpoint is bound."""
        if self.keys_dir is None:
            return None
        return auth.ensure_server_pair(self.keys_dir)[0].decode()

    def start(self) -> gevent.Greenlet:
        """Serve in background greenlets; returns one that ends when all stop."""
        self._tasks = [gevent.spawn(srv.run) for srv in self._servers.values()]
        return gevent.spawn(gevent.joinall, self._tasks)

    def run(self) -> None:
        """Serve until stopped (blocks the calling greenlet)."""
        self.start().join()

    #: the ipc:// paths bound (stop waits until they are free)
    _ipc_paths: tuple = ()

    def stop(self, free_timeout_s: float = IPC_FREE_SECONDS) -> None:
        """Stop serving and close the sockets; returns once each ipc:// path
        bound no longer accepts connections (at most ``free_timeout_s``).
        libzmq closes a listener in its I/O thread after close() returns,
        and removes the socket file then: a server bound again at once found
        the path still listening (Conflict), and one that took the path over
        could lose its new socket file to the old listener's clean-up.
        Each server's ZeroMQ context is then terminated (zmq_ctx_term): its
        I/O thread and descriptors go; that blocks the process for at most
        CLOSE_LINGER_MS while the closed sockets still send what they hold."""
        for srv in self._servers.values():
            srv.stop()
            srv.close()
        if self._zap is not None:
            self._zap.close()
        for ctx in self._contexts.values():  # each server's own: an I/O thread and 5 descriptors
            # zmq_ctx_term waits for the closed sockets' last messages, at most
            # their linger; here, not in gevent's thread pool, whose worker
            # threads each open a loop's descriptors and close them when idle
            ctx.term()
        self._contexts = {}
        deadline = time.monotonic() + free_timeout_s
        for path in self._ipc_paths:
            while os.path.exists(path) and ipc_listening(path) and time.monotonic() < deadline:
                gevent.sleep(0.005)
        self._ipc_paths = ()


def _tag_callers(server: zrpc.Server, curve: bool, allowed: Callable[[str], bool]) -> None:
    """Make the server's socket reader decode each message tolerantly
    (codec.decode) and stamp each request's header with who sent it: the
    CURVE key ZeroMQ authenticated (the frame's User-Id, set by our ZAP
    handler), or "local".  Whatever the client put there is overwritten, so
    it cannot be forged.  A request that cannot be served is answered with
    InvalidArgument; a message without an id (nobody to answer) is dropped."""

    def read(parts: list):
        blob = parts[-1]
        header, name, args, problem = codec.decode(zrpc.frame_buffer(blob))
        header = codec.clean_header(header)
        if header is None or ("response_to" not in header and "message_id" not in header):
            # no message id: there is nobody to answer
            log.warning("dropped an undecodable message (%s)", problem or "no message_id")
            return None
        if "response_to" in header:  # an event on a live call's channel (heartbeat, credit)
            if problem:
                log.warning("dropped a malformed channel event (%s)", problem)
                return None
        elif problem or not isinstance(args, list):  # a new request: answer, never drop it silently
            name, args = _BAD_REQUEST, [problem or "malformed request: the arguments must be a list"]
        caller = (zrpc.frame_user_id(blob) or "anonymous") if curve else _LOCAL
        header["dc_caller"] = caller
        if curve and not allowed(caller):  # a removed key: refuse whatever it asks
            name = _REFUSE
        return zrpc.make_event(name, args, header, parts[:-1] or None)

    zrpc.intercept_recv(server, read)


def describe_failure(exc_infos: tuple) -> tuple[str, str, str]:
    """(name, message, detail) sent for a failed call: a DcError keeps its
    class name and hint; zerorpc's own failures become NoSuchMethod,
    InvalidArgument or CallTimeout (the caller went away); anything else is
    InternalError, its traceback logged here.  ``detail`` (zerorpc's
    traceback field) is one human line, what the stock zerorpc CLI prints,
    and the operator hint, if any."""
    exc_type, exc_value, _ = exc_infos
    hint = None
    if isinstance(exc_value, errors.DcError):
        name, msg, hint = exc_type.__name__, str(exc_value), exc_value.hint
        log.info("call failed: %s: %s", name, msg)
    elif isinstance(exc_value, NameError):  # zerorpc: method not in table
        name, msg = "NoSuchMethod", f"no method {exc_value}"
    elif isinstance(exc_value, TypeError):  # zerorpc: args not a list, etc.
        name, msg = "InvalidArgument", f"malformed call: {exc_value}"
    elif isinstance(exc_value, zrpc.LostRemote):
        log.info("caller went away: %s", exc_value)
        name, msg = "CallTimeout", "caller went away"
    else:
        log.error("unexpected failure", exc_info=exc_infos)
        name, msg = "InternalError", "unexpected failure; the server log has details"
    return name, msg, f"{name}: {msg}" + (f"\nhint: {hint}" if hint else "")
