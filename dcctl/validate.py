"""Boundary validation shared by the hub and the agents.

Each function returns the clean value or raises ``InvalidArgument`` naming the
argument and what it should be.
"""
from __future__ import annotations

import re
from typing import Any

from dcctl.errors import InvalidArgument

NAME_MAX_CHARS = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: The one env-key rule (container env, image manifests, /etc/dcfleet/env):
#: a shell variable name of at most ENV_KEY_MAX_CHARS characters.
ENV_KEY_MAX_CHARS = 128
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PROTOCOLS = ("tcp", "udp")


def container_name(name: Any) -> str:
    """A fleet-unique container name: 1-64 chars of ``[A-Za-z0-9_.-]``,
    starting with a letter or digit, no ``..`` (dotted like
    ``jerome.awesome.web``). It is also the container's hostname."""
    if not isinstance(name, str):
        raise InvalidArgument(f"container name must be a string, got {type(name).__name__}")
    if not name:
        raise InvalidArgument("container name is empty")
    if len(name) > NAME_MAX_CHARS:
        raise InvalidArgument(f"container name is {len(name)} chars; at most {NAME_MAX_CHARS}")
    if not _NAME_RE.match(name) or ".." in name or name.endswith("."):
        raise InvalidArgument(
            f"bad container name {name!r}: use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, without '..'")
    return name


def port(value: Any, what: str = "port") -> int:
    """A TCP/UDP port number 1-65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise InvalidArgument(f"{what} must be an integer from 1 to 65535, got {value!r}")
    return value


def protocol(value: Any) -> str:
    """'tcp' or 'udp'."""
    if value not in PROTOCOLS:
        raise InvalidArgument(f"protocol must be one of {', '.join(PROTOCOLS)}, got {value!r}")
    return value


def is_env_key(key: Any) -> bool:
    """Whether ``key`` is an environment variable name: ``[A-Za-z_]`` then
    ``[A-Za-z0-9_]``, 1 to ENV_KEY_MAX_CHARS characters."""
    return isinstance(key, str) and len(key) <= ENV_KEY_MAX_CHARS and bool(_ENV_KEY_RE.match(key))


def env_key(key: Any) -> str:
    """Return ``key`` if is_env_key.  Raises: InvalidArgument."""
    if not is_env_key(key):
        raise InvalidArgument(f"bad environment variable name {key!r:.80}: want [A-Za-z_][A-Za-z0-9_]*, "
                              f"at most {ENV_KEY_MAX_CHARS} characters")
    return key


def env(value: Any) -> dict[str, str]:
    """An environment mapping of str -> str with shell-safe keys."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument("env must be a map of NAME -> value")
    if len(value) > 256:
        raise InvalidArgument("env has more than 256 variables")
    for k, v in value.items():
        env_key(k)
        if not isinstance(v, str) or "\x00" in v or len(v) > 65536:
            raise InvalidArgument(f"environment variable {k} must be a string without NUL, under 64 KiB")
    return dict(value)


def command(value: Any, what: str = "command") -> list[str]:
    """A command as an argv list of strings; a single string means
    ``/bin/sh -c STRING``."""
    if isinstance(value, str):
        if not value.strip():
            raise InvalidArgument(f"{what} is empty")
        return ["/bin/sh", "-c", value]
    if not isinstance(value, (list, tuple)) or not value:
        raise InvalidArgument(f"{what} must be a non-empty list of strings or a string")
    if len(value) > 4096 or not all(isinstance(a, str) and "\x00" not in a for a in value):
        raise InvalidArgument(f"{what} must be a list of strings without NUL bytes")
    return list(value)


def number(value: Any, what: str, *, minimum: float, maximum: float, integer: bool = False) -> float:
    """A number within [minimum, maximum]; ``integer`` refuses floats."""
    ok_types = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_types) or not minimum <= value <= maximum:
        kind = "an integer" if integer else "a number"
        raise InvalidArgument(f"{what} must be {kind} from {_num(minimum)} to {_num(maximum)}, got {value!r}")
    return value


def _num(x: float) -> str:
    """12582912 -> "12582912 (12 MiB)"; 0.5 -> "0.5"."""
    if float(x).is_integer():
        x = int(x)
        for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20)):
            if x >= size and x % (size // 1024 or 1) == 0:
                return f"{x} ({x / size:g} {unit})"
        return str(x)
    return f"{x:g}"


def options(value: Any, allowed: dict[str, str], what: str) -> dict:
    """An options map whose keys are all in ``allowed`` (key -> description)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidArgument(f"{what} options must be a map")
    unknown = sorted(k for k in value if k not in allowed)
    if unknown:
        raise InvalidArgument(
            f"unknown {what} option(s) {', '.join(map(repr, unknown))}; known: {', '.join(sorted(allowed))}")
    return dict(value)
