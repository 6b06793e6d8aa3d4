"""dcctl.wire.failover over real ZeroMQ sockets: reads move to the next
endpoint, a call that may have run is never sent twice, and dcctl's
``--hub A,B`` / ``DCCTL_HOST=A,B`` builds such a client."""
from __future__ import annotations

import gevent
import pytest

from dcctl import errors, wire
from dcctl.cli import commands
from dcctl.wire.failover import FailoverClient, split_endpoints


class Hub:
    def __init__(self, name):
        self.name, self.creates = name, []

    @wire.expose(access="read")
    def hub_info(self) -> dict:
        return {"name": self.name}

    @wire.expose
    def create_container(self, image: str, name: str) -> dict:
        self.creates.append(name)
        gevent.sleep(0.3 if name.startswith("slow") else 0)
        return {"name": name, "hub": self.name}


def _serve(tmp_path, name):
    hub = Hub(name)
    svc = wire.Service(hub, name, heartbeat_s=0.5)
    svc.bind(f"ipc://{tmp_path}/{name}.sock")
    svc.start()
    return hub, svc, f"ipc://{tmp_path}/{name}.sock"


def _client(endpoints, timeout_s=5.0):
    return FailoverClient(endpoints, lambda ep: wire.connect(ep, timeout_s=timeout_s), probe_timeout_s=2.0)


def test_endpoints_split_and_validated():
    assert split_endpoints("ipc:///a.sock, tcp://127.0.0.1:7100,ipc:///a.sock") == ["ipc:///a.sock",
                                                                                    "tcp://127.0.0.1:7100"]
    for bad in ("", ",", "ftp://x"):
        with pytest.raises(errors.InvalidArgument):
            split_endpoints(bad)


def test_a_dead_endpoint_is_skipped_before_anything_is_sent(tmp_path):
    b, svc, ep_b = _serve(tmp_path, "hub-b")
    try:
        with _client([f"ipc://{tmp_path}/dead.sock", ep_b]) as client:
            assert client.create_container("busybox", "x.1")["hub"] == "hub-b"
            assert client.endpoint == ep_b and client.switches == 1 and b.creates == ["x.1"]
    finally:
        svc.stop()


def test_reads_move_on_and_a_create_that_may_have_run_is_not_sent_again(tmp_path):
    a, svc_a, ep_a = _serve(tmp_path, "hub-a")
    b, svc_b, ep_b = _serve(tmp_path, "hub-b")
    try:
        with _client([ep_a, ep_b], timeout_s=3.0) as client:
            assert client.hub_info()["name"] == "hub-a"
            call = gevent.spawn(client.create_container, "busybox", "slow.1")
            gevent.sleep(0.1)
            svc_a.stop()  # hub-a goes away with the create in flight
            with pytest.raises((errors.Unreachable, errors.CallTimeout)) as caught:
                call.get(timeout=10)
            assert "may have run" in (caught.value.hint or "")
            assert b.creates == []  # never sent again
            assert client.hub_info()["name"] == "hub-b"  # the next call goes to the hub that answers
            assert client.create_container("busybox", "x.2")["hub"] == "hub-b"
    finally:
        svc_a.stop()
        svc_b.stop()


def test_every_endpoint_dead_is_one_unreachable_naming_each(tmp_path):
    with _client([f"ipc://{tmp_path}/x.sock", f"ipc://{tmp_path}/y.sock"]) as client:
        with pytest.raises(errors.Unreachable, match="x.sock.*y.sock"):
            client.hub_info()


def test_dcctl_takes_several_hubs(tmp_path):
    _, svc, ep = _serve(tmp_path, "hub-c")
    try:
        client = commands._connect(f"ipc://{tmp_path}/gone.sock,{ep}", 5.0)
        assert isinstance(client, FailoverClient) and client.hub_info()["name"] == "hub-c"
        client.close()
        with pytest.raises(commands.UsageError):
            commands._connect("ipc:///a.sock,bogus", 5.0)
    finally:
        svc.stop()
