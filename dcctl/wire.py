"""The wire layer that the hub, the agents and dcctl share.

Server side: ``Service`` serves an explicit table of methods made with
``@expose``.  Only methods in the table are callable; every call's arity and
argument types are checked against the method's annotations before any work;
errors leave as (name, message) with no traceback (the traceback goes to the
local log); results that msgpack cannot carry become ``ResultTooLarge`` or
``InternalError`` instead of a silent client timeout; ``_zerorpc_inspect``
answers correctly on Python 3.11 (zerorpc's own uses the removed
``inspect.getargspec``).

Client side: ``RpcClient`` wraps ``zerorpc.Client`` with a timeout on every
call and turns remote error names back into ``dcctl.errors`` classes, so
callers never catch ``zerorpc.*`` types.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import socket
import types
import typing
import uuid
from typing import Any, Callable

import gevent
import gevent.event
import msgpack
import zerorpc
import zerorpc.events
import zmq
from zerorpc.exceptions import LostRemote, RemoteError, TimeoutExpired

from dcctl import auth, errors

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_HEARTBEAT_SECONDS = 5.0
#: msgpack 1.x refuses messages over 100 MiB; stay well under it.
MAX_RESULT_BYTES = 64 * 1024 * 1024

# dcctl/wire/ holds the wire layer's parts (endpoint grammar, ...) while this
# module becomes that package: its submodules import as dcctl.wire.NAME.
__path__ = [os.path.join(os.path.dirname(__file__), "wire")]

from dcctl.wire.endpoint import Endpoint, parse_endpoint, validate_endpoint  # noqa: E402


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


# ---------------------------------------------------------------- server side

@dataclasses.dataclass
class Exposed:
    """What ``@expose`` records about a method."""

    shielded: bool = False  # finish even if the caller goes away
    stream: bool = False  # a generator streamed to the caller
    access: str = "admin"  # "read", "admin" or "agent" (see dcctl.auth.GRANTS)
    redact_env: bool = True  # env values hidden from auth.REDACTED_ROLES


def expose(fn: Callable | None = None, *, shielded: bool = False, stream: bool = False,
           access: str = "admin", redact_env: bool = True):
    """Mark a method for the served table.

    Args:
        access: who may call it: "read" (any allowed key: listings,
            inspection, hostinfo), "admin" (the default), or "agent" (hosts
            talking to the hub).
        shielded: run the body in its own greenlet, so that zerorpc killing the
            call's greenlet (about two heartbeats after a client gives up) never
            leaves half-made work: the body runs to completion or rollback.
        stream: the method is a generator; zerorpc streams its items.
        redact_env: callers of a role in auth.REDACTED_ROLES get the result's
            env maps with their values redacted (auth.redact_env); False only
            for results whose env is not a secret but content (an image
            manifest, whose id hashes it).
    """

    if access not in auth.GRANTS["admin"] | {"agent"}:
        raise ValueError(f"bad access level {access!r}")

    def mark(f: Callable) -> Callable:
        f.__dc_exposed__ = Exposed(shielded=shielded, stream=stream, access=access, redact_env=redact_env)
        return f

    return mark(fn) if fn is not None else mark


def _type_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty:
        return "any"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _accepts(tp: Any, value: Any) -> bool:
    if tp is inspect.Parameter.empty or tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is not None:
        tp = origin
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, tp)


@dataclasses.dataclass
class MethodSpec:
    name: str
    fn: Callable
    params: list[inspect.Parameter]
    hints: dict[str, Any]
    exposed: Exposed

    @property
    def doc(self) -> str:
        return inspect.getdoc(self.fn) or ""

    def usage(self) -> str:
        parts = []
        for p in self.params:
            if p.kind is p.VAR_POSITIONAL:
                parts.append(f"*{p.name}")
            elif p.default is p.empty:
                parts.append(p.name)
            else:
                parts.append(f"[{p.name}]")
        return f"{self.name}({', '.join(parts)})"

    def check(self, args: tuple) -> None:
        """Raise InvalidArgument unless ``args`` fit the signature and types."""
        required = [p for p in self.params if p.kind is not p.VAR_POSITIONAL and p.default is p.empty]
        positional = [p for p in self.params if p.kind is not p.VAR_POSITIONAL]
        has_var = any(p.kind is p.VAR_POSITIONAL for p in self.params)
        if len(args) < len(required) or (not has_var and len(args) > len(positional)):
            raise errors.InvalidArgument(
                f"{self.usage()} takes {len(required)}"
                + ("" if len(positional) == len(required) and not has_var
                   else f" to {'any' if has_var else len(positional)}")
                + f" arguments; got {len(args)}")
        for i, value in enumerate(args):
            p = positional[i] if i < len(positional) else next(
                q for q in self.params if q.kind is q.VAR_POSITIONAL)
            tp = self.hints.get(p.name, inspect.Parameter.empty)
            if p.default is None and value is None:
                continue
            if not _accepts(tp, value):
                raise errors.InvalidArgument(
                    f"{self.name}: argument {p.name!r} must be {_type_name(tp)}, "
                    f"got {type(value).__name__}")

    def inspect_args(self) -> list[dict]:
        out = []
        for p in self.params:
            d = {"name": ("*" if p.kind is p.VAR_POSITIONAL else "") + p.name,
                 "type": _type_name(self.hints.get(p.name, p.empty))}
            if p.default is not p.empty:
                d["default"] = p.default
            out.append(d)
        return out


def method_table(obj: Any) -> dict[str, MethodSpec]:
    """Collect the ``@expose``-marked methods of ``obj`` into a table."""
    table = {}
    for name in dir(type(obj)):
        if name.startswith("_"):
            continue
        fn = getattr(obj, name)
        exposed = getattr(fn, "__dc_exposed__", None)
        if exposed is None:
            continue
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        hints.pop("return", None)
        table[name] = MethodSpec(name, fn, list(sig.parameters.values()), hints, exposed)
    return table


def _check_keys(value: Any, depth: int = 0) -> None:
    if depth > 64:
        raise errors.ResultTooLarge("result nests deeper than 64 levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise errors.InternalError(f"result has a non-string map key {k!r}")
            _check_keys(v, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_keys(v, depth + 1)


def check_result(method: str, result: Any) -> Any:
    """Make sure msgpack can carry ``result`` to any peer (string map keys,
    under MAX_RESULT_BYTES); raise a typed error instead of letting the client
    time out (msgpack-python#476, #503)."""
    _check_keys(result)
    try:
        size = len(msgpack.packb(result, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise errors.InternalError(f"{method}: result cannot be encoded: {exc}") from exc
    if size > MAX_RESULT_BYTES:
        raise errors.ResultTooLarge(
            f"{method}: result is {size} bytes, over the {MAX_RESULT_BYTES}-byte cap",
            hint="ask for less (a smaller output cap) or use a streaming method")
    return result


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


def _refuse(*args):
    raise errors.Unauthorized("this client's key is not allowed (any more) on this server")


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

    Endpoints: ``ipc://PATH`` (made 0600; callers are local root: admin),
    ``tcp://`` with CURVE (callers are the allowlist's keys, each call
    checked against its role), or ``tcp://`` loopback without CURVE when
    bound with insecure=True (admin; for tests and ad hoc use only).
    """

    def __init__(self, target: Any, name: str, *,
                 translate: Callable[[BaseException], errors.DcError | None] | None = None,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_SECONDS, keys_dir: str | None = None):
        quiet_zerorpc_noise()
        self.name = name
        self.target = target
        self.table = method_table(target)
        self._translate = translate or (lambda exc: None)
        self.keys_dir = keys_dir
        self.allowlist = auth.Allowlist(keys_dir) if keys_dir else None
        self._heartbeat_s = heartbeat_s
        self._functors: dict[str, Any] = {}
        for mname, spec in self.table.items():
            wrapped = self._wrap(spec)
            self._functors[mname] = zerorpc.stream(wrapped) if spec.exposed.stream else zerorpc.rep(wrapped)
        self._functors.update(self._builtins())
        self._servers: dict[str, _Server] = {}  # "local", "curve", "insecure"
        self._zap: auth.ZapHandler | None = None
        self._tasks: list[gevent.Greenlet] = []

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

        def guarded(fn):
            def call(*args):
                self._authorize("read", fn.__name__)
                return fn(*args)
            return zerorpc.rep(call)

        return {
            "_zerorpc_list": guarded(lambda: sorted(self.table)),
            "_zerorpc_name": guarded(lambda: self.name),
            "_zerorpc_ping": guarded(lambda: ["pong", self.name]),
            "_zerorpc_help": guarded(lambda m: lookup(m).doc),
            "_zerorpc_args": guarded(argspec),
            "_zerorpc_inspect": guarded(self.inspect),
            _REFUSE: zerorpc.rep(_refuse),
        }

    def inspect(self) -> dict:
        """The ``_zerorpc_inspect`` answer: {name, methods: {m: {args, doc}}};
        each arg is {name, type[, default]}."""
        return {"name": self.name,
                "methods": {m: {"args": s.inspect_args(), "doc": s.doc, "access": s.exposed.access}
                            for m, s in sorted(self.table.items())}}

    def _authorize(self, access: str, method: str) -> Caller:
        """The call's Caller, if its role may call ``access``-level methods.

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
        if access not in auth.GRANTS[caller.role]:
            raise errors.PermissionDenied(f"role {caller.role!r} ({caller.name}) may not call {method}",
                                          hint=f"{method} needs the {access!r} access level")
        g.dc_caller = caller
        return caller

    def _wrap(self, spec: MethodSpec) -> Callable:
        translate = self._translate

        def body(*args):
            try:
                result = spec.fn(*args)
                return result if spec.exposed.stream else check_result(spec.name, result)
            except errors.DcError:
                raise
            except Exception as exc:  # translate at the boundary
                mapped = translate(exc)
                if mapped is None:
                    ref = uuid.uuid4().hex[:8]
                    log.exception("%s failed (ref %s)", spec.name, ref)
                    raise errors.InternalError(
                        f"{spec.name} failed unexpectedly (ref {ref}); the server log has details"
                    ) from exc
                raise mapped from exc

        def run(*args):
            if spec.exposed.shielded:
                child = gevent.Greenlet(_capture, body, *args)
                child.dc_parent = gevent.getcurrent()
                child.start()
                ok, value = child.get()
                if not ok:
                    raise value
                return value
            return body(*args)

        def call(*args):
            caller = self._authorize(spec.exposed.access, spec.name)
            spec.check(args)
            result = run(*args)
            if spec.exposed.redact_env and caller.role in auth.REDACTED_ROLES:
                if spec.exposed.stream:
                    return (auth.redact_env(item) for item in result)
                return auth.redact_env(result)
            return result

        call.__name__ = spec.name
        call.__doc__ = spec.doc
        return call

    # -- lifecycle
    def _server(self, kind: str) -> "_Server":
        server = self._servers.get(kind)
        if server is None:
            ctx = zerorpc.Context()  # our own: its ZAP handler and middleware
            ctx.register_middleware(_CallerMiddleware())
            server = _Server(self._functors, name=self.name, heartbeat=self._heartbeat_s, context=ctx)
            sock = server._events._socket
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
            if kind == "curve":
                if self.keys_dir is None:
                    raise errors.InvalidArgument("a tcp:// endpoint needs CURVE keys (keys_dir)",
                                                 hint="or bind it insecure, on loopback only")
                public, secret = auth.ensure_server_pair(self.keys_dir)
                self._zap = auth.ZapHandler(ctx, self.allowlist)
                sock.curve_server = True
                sock.curve_secretkey = secret
                sock.curve_publickey = public
            _tag_callers(server._events, curve=(kind == "curve"),
                         allowed=(lambda key: self.allowlist is not None and self.allowlist.lookup(key) is not None))
            self._servers[kind] = server
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

    def stop(self) -> None:
        for srv in self._servers.values():
            srv.stop()
            srv.close()
        if self._zap is not None:
            self._zap.close()


MAX_REQUEST_BYTES = 64 * 1024 * 1024


def _ipc_listening(path: str) -> bool:
    """Whether anything accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def claim_ipc_path(path: str) -> None:
    """Make ``path`` free for a new ipc socket: a stale socket file (no one
    accepts on it) is removed; a live one is refused, so a second server can
    never silently take over another's local endpoint.

    Raises: Conflict."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        return
    if not _ipc_listening(path):
        os.unlink(path)  # stale: its server is gone
        return
    raise errors.Conflict(f"ipc://{path} is in use by another running server",
                          hint="stop it, or give this one another --listen path")


def _tag_callers(events, curve: bool, allowed: Callable[[str], bool]) -> None:
    """Make the server's socket reader stamp each request's header with who
    sent it: the CURVE key ZeroMQ authenticated (the frame's User-Id, set by
    our ZAP handler), or "local".  Whatever the client put there is
    overwritten, so it cannot be forged."""
    receive = events._recv

    def recv(timeout=None):
        parts = receive(timeout=timeout)
        blob = parts[-1]
        event = zerorpc.events.Event.unpack(zerorpc.events.get_pyzmq_frame_buffer(blob))
        event.identity = parts[:-1] or None
        if isinstance(event.header, dict):
            caller = _LOCAL
            if curve:
                try:
                    caller = blob.get("User-Id") or "anonymous"
                except zmq.ZMQError:
                    caller = "anonymous"
            event.header["dc_caller"] = caller
            if curve and not allowed(caller):  # a removed key: refuse whatever it asks
                event.name = _REFUSE
        return event

    events.recv = recv


class _Server(zerorpc.Server):
    """zerorpc.Server that sends (name, message) without a traceback, and
    whose ``_zerorpc_*`` builtins are the Service's, not zerorpc's."""

    def _inject_builtins(self):
        pass  # Service puts its own in the table

    def _print_traceback(self, protocol_v1, exc_infos):
        exc_type, exc_value, _ = exc_infos
        hint = None
        if isinstance(exc_value, errors.DcError):
            name, msg, hint = exc_type.__name__, str(exc_value), exc_value.hint
            log.info("call failed: %s: %s", name, msg)
        elif isinstance(exc_value, NameError):  # zerorpc: method not in table
            name, msg = "NoSuchMethod", f"no method {exc_value}"
        elif isinstance(exc_value, TypeError):  # zerorpc: args not a list, etc.
            name, msg = "InvalidArgument", f"malformed call: {exc_value}"
        elif isinstance(exc_value, LostRemote):
            log.info("caller went away: %s", exc_value)
            name, msg = "CallTimeout", "caller went away"
        else:
            log.error("unexpected failure", exc_info=tuple(exc_infos))
            name, msg = "InternalError", "unexpected failure; the server log has details"
        if protocol_v1:
            return (msg,)
        # zerorpc puts a traceback in the third field; we put one human line
        # (what the stock zerorpc CLI prints) and the operator hint, if any.
        return (name, msg, f"{name}: {msg}" + (f"\nhint: {hint}" if hint else ""))


# ---------------------------------------------------------------- client side

class _ErrorMapper:
    """zerorpc middleware: remote error names become dcctl.errors classes."""

    def client_handle_remote_error(self, event):
        name, msg, detail = "InternalError", "", ""
        if isinstance(event.args, (list, tuple)) and len(event.args) >= 2:
            name, msg = str(event.args[0]), str(event.args[1])
            detail = str(event.args[2]) if len(event.args) > 2 and event.args[2] else ""
        elif event.args:
            msg = str(event.args[0])
        return errors.from_wire(name, msg, _hint_of(detail))


def _hint_of(detail: str) -> str | None:
    for line in detail.splitlines():
        if line.startswith("hint: "):
            return line[len("hint: "):]
    return None


_context: zerorpc.Context | None = None


def _client_context() -> zerorpc.Context:
    global _context
    if _context is None:
        _context = zerorpc.Context()
        _context.register_middleware(_ErrorMapper())
    return _context


def _capture(fn, *args, **kw):
    """(True, result) or (False, exception): a greenlet body whose failure is
    the caller's to raise, not the hub's to print."""
    try:
        return True, fn(*args, **kw)
    except Exception as exc:  # re-raised by the caller
        return False, exc


#: msgpack's integer range: a value outside it cannot be sent at all.
WIRE_INT_MIN, WIRE_INT_MAX = -(1 << 63), (1 << 64) - 1
CLOSE_TIMEOUT_SECONDS = 2.0


def check_wire_ints(value: Any, where: str = "argument", depth: int = 0) -> None:
    """Raise InvalidArgument if ``value`` (arguments of a call: lists, maps,
    scalars) holds an integer msgpack cannot carry (below -2**63 or at least
    2**64), so the caller gets a clear error, not OverflowError from the packer.

    Raises: InvalidArgument."""
    if isinstance(value, bool) or depth > 64:
        return
    if isinstance(value, int):
        if not WIRE_INT_MIN <= value <= WIRE_INT_MAX:
            raise errors.InvalidArgument(f"{where} {value} is out of range: integers must be "
                                         f"from -2**63 to 2**64-1", hint="give a smaller value")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_wire_ints(v, f"{where} {k!s}" if isinstance(k, str) else where, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_wire_ints(v, where, depth + 1)


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
    Unreachable when the ipc socket does not exist, the server was lost
    mid-call, or the client was closed (``close(reason)``) while the call
    waited; InvalidArgument for an integer msgpack cannot carry.
    """

    def __init__(self, endpoint: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
                 heartbeat_s: float = DEFAULT_HEARTBEAT_SECONDS, keys: auth.ClientKeys | None = None):
        quiet_zerorpc_noise()
        self._endpoint = parse_endpoint(endpoint)
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._client = zerorpc.Client(context=_client_context(), timeout=timeout_s,
                                      heartbeat=heartbeat_s)
        self._refused: str | None = None
        self._refused_event = gevent.event.Event()
        self._closed: str | None = None  # why, once closed
        self._closed_event = gevent.event.Event()
        self._calls: set[gevent.Greenlet] = set()  # in flight
        self._monitor_task = None
        sock = self._client._events._socket
        sock.linger = 0  # a close never waits for unsent messages
        if keys is not None:
            sock.curve_serverkey = keys.server_public
            sock.curve_publickey = keys.public
            sock.curve_secretkey = keys.secret
        if self._endpoint.is_tcp:
            mon = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                                          | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
            mon.linger = 0
            self._monitor_task = gevent.spawn(self._watch, mon, keys is not None)
        self._client.connect(endpoint)

    def _watch(self, mon, with_keys: bool) -> None:
        from zmq.utils.monitor import recv_monitor_message
        try:
            while True:
                event = recv_monitor_message(mon)["event"]
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    self._refused = "the server refused this client's key"
                elif with_keys:
                    self._refused = "the CURVE handshake failed (wrong server key, or the server is not CURVE)"
                else:
                    self._refused = "the server requires CURVE keys (give a key pair and the server's key)"
                self._refused_event.set()
        except (zmq.ZMQError, gevent.GreenletExit):
            pass
        finally:
            mon.linger = 0
            mon.close()

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if self._closed:
            raise errors.Unreachable(f"{self.endpoint}: {self._closed}")
        if self._endpoint.is_ipc and not os.path.exists(self._endpoint.path):
            raise errors.Unreachable(f"no server at {self.endpoint} (socket missing)")
        check_wire_ints(list(args), f"{method}: argument")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self._refused:
            raise errors.Unauthorized(f"{self.endpoint}: {self._refused}")
        # The call runs in a task of its own, so that a refused handshake or a
        # close() ends the wait at once, and stopping the task never throws
        # into the caller's greenlet.
        task = gevent.spawn(_capture, self._client, method, *args, timeout=timeout)
        self._calls.add(task)
        try:
            gevent.wait([task, self._refused_event, self._closed_event], count=1)
            if not task.ready():
                _stop_call(task)
                if self._closed:
                    raise errors.Unreachable(f"{self.endpoint}: {self._closed} during {method}")
                raise errors.Unauthorized(f"{self.endpoint}: {self._refused}")
            ok, value = task.value
            if not ok:
                raise value
            return value
        except TimeoutExpired as exc:
            if self._closed:
                raise errors.Unreachable(f"{self.endpoint}: {self._closed} during {method}") from exc
            if self._endpoint.is_ipc and not _ipc_listening(self._endpoint.path):
                raise errors.Unreachable(f"no server listens at {self.endpoint} (a stale socket)") from exc
            raise errors.CallTimeout(
                f"no answer from {self.endpoint} to {method} within {timeout:g} s",
                hint="is the server running and reachable?") from exc
        except LostRemote as exc:
            raise errors.Unreachable(f"lost {self.endpoint} during {method} (no heartbeat)") from exc
        except RemoteError as exc:  # not mapped by the middleware (should not happen)
            raise errors.from_wire(exc.name, exc.msg, _hint_of(exc.traceback or "")) from exc
        finally:
            self._calls.discard(task)
            if not task.ready():  # the caller itself was killed
                task.kill(TimeoutExpired(0, "call abandoned"), block=False)

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
            _stop_call(task)
        try:
            self._client._events._socket.linger = 0
        except zmq.ZMQError:
            pass
        self._client.close()  # stops the socket's monitor too
        if self._monitor_task is not None:
            self._monitor_task.kill(block=True, timeout=CLOSE_TIMEOUT_SECONDS)

    def __enter__(self) -> "RpcClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stop_call(task: gevent.Greenlet) -> None:
    """End a call's task: TimeoutExpired, thrown where it waits for the
    answer, takes zerorpc's own path that closes the call's channel and its
    heartbeat (a plain kill would leave them behind)."""
    task.kill(TimeoutExpired(0, "call abandoned"), block=True, timeout=CLOSE_TIMEOUT_SECONDS)
    if not task.ready():
        task.kill(block=False)


def connect(endpoint: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
            keys: auth.ClientKeys | None = None) -> RpcClient:
    """Open an RpcClient to ``endpoint`` (see RpcClient)."""
    return RpcClient(endpoint, timeout_s=timeout_s, keys=keys)


__all__ = ["DEFAULT_TIMEOUT_SECONDS", "MAX_RESULT_BYTES", "Exposed", "MethodSpec", "RpcClient",
           "Service", "check_result", "check_wire_ints", "connect", "expose", "method_table",
           "quiet_zerorpc_noise", "validate_endpoint", "Endpoint", "parse_endpoint"]
