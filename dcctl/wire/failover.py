"""A client for several endpoints of one service (the hubs of one fleet,
sharing an etcd store): ``tcp://A:7100,tcp://B:7100``.

It talks to one endpoint at a time and moves to the next when that one
cannot be reached, with one rule: a call that may have run is never sent
again.  Before the first call, and after each move, it probes the
endpoints (``_zerorpc_ping``, which changes nothing) at once, the current
one with a head start of HEAD_START_SECONDS, and the first to answer wins
(happy eyeballs): a dead endpoint costs about nothing
while another answers, so a call goes out only to an endpoint that just
answered.  A dead endpoint alone fails at once when its host refuses the
connection (nothing listens), after the probe timeout when nothing answers.  When such a call then fails without an answer (the hub died
under it, or the answer did not come in time):

* a read (``IDEMPOTENT``) is sent to the next endpoint;
* anything else fails with the typed error (Unreachable or CallTimeout)
  and a hint that it may have run, never retried.

Every endpoint failing its probe is Unreachable naming each one.
"""
from __future__ import annotations

from typing import Any, Callable

import gevent

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
PROBE_CLOSE_SECONDS = 2.0  # a losing probe's end, once its client is closed
#: the current endpoint's head start over the others (RFC 8305's "connection
#: attempt delay"): the order is kept while it answers, and one that answers
#: nothing costs this much, not a probe timeout
HEAD_START_SECONDS = 0.25


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
        self._probing: dict[int, Any] = {}  # endpoint index -> its client while its probe runs
        self.switches = 0  # how many times it moved to another endpoint

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._index]

    def _next(self, reason: str) -> None:
        if self._client is not None:
            self._client.close(reason)
        self._client, self._probed = None, False
        self._index = (self._index + 1) % len(self.endpoints)
        self.switches += 1

    def _probe(self, index: int) -> Any:
        """A client of endpoint ``index`` that answered its probe, or the
        exception that ended the try (a probe's body: never raises)."""
        client = None
        try:
            client = self._connect(self.endpoints[index])
            self._probing[index] = client
            client.call("_zerorpc_ping", timeout_s=self.probe_timeout_s)
            return client
        except Exception as exc:  # the caller sorts them out
            if client is not None:
                client.close(f"{type(exc).__name__}")
            return exc
        finally:
            self._probing.pop(index, None)

    def _ready(self) -> Any:
        """A client whose endpoint answered its probe.  The endpoints are
        probed at once (happy eyeballs): the current one, then, unless it
        answered within HEAD_START_SECONDS, the others; the first to answer
        wins and the others are closed, so a dead endpoint
        costs nothing while another answers (one that refuses the
        connection fails at once; one that answers nothing, after
        ``probe_timeout_s``).  Raises: Unreachable (none answered), or the
        error that made a client impossible (e.g. InvalidArgument)."""
        if self._client is not None and self._probed and not getattr(self._client, "lost", None):
            return self._client  # (a connection known lost is probed again: nothing was sent on it)
        if self._client is not None:
            self._client.close("probing again")
            self._client = None
        n = len(self.endpoints)
        order = [(self._index + i) % n for i in range(n)]
        tasks = {gevent.spawn(self._probe, order[0]): order[0]}
        gevent.wait(list(tasks), timeout=HEAD_START_SECONDS)  # the current one's head start
        tasks.update({gevent.spawn(self._probe, i): i for i in order[1:]})
        failures: dict[int, BaseException] = {}
        winner = None
        try:
            for task in gevent.iwait(list(tasks)):
                value = task.value
                if isinstance(value, BaseException):
                    failures[tasks[task]] = value
                    continue
                winner = tasks[task], value
                break
        finally:
            for task in tasks:
                if not task.ready():
                    index = tasks[task]
                    probing = self._probing.get(index)
                    if probing is not None:
                        probing.close("another endpoint answered first")  # its probe ends at once
                    task.join(timeout=PROBE_CLOSE_SECONDS)
                    if not task.ready():
                        task.kill(block=False)
                elif task.value is not None and not isinstance(task.value, BaseException) \
                        and (winner is None or task.value is not winner[1]):
                    task.value.close("another endpoint answered first")
        if winner is not None:
            index, self._client = winner
            if index != self._index:
                self._index = index
                self.switches += 1
            self._probed = True
            return self._client
        for index in order:
            exc = failures.get(index)
            if exc is not None and not isinstance(exc, (errors.Unreachable, errors.CallTimeout, errors.Unauthorized)):
                raise exc
        text = "; ".join(f"{self.endpoints[i]}: {type(failures[i]).__name__}: {getattr(failures[i], 'message', failures[i])}"
                         for i in order if i in failures)
        raise errors.Unreachable("no endpoint answered (" + text + ")",
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
