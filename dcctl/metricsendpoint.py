"""The Prometheus endpoint that agents and the hub share: a registry with
the RPC counters every dcfleet server keeps, fed by the wire server's
observer hook, and its text exposition served over HTTP by gevent's WSGI
server (prometheus_client's ``make_wsgi_app``).

``{prefix}_rpc_requests_total`` counts calls served by ``method`` and
``outcome`` ("ok" or the error's class name); ``{prefix}_rpc_duration_seconds``
is their latency by ``method`` (a stream: to its first item).  No label
carries a secret: method names and error class names only.
"""
from __future__ import annotations

import logging
from typing import Callable

import gevent
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, make_wsgi_app

from dcctl import errors

__all__ = ["RPC_BUCKETS", "MetricsEndpoint", "parse_listen"]

log = logging.getLogger(__name__)

disable_created_metrics()  # no *_created series: half the RPC samples, and nothing reads them

#: The RPC latency histogram's buckets, seconds.
RPC_BUCKETS = (0.002, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30, 300)


def parse_listen(text: str, default: str) -> tuple[str, int]:
    """"ADDR:PORT" ("" is ``default``; "[::1]:PORT" for IPv6) -> (addr, port).
    Raises: InvalidArgument (no address, a port that is not 0-65535)."""
    host, _, port = (text or default).rpartition(":")
    if not host or not port.isdigit() or int(port) > 65535:
        raise errors.InvalidArgument(f"--metrics-listen {text!r} is not ADDR:PORT (or off)")
    return host.strip("[]"), int(port)


class MetricsEndpoint:
    """A registry with the RPC counters of a server named ``prefix``
    ("dcfleet_agent", "dcfleet_hub"), served at http://ADDR:PORT/metrics.

    Args: prefix; listen ("ADDR:PORT", "" for ``default``; port 0 picks a
    free one).  Subclasses register their collectors on ``registry`` and
    may override ``serve(environ, start_response)`` (the WSGI app).
    Raises: InvalidArgument (a bad ``listen``)."""

    def __init__(self, prefix: str, listen: str, default: str):
        self.registry = CollectorRegistry(auto_describe=False)
        # by method and outcome; the histogram by method only (each series
        # costs a dozen samples a scrape); the instance label tells servers apart
        self.requests = Counter(f"{prefix}_rpc_requests", "RPC calls served, by method and outcome",
                                ["method", "outcome"], registry=self.registry)
        self.latency = Histogram(f"{prefix}_rpc_duration_seconds", "Time to answer an RPC call, seconds "
                                 "(a stream: to its first item)", ["method"], buckets=RPC_BUCKETS,
                                 registry=self.registry)
        self.addr, self.port = parse_listen(listen, default)
        self.app: Callable = make_wsgi_app(self.registry)
        self._server: WSGIServer | None = None

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        """The wire server's hook: count one served call."""
        self.requests.labels(method, outcome).inc()
        self.latency.labels(method).observe(seconds)

    def serve(self, environ, start_response):
        """The WSGI app behind /metrics (prometheus_client's)."""
        return self.app(environ, start_response)

    def start(self) -> str:
        """Bind and serve in a greenlet; returns the URL of /metrics.

        SERVER_NAME is the bound address itself: without it gevent's
        WSGIServer looks it up with ``socket.getfqdn`` (a reverse DNS
        query) at start, which in a network namespace whose resolver does
        not answer took 10 s, and delayed the agent's registration with the
        hub past its heartbeat grace (a restarted agent was judged lost).
        Raises: OSError (the address cannot be bound)."""
        self._server = WSGIServer((self.addr, self.port), self.serve, log=None, error_log=log,
                                  environ={"SERVER_NAME": self.addr})
        self._server.start()
        self.port = self._server.server_port
        return self.url

    @property
    def url(self) -> str:
        """http://ADDR:PORT/metrics (the port bound, once started)."""
        host = f"[{self.addr}]" if ":" in self.addr else self.addr
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving (at most a second for requests under way)."""
        if self._server is not None:
            self._server.stop(timeout=1)
            gevent.sleep(0)
