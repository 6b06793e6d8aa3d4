"""The endpoint grammar: the one parser of ``ipc://PATH`` and ``tcp://HOST:PORT``.

Every caller that needs an endpoint's kind, socket path, host or port asks
``parse_endpoint`` (no string slicing elsewhere).  Standard library only, so
the hub, the agents, ops/ and tests can use it without ZeroMQ.

Grammar::

    ipc://PATH              PATH: any characters but whitespace and NUL
    tcp://HOST:PORT         HOST: a name, an IPv4 address, ``*`` (bind on all)
                            or ``[IPv6]``; PORT: 0-65535, or ``*`` (bind to any)
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from dcctl.errors import InvalidArgument

__all__ = ["Endpoint", "parse_endpoint", "validate_endpoint", "ipc_endpoint", "tcp_endpoint"]

_IPC_RE = re.compile(r"^ipc://([^\s\x00]+)$")
_TCP_RE = re.compile(r"^tcp://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.*-]+):(\d{1,5}|\*)$")
_LOOPBACK_NAMES = ("localhost", "::1")


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint.

    Attributes:
        kind: "ipc" or "tcp".
        path: the socket file of an ipc endpoint ("" for tcp).
        host: a tcp endpoint's host, IPv6 without its brackets ("" for ipc).
        port: a tcp endpoint's port, None for ``*`` or for ipc.
        text: the endpoint as written.
    """

    kind: str
    text: str
    path: str = ""
    host: str = ""
    port: int | None = None

    @property
    def is_ipc(self) -> bool:
        return self.kind == "ipc"

    @property
    def is_tcp(self) -> bool:
        return self.kind == "tcp"

    @property
    def is_loopback(self) -> bool:
        """A tcp endpoint on 127.0.0.0/8, ::1 or localhost."""
        return self.is_tcp and (self.host.startswith("127.") or self.host in _LOOPBACK_NAMES)

    def without_port(self) -> str:
        """A tcp endpoint's ``tcp://HOST`` (IPv6 in brackets), the form
        ZeroMQ's bind_to_random_port takes."""
        return f"tcp://[{self.host}]" if ":" in self.host else f"tcp://{self.host}"

    def with_port(self, port: int) -> str:
        """The tcp endpoint text on the same host with another port."""
        return tcp_endpoint(self.host, port)

    def __str__(self) -> str:
        return self.text


def parse_endpoint(text: Any) -> Endpoint:
    """Parse ``ipc://PATH`` or ``tcp://HOST:PORT`` (see the module doc).

    Raises:
        InvalidArgument: not a string, another scheme, an empty path, a
            malformed host or a port over 65535.
    """
    if isinstance(text, str):
        m = _IPC_RE.match(text)
        if m:
            return Endpoint("ipc", text, path=m.group(1))
        m = _TCP_RE.match(text)
        if m and (m.group(2) == "*" or int(m.group(2)) <= 65535):
            return Endpoint("tcp", text, host=m.group(1).strip("[]"),
                            port=None if m.group(2) == "*" else int(m.group(2)))
    raise InvalidArgument(f"bad endpoint {text!r}: expected ipc:///path or tcp://host:port")


def validate_endpoint(text: Any) -> str:
    """Return ``text`` if it parses (see parse_endpoint).  Raises: InvalidArgument."""
    return parse_endpoint(text).text


def ipc_endpoint(path: str) -> str:
    """``ipc://PATH`` for a socket file path."""
    return parse_endpoint(f"ipc://{path}").text


def tcp_endpoint(host: str, port: int) -> str:
    """``tcp://HOST:PORT``; an IPv6 host gets its brackets."""
    return parse_endpoint(f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}").text
