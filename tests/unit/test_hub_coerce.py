"""The hub's broadcast and queue convert text arguments by the same rules as
dcctl (dcctl.wire.coerce), from a real agent's _zerorpc_inspect over ipc."""
from __future__ import annotations

import pytest

from dcctl import wire
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore

CAPACITY = {"memory_reservable_bytes": 1 << 30, "container_slots": 10}


class TypedAgent:
    """Stands in for an agent: says what types its arguments arrived as."""

    @wire.expose
    def typed(self, count: int, ratio: float, flag: bool, size_bytes: int, limit: int | None,
              name: str, *rest: bool) -> dict:
        values = [count, ratio, flag, size_bytes, limit, name, *rest]
        return {"values": values, "types": [type(v).__name__ for v in values]}


@pytest.fixture
def hub(tmp_path):
    agent = wire.Service(TypedAgent(), "typed-agent")
    endpoint = f"ipc://{tmp_path}/agent.sock"
    agent.bind(endpoint)
    agent.start()
    store = HubStore(str(tmp_path / "hub"))
    service = HubService(store, Registry(str(tmp_path / "hub" / "registry")), heartbeat_s=0.2, missed_heartbeats=3)
    service.host_register({"name": "host-1", "endpoint": endpoint, "address": "127.0.0.1", "capacity": CAPACITY,
                           "boot_id": "boot-a"})
    yield service
    service.stop()
    store.close()
    agent.stop()


WORDS = ["+5", "0.5", "on", "4K", "none", "web", "yes", "OFF"]
WANT = {"values": [5, 0.5, True, 4096, None, "web", True, False],
        "types": ["int", "float", "bool", "int", "NoneType", "str", "bool", "bool"]}


def test_broadcast_converts_words_by_the_one_coercion(hub):
    out = hub.broadcast("typed", list(WORDS), {"timeout_s": 10})
    assert out["summary"]["ok"] == 1, out
    assert out["results"]["host-1"]["result"] == WANT


def test_queue_converts_words_by_the_one_coercion(hub):
    hub.workers.set_members({"host-1"})  # what the hub's monitor does for alive hosts
    assert hub.queue("typed", list(WORDS), {"timeout_s": 10})["result"] == WANT


def test_words_that_fit_no_type_reach_the_agent_as_text_and_its_check_answers(hub):
    out = hub.broadcast("typed", ["1_000", "nan", "maybe", "4X", "3", "web"], {"timeout_s": 10})
    assert out["results"]["host-1"]["error"] == "InvalidArgument"
    assert "count" in out["results"]["host-1"]["message"]
