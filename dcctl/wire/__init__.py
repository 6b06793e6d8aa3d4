"""The wire layer that the hub, the agents, the router and dcctl share.

Modules, by concern:

    endpoint      the endpoint grammar: ``parse_endpoint`` -> Endpoint (kind
                  ipc/tcp, path or host+port); the only parser of endpoints
    methods       the served method table: ``@expose``, MethodSpec (argument
                  checks), ``method_table``, ``check_result`` (result checks)
    codec         what a message may carry (``wire_problem``, integer range,
                  request size) and tolerant decoding
    server        ``Service``, its callers (``current_caller``)
    ipcpath       ipc:// paths: ``ipc_listening``, ``claim_ipc_path``
    client        ``RpcClient``, ``connect``; remote error names -> dcctl.errors
    fanout        ``FanoutClient``: one request to many servers over shared
                  ROUTER sockets (the hub's broadcast)
    zrpc          zerorpc's private attributes and ZeroMQ socket options: the
                  only module that touches either (nothing else reaches past it)
    relay         container_enter's terminal channel (a PAIR socket of msgpack lists)
    coerce        the one text-to-type coercion (dcctl words, hub broadcast/queue)
    refs          image names, refs, digests and manifest ids
    clientconfig  the client's endpoint and CURVE key settings and config paths

``from dcctl import wire`` and then ``wire.connect``, ``wire.Service``,
``wire.expose``, ``wire.RpcClient``, ``wire.current_caller``, ... (``__all__``).
Names load on first use, so the standard-library-only parts (endpoint,
refs, coerce, clientconfig) import without gevent, ZeroMQ or zerorpc: images/
and ops/ use them.
"""
from __future__ import annotations

import importlib
from typing import Any

#: Every exported name and the module that defines it.
_EXPORTS = {
    "Endpoint": "endpoint", "parse_endpoint": "endpoint", "validate_endpoint": "endpoint",
    "ipc_endpoint": "endpoint", "tcp_endpoint": "endpoint",
    "Exposed": "methods", "expose": "methods", "MethodSpec": "methods", "method_table": "methods",
    "check_result": "methods",
    "MAX_REQUEST_BYTES": "codec", "MAX_RESULT_BYTES": "codec", "MAX_NESTING": "codec", "MAX_VALUES": "codec",
    "WIRE_INT_MIN": "codec", "WIRE_INT_MAX": "codec", "wire_problem": "codec", "check_wire_ints": "codec",
    "DEFAULT_HEARTBEAT_SECONDS": "server", "Caller": "server", "current_caller": "server", "Service": "server",
    "claim_ipc_path": "ipcpath",
    "DEFAULT_TIMEOUT_SECONDS": "client", "RpcClient": "client", "connect": "client",
    "ZERORPC_NOISE": "zrpc", "ZerorpcNoiseFilter": "zrpc", "quiet_zerorpc_noise": "zrpc",
}
_SUBMODULES = ("client", "clientconfig", "codec", "coerce", "endpoint", "fanout", "ipcpath", "methods", "refs",
               "relay", "server", "zrpc")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
