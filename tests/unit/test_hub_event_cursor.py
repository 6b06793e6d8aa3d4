"""A host's event cursor over CURVE (real keys, real ZeroMQ sockets, a real
hub on real SQLite): one call with a huge agent index (a buggy or forged
call with the host's own key) is taken and recorded as a gap, but the real
agent's next head puts the cursor back where its events stood, so none is
lost or taken twice; indexes past JSON's exact integers are a typed
refusal; another host's cursor and the fleet's index are untouched."""
from __future__ import annotations

import time

import pytest

from dcctl import auth, errors, wire
from hub import events as fleet_events
from tests.hubfakes import FakeFleet
from tests.ports import free_port

HOSTS = ("k1", "k2")


@pytest.fixture
def served(tmp_path):
    """(fleet, endpoint, {host: ClientKeys}): hosts k1 and k2, each bound to
    its own CURVE key, and the hub served over CURVE."""
    fleet = FakeFleet(tmp_path, {})
    svc, endpoint, server_pub = fleet.serve_hub_curve(str(tmp_path / "hub-keys"))
    keys = {}
    for name in HOSTS:
        pub, sec = auth.keygen(str(tmp_path / "clients"), name)
        key = auth.load_public(pub).decode()
        svc.allowlist.add("agent", name, key)
        fleet.store.bind_key(name, key)
        fleet.store.upsert_host(name, f"tcp://127.0.0.1:{free_port()}", "127.0.0.1", {}, {}, key=key)
        keys[name] = auth.ClientKeys.from_files(sec, server_pub)
    yield fleet, endpoint, keys
    svc.stop()
    fleet.close()


def _ev(index: int, container: str = "cur.web") -> dict:
    return {"index": index, "at": time.time(), "type": "exec_ended", "container": container, "exit_code": 0}


def _taken(fleet, host: str) -> list[tuple[int, str]]:
    return [(e["agent_index"], e["container"]) for e in fleet.store.events_after(0, 1000)
            if e.get("source") == "agent" and e["host"] == host]


def test_a_jumped_cursor_loses_and_repeats_no_real_event(served):
    fleet, endpoint, keys = served
    with wire.connect(endpoint, 10, keys["k1"]) as k1:
        assert k1.call("host_events", "k1", [_ev(1), _ev(2), _ev(3)], 3) == {"cursor": 3}
        for index in (fleet_events.MAX_AGENT_INDEX + 1, 2 ** 63, 2 ** 64 - 1):
            # before: 2**63 and above failed in SQLite (OverflowError: an InternalError)
            with pytest.raises(errors.InvalidArgument, match="past"):
                k1.call("host_events", "k1", [_ev(index)], fleet_events.MAX_AGENT_INDEX)
            with pytest.raises(errors.InvalidArgument, match="head must be an index"):
                k1.call("host_events", "k1", [], index)
        # one huge index with the host's own key: taken, and recorded as a gap
        assert k1.call("host_events", "k1", [_ev(10 ** 12, "cur.forged")], 10 ** 12) == {"cursor": 10 ** 12}
        (gap,) = [e for e in fleet.hub.events_log.query(0) if e["type"] == "agent_events_gap"]
        assert (gap["host"], gap["after"], gap["first"]) == ("k1", 3, 10 ** 12)
        # the real agent reconnects and asks with its real head: its events
        # stood at 3 (before: the cursor went to 0 and it sent 1..3 again)
        assert k1.call("host_events", "k1", [], 3) == {"cursor": 3}
        assert k1.call("host_events", "k1", [_ev(4)], 4) == {"cursor": 4}
        # a later jump keeps the first floor: the real head still finds 4
        assert k1.call("host_events", "k1", [_ev(10 ** 13, "cur.forged")], 10 ** 13)["cursor"] == 10 ** 13
        assert k1.call("host_events", "k1", [_ev(5)], 5) == {"cursor": 5}
        assert _taken(fleet, "k1") == [(1, "cur.web"), (2, "cur.web"), (3, "cur.web"), (10 ** 12, "cur.forged"),
                                       (4, "cur.web"), (10 ** 13, "cur.forged"), (5, "cur.web")]
        # a journal that really started over (a new state dir, head below the floor): from 0
        assert k1.call("host_events", "k1", [], 0) == {"cursor": 0}
        assert k1.call("host_events", "k1", [_ev(1, "cur.new")], 1) == {"cursor": 1}
        assert _taken(fleet, "k1")[-1] == (1, "cur.new")
        # k1's key speaks for k1 only
        with pytest.raises(errors.Unauthorized):
            k1.call("host_events", "k2", [_ev(10 ** 12)], 10 ** 12)
    # the other host's cursor and the fleet's own index are untouched
    with wire.connect(endpoint, 10, keys["k2"]) as k2:
        assert k2.call("host_events", "k2", [], 0) == {"cursor": 0}
        assert k2.call("host_events", "k2", [_ev(1)], 1) == {"cursor": 1}
    indexes = [e["index"] for e in fleet.store.events_after(0, 1000)]
    assert indexes == list(range(indexes[0], indexes[0] + len(indexes)))
    assert _taken(fleet, "k2") == [(1, "cur.web")]
