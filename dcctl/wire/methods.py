"""The served method table: ``@expose``, each method's spec (arity and
argument types checked from its annotations before any work), the
``_zerorpc_inspect`` view of it, and the result check (what msgpack can
carry to any peer).  No zerorpc here: the server (dcctl.wire.server) serves
this table.
"""
from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable

import msgpack

from dcctl import auth, errors
from dcctl.wire.codec import MAX_RESULT_BYTES

__all__ = ["Exposed", "expose", "MethodSpec", "method_table", "check_result", "type_name"]


@dataclasses.dataclass
class Exposed:
    """What ``@expose`` records about a method."""

    shielded: bool = False  # finish even if the caller goes away
    stream: bool = False  # a generator streamed to the caller
    access: str = "admin"  # "read", "admin", "agent", "pull" or "routes" (see dcctl.auth.GRANTS)
    redact_env: bool = True  # env values hidden from auth.REDACTED_ROLES


def expose(fn: Callable | None = None, *, shielded: bool = False, stream: bool = False,
           access: str = "admin", redact_env: bool = True):
    """Mark a method for the served table.

    Args:
        access: who may call it: "read" (any allowed key: listings,
            inspection, hostinfo), "admin" (the default), "agent" (hosts
            talking to the hub), "pull" (reading images to pull them:
            agents, read and admin keys) or "routes" (the route table).
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


def type_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty:
        return "any"
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(tp))
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
    """One served method: its name, function, parameters, type hints and
    what ``@expose`` recorded."""

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
                    f"{self.name}: argument {p.name!r} must be {type_name(tp)}, "
                    f"got {type(value).__name__}")

    def inspect_args(self) -> list[dict]:
        out = []
        for p in self.params:
            d = {"name": ("*" if p.kind is p.VAR_POSITIONAL else "") + p.name,
                 "type": type_name(self.hints.get(p.name, p.empty))}
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
