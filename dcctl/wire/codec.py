"""What a dcfleet message may carry, and tolerant decoding.

msgpack 1.x's strict decoding drops a request with an integer map key or
invalid UTF-8 without an answer, so its caller waits its whole timeout
(PITFALLS, msgpack-python#476, #503).  Here: ``wire_problem`` says why a
value cannot travel (clients refuse to send it: ``check_request``), and
``decode`` reads any message tolerantly so a server can answer a bad
request with InvalidArgument instead of dropping it.  Sizes: requests and
results stay under 64 MiB (msgpack refuses 100 MiB).
"""
from __future__ import annotations

from typing import Any

import msgpack

from dcctl import errors

__all__ = ["MAX_REQUEST_BYTES", "MAX_RESULT_BYTES", "MAX_NESTING", "MAX_VALUES", "WIRE_INT_MIN", "WIRE_INT_MAX",
           "wire_problem", "check_wire_ints", "check_request", "unpacker", "decode", "clean_header"]

#: msgpack 1.x refuses messages over 100 MiB; stay well under it.
MAX_RESULT_BYTES = 64 * 1024 * 1024
#: ZeroMQ drops a peer that sends more than this in one message (MAXMSGSIZE).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: How deep a request's lists and maps may nest, and how many values it may hold.
MAX_NESTING = 64
MAX_VALUES = 1 << 20
_PLAIN = (type(None), bool, int, float, bytes)


def wire_problem(value: Any, what: str = "argument", depth: int = 0, budget: list | None = None) -> str | None:
    """Why ``value`` cannot travel as a dcfleet request, or None.

    Allowed: None, bool, int, float, bytes, valid UTF-8 str, lists and tuples
    of those, and maps whose keys are str (msgpack 1.x refuses any other key
    at the receiving end, so it never leaves or enters here), nested at
    most MAX_NESTING deep, MAX_VALUES values in all.  Extension types are
    refused."""
    if budget is None:
        budget = [MAX_VALUES]
    budget[0] -= 1
    if budget[0] < 0:
        return f"{what}: more than {MAX_VALUES} values"
    if depth > MAX_NESTING:
        return f"{what} nests deeper than {MAX_NESTING} levels"
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return f"{what} has a string that is not valid UTF-8"
        return None
    if isinstance(value, _PLAIN):
        return None
    if isinstance(value, (list, tuple)):
        for v in value:
            problem = wire_problem(v, what, depth + 1, budget)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{what} has a map key {k!r:.40} of type {type(k).__name__}; map keys must be strings"
            problem = wire_problem(k, what, depth + 1, budget) or wire_problem(v, what, depth + 1, budget)
            if problem:
                return problem
        return None
    return f"{what} has a value of type {type(value).__name__}, which the wire cannot carry"


def unpacker(request: bool) -> msgpack.Unpacker:
    """A tolerant unpacker: integer map keys and invalid UTF-8 are decoded
    (to be refused by wire_problem with an answer, not dropped unanswered);
    a request's arrays and maps hold at most MAX_VALUES entries each."""
    limits = {"max_array_len": MAX_VALUES, "max_map_len": MAX_VALUES} if request else {}
    return msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="surrogateescape",
                            max_buffer_size=2 * max(MAX_REQUEST_BYTES, MAX_RESULT_BYTES), **limits)


def decode(buf, request: bool = True) -> tuple[Any, Any, Any, str | None]:
    """(header, name, args, problem) of a zerorpc message [header, name,
    args]; ``header`` is None when not even it can be read, ``problem``
    says what is wrong with the rest (None: nothing)."""
    unpacker_ = unpacker(request)
    header = name = args = None
    try:
        unpacker_.feed(buf)
        n = unpacker_.read_array_header()
        if n != 3:
            raise ValueError(f"a message is [header, name, args]; got an array of {n}")
        header = unpacker_.unpack()
        name = unpacker_.unpack()
        args = unpacker_.unpack()
    except Exception as exc:  # any malformed input: described, never raised
        return (header, None, None, f"malformed request: {type(exc).__name__}: {exc}"[:500])
    if not isinstance(name, str) or wire_problem(name):
        return header, name, args, "malformed request: the method name must be a string"
    return header, name, args, (wire_problem(args, f"{name}: an argument") if request else None)


def clean_header(header: Any) -> dict | None:
    """The header's string keys, or None when it has no usable message_id
    (nothing to answer to).  ``v`` (the protocol version) must be an int."""
    if not isinstance(header, dict):
        return None
    out = {k: v for k, v in header.items() if isinstance(k, str) and not wire_problem(k)}
    if "v" in out and (not isinstance(out["v"], int) or isinstance(out["v"], bool)):
        del out["v"]
    for key in ("message_id", "response_to"):
        if key in out and (not isinstance(out[key], (bytes, str, int)) or wire_problem(out[key])):
            del out[key]
    return out if ("message_id" in out or "response_to" in out) else None


#: msgpack's integer range: a value outside it cannot be sent at all.
WIRE_INT_MIN, WIRE_INT_MAX = -(1 << 63), (1 << 64) - 1


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


def check_request(method: str, args: tuple) -> None:
    """Refuse, before sending, a request the server could not read: a
    non-string map key or another value msgpack cannot carry, or one over
    MAX_REQUEST_BYTES (ZeroMQ drops the connection, so it would never be
    answered).  Raises: InvalidArgument, ResultTooLarge."""
    problem = wire_problem(method, "the method name") or wire_problem(list(args), f"{method}: an argument")
    if problem:
        raise errors.InvalidArgument(problem)
    try:
        size = len(msgpack.packb(list(args), use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as exc:
        raise errors.InvalidArgument(f"{method}: the arguments cannot be encoded: {exc}") from exc
    if size > MAX_REQUEST_BYTES - 64 * 1024:
        raise errors.ResultTooLarge(f"{method}: the arguments are {size} bytes, over the "
                                    f"{MAX_REQUEST_BYTES}-byte cap of a request",
                                    hint="send large data in chunks")
