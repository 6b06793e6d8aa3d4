"""A client for several endpoints of one service (the hubs of one fleet,
sharing an etcd store): ``tcp://A:7100,tcp://B:7100``.

It talks to one endpoint at a time and moves to the next when that one
cannot be reached, with one rule: a call that may have run is never sent
again.  Before the first call on an endpoint it probes it
(``_zerorpc_ping``, which changes nothing); an endpoint that does not
answer the probe is skipped, so a call goes out only to an endpoint that
just answered.  When such a call then fails without an answer (the hub died
under it, or the answer did not come in time):

* a read (``IDEMPOTENT``) is sent to the next endpoint;
* anything else fails with the typed error (Unreachable or CallTimeout)
  and a hint that it may have run, never retried.

Every endpoint failing its probe is Unreachable naming each one.
"""
from __future__ import annotations

from typing import Any, Callable

from dcctl import errors
from dcctl.wire.endpoint import validate_endpoint

__all__ = ["IDEMPOTENT", "FailoverClient", "split_endpoints"]

#: methods that change nothing, or whose repetition changes nothing more
IDEMPOTENT = frozenset({
    "_zerorpc_inspect", "_zerorpc_ping", "_zerorpc_list", "_zerorpc_name", "_zerorpc_help", "_zerorpc_args",
    "hub_info", "hosts", "events", "container_ls", "container_inspect", "container_logs", "network_ls",
    "hostinfo", "image_ls", "image_manifest", "image_layer_read", "image_upload_info", "route_ls",
    "route_table", "host_register", "host_heartbeat", "host_add"})
PROBE_TIMEOUT_SECONDS = 3.0


def split_endpoints(text: str) -> list[str]:
    """``A,B,...`` -> [A, B, ...], each validated, duplicates dropped.
    Raises: InvalidArgument (empty, or a bad endpoint)."""
    out = []
    for part in (text or "").split(","):
        part = part.strip()
        if part and part not in out:
            validate_endpoint(part)
            out.append(part)
    if not out:
        raise errors.InvalidArgument(f"no endpoint in {text!r}")
    return out


class FailoverClient:
    """RpcClient's interface (call, METHOD(...), close, context manager,
    ``endpoint``: the current one) over several endpoints.

    Args:
        endpoints: the endpoints, tried in this order.
        connect: ``connect(endpoint) -> RpcClient`` (with its timeout and
            keys).
        probe_timeout_s: seconds the probe of an endpoint may take.
    """

    def __init__(self, endpoints: list[str], connect: Callable[[str], Any],
                 probe_timeout_s: float = PROBE_TIMEOUT_SECONDS):
        if not endpoints:
            raise errors.InvalidArgument("give at least one endpoint")
        self.endpoints = list(endpoints)
        self._connect = connect
        self.probe_timeout_s = probe_timeout_s
        self._index = 0
        self._client = None
        self._probed = False
        self.switches = 0  # how many times it moved to another endpoint

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

    def _current(self):
        if self._client is None:
            self._client = self._connect(self.endpoint)
            self._probed = False
        return self._client

    def _next(self, reason: str) -> None:
        if self._client is not None:
            self._client.close(reason)
        self._client, self._probed = None, False
        self._index = (self._index + 1) % len(self.endpoints)
        self.switches += 1

    def _ready(self) -> Any:
        """A client whose endpoint answered its probe; moves on past
        endpoints that do not.  Raises: Unreachable (none answered)."""
        failures = []
        for _ in range(len(self.endpoints)):
            try:
                client = self._current()
                if not self._probed:
                    client.call("_zerorpc_ping", timeout_s=self.probe_timeout_s)
                    self._probed = True
                return client
            except (errors.Unreachable, errors.CallTimeout, errors.Unauthorized) as exc:
                failures.append(f"{self.endpoint}: {type(exc).__name__}: {exc.message}")
                self._next(f"{type(exc).__name__}")
        raise errors.Unreachable("no endpoint answered (" + "; ".join(failures) + ")",
                                 hint="are the hubs running? (DCCTL_HOST lists them, comma-separated)")

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Call ``method`` on the current endpoint (see the module doc for
        when it moves on).  Raises: the server's errors; Unreachable or
        CallTimeout (for a call that may have run: with that hint)."""
        tried = 0
        while True:
            client = self._ready()
            tried += 1
            try:
                return client.call(method, *args, timeout_s=timeout_s)
            except (errors.Unreachable, errors.CallTimeout) as exc:
                if method in IDEMPOTENT and tried < len(self.endpoints):
                    self._next(f"{type(exc).__name__} during {method}")
                    continue
                if method not in IDEMPOTENT:
                    self._next(f"{type(exc).__name__} during {method}")
                    exc.hint = (f"{method} may have run on {client.endpoint}: check (e.g. container_inspect) "
                                "before calling it again")
                raise

    def __getattr__(self, method: str) -> Callable[..., Any]:
        if method.startswith("__"):
            raise AttributeError(method)
        return lambda *args, **kw: self.call(method, *args, **kw)

    def close(self, reason: str = "client closed") -> None:
        if self._client is not None:
            self._client.close(reason)
            self._client = None

    def __enter__(self) -> "FailoverClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
