"""The shared Prometheus endpoint (dcctl/metricsendpoint.py)."""
from __future__ import annotations

import urllib.request

import gevent.pywsgi
import pytest

from dcctl import errors
from dcctl.metricsendpoint import MetricsEndpoint, parse_listen


def test_start_makes_no_name_lookup_and_serves(monkeypatch):
    """gevent's WSGIServer looks its address up (socket.getfqdn, a reverse
    DNS query) unless SERVER_NAME is given: where the resolver does not
    answer that held an agent's start for 10 s, past its heartbeat grace."""
    lookups = []

    def getfqdn(name=""):
        lookups.append(name)
        raise OSError("no resolver here")

    monkeypatch.setattr(gevent.pywsgi.socket, "getfqdn", getfqdn)
    endpoint = MetricsEndpoint("dcfleet_test", "127.0.0.1:0", "127.0.0.1:0")
    url = endpoint.start()
    try:
        endpoint.observe("ping", "ok", 0.001)
        body = gevent.get_hub().threadpool.apply(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
        assert 'dcfleet_test_rpc_requests_total{method="ping",outcome="ok"} 1.0' in body
        assert url == f"http://127.0.0.1:{endpoint.port}/metrics" and endpoint.port > 0
    finally:
        endpoint.stop()
    assert lookups == []


@pytest.mark.parametrize("text", ["7000", ":", "host:port", "1.2.3.4:65536"])
def test_a_bad_listen_is_a_typed_error(text):
    with pytest.raises(errors.InvalidArgument):
        parse_listen(text, "127.0.0.1:9323")


def test_listen_forms():
    assert parse_listen("", "127.0.0.1:9323") == ("127.0.0.1", 9323)
    assert parse_listen("[::1]:0", "127.0.0.1:9323") == ("::1", 0)
