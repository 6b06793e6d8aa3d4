"""A stream method through the hub's broadcast and queue, on a real hub
service (SQLite) and a real agent-like server over ipc: a typed
InvalidArgument, never an InternalError about an answer that cannot be
encoded (found by tests/fleet/test_fuzz.py with image_pull_progress)."""
from __future__ import annotations

import pytest

from dcctl import errors, wire
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore
from tests.waiting import wait_for

CAPACITY = {"memory_reservable_bytes": 1 << 30, "container_slots": 10}


class StreamingAgent:
    @wire.expose(stream=True)
    def progress(self, steps: int):
        for i in range(steps):
            yield {"step": i}

    @wire.expose
    def hostinfo(self) -> dict:
        return {"ok": True}


@pytest.fixture
def hub_and_host(tmp_path):
    store = HubStore(str(tmp_path / "hub"))
    hub = HubService(store, Registry(str(tmp_path / "hub" / "registry")), heartbeat_s=0.2, missed_heartbeats=3)
    svc = wire.Service(StreamingAgent(), "streaming-agent")
    endpoint = f"ipc://{tmp_path}/agent.sock"
    svc.bind(endpoint)
    svc.start()
    hub.host_register({"name": "host-1", "endpoint": endpoint, "address": "127.0.0.1", "capacity": CAPACITY,
                       "boot_id": "b1"})
    hub.start()
    wait_for(lambda: hub.workers.stats()["members"] == ["host-1"], 10, "host-1 in the queue")
    yield hub
    hub.stop()
    svc.stop()
    store.close()


def test_a_queued_stream_method_is_an_invalid_argument(hub_and_host):
    hub = hub_and_host
    with pytest.raises(errors.InvalidArgument, match="stream method"):
        hub.queue("progress", [3], {"timeout_s": 10})
    assert hub.queue("hostinfo", [], {"timeout_s": 10})["result"] == {"ok": True}  # the host went back idle


def test_a_broadcast_stream_method_is_each_hosts_invalid_argument(hub_and_host):
    hub = hub_and_host
    out = hub.broadcast("progress", [3], {"timeout_s": 10})
    assert out["results"]["host-1"]["status"] == "error" and out["results"]["host-1"]["error"] == "InvalidArgument"
    assert hub.broadcast("hostinfo", [], {"timeout_s": 10})["results"]["host-1"] == {"status": "ok",
                                                                                  "result": {"ok": True}}
