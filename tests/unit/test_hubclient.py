"""The agent's hub link against a real hub over its local ipc endpoint
(real HubService, store and sockets): a local agent joins, and a refusal is
logged once, clearly, however often it is retried."""
from __future__ import annotations

import logging
import os
import time

import gevent
import pytest

from agents.hubclient import HubLink
from dcctl import auth, errors, wire
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore

CAPACITY = {"memory_reservable_bytes": 1 << 30, "container_slots": 10}


class StandInAgent:
    """What the hub calls on a host in these tests."""

    @wire.expose(access="read")
    def container_ls(self) -> list:
        return []


@pytest.fixture
def local_hub(tmp_path):
    keys = str(tmp_path / "hub" / "keys")
    store = HubStore(str(tmp_path / "hub"))
    hub = HubService(store, Registry(str(tmp_path / "hub" / "registry")), heartbeat_s=0.2,
                     server_pair=auth.ensure_server_pair(keys), allowlist=auth.Allowlist(keys))
    svc = wire.Service(hub, "dc-hub", keys_dir=keys, heartbeat_s=1)
    endpoint = f"ipc://{tmp_path}/hub.sock"
    svc.bind(endpoint)
    svc.start()
    yield hub, endpoint
    svc.stop()
    hub.stop()
    store.close()


def _wait(pred, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        assert time.monotonic() < deadline, what
        gevent.sleep(0.05)


def test_a_local_agent_joins_over_the_hubs_ipc_endpoint(local_hub, tmp_path, caplog):
    hub, endpoint = local_hub
    agent = wire.Service(StandInAgent(), "dc-agent@local-1")
    agent_ep = f"ipc://{tmp_path}/agent.sock"
    agent.bind(agent_ep)
    agent.start()
    link = HubLink(endpoint, {"name": "local-1", "endpoint": agent_ep, "address": "", "labels": {}},
                   lambda: {"capacity": CAPACITY, "containers": []}, heartbeat_s=0.1)
    caplog.set_level(logging.INFO, logger="agents.hubclient")
    link.start()
    try:
        with wire.connect(endpoint, 10) as c:
            _wait(lambda: [(h["name"], h["state"], h["endpoint"]) for h in c.call("hosts")]
                  == [("local-1", "alive", agent_ep)], "the local agent never joined")
            out = c.call("broadcast", "container_ls")
            assert out["results"]["local-1"] == {"status": "ok", "result": []}, out
    finally:
        link.stop()
        agent.stop()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_refused_registration_is_logged_once_with_its_reason(local_hub, tmp_path, caplog):
    hub, endpoint = local_hub
    pub, _ = auth.keygen(str(tmp_path / "k"), "owner")
    hub.store.bind_key("taken", auth.load_public(pub).decode())  # an operator's host_add for another key
    link = HubLink(endpoint, {"name": "taken", "endpoint": f"ipc://{tmp_path}/none.sock", "address": "",
                              "labels": {}}, lambda: {"capacity": CAPACITY, "containers": []}, heartbeat_s=0.02)
    caplog.set_level(logging.INFO, logger="agents.hubclient")
    link.start()
    try:
        _wait(lambda: link.failures >= 3, "the link did not retry")
    finally:
        link.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "registration: Unauthorized" in warnings[0] and "another key" in warnings[0], warnings
    assert "taken" not in {h["name"] for h in hub.store.hosts()}


def test_an_agent_endpoint_of_the_wrong_kind_is_refused(local_hub):
    hub, endpoint = local_hub
    with wire.connect(endpoint, 10) as c:
        with pytest.raises(errors.InvalidArgument, match="ipc://"):
            c.call("host_register", {"name": "remote-1", "endpoint": "tcp://127.0.0.1:9", "capacity": CAPACITY})
    assert hub.store.hosts() == []


def test_agents_that_lost_their_hub_register_again_spread_over_the_jitter(local_hub, tmp_path):
    """A hub restart: every link notices, and the re-registrations come
    spread over jitter_s (Salt's random_reauth_delay), not all at once."""
    hub, endpoint = local_hub
    agent = wire.Service(StandInAgent(), "dc-agent@many")
    agent_ep = f"ipc://{tmp_path}/agent.sock"
    agent.bind(agent_ep)
    agent.start()
    links = [HubLink(endpoint, {"name": f"j-{i}", "endpoint": agent_ep, "address": "", "labels": {}},
                     lambda: {"capacity": CAPACITY, "containers": []}, heartbeat_s=0.2, jitter_s=2.0)
             for i in range(12)]
    for link in links:
        link.start()
    svc = None
    try:
        _wait(lambda: len(hub.store.hosts()) == 12, "the links never registered")
        first = max(h["registered_at"] for h in hub.store.hosts())
        # stop serving the hub (as a restart does), wait until every link has lost it, serve it again
        os.unlink(endpoint[len("ipc://"):])
        _wait(lambda: all(link.lost_hub for link in links), "the links did not notice", timeout_s=30)
        svc = wire.Service(hub, "dc-hub-again", heartbeat_s=1)
        svc.bind(endpoint)
        svc.start()
        _wait(lambda: all(h["registered_at"] > first for h in hub.store.hosts()), "the links did not come back",
              timeout_s=30)
        again = sorted(h["registered_at"] for h in hub.store.hosts())
        assert again[-1] - again[0] >= 0.5, again  # 12 uniform delays in 2 s: spread, not a stampede
    finally:
        for link in links:
            link.stop()
        agent.stop()
        if svc is not None:
            svc.stop()
def _hub(root, name: str):
    store = HubStore(str(root / name))
    hub = HubService(store, Registry(str(root / name / "registry")), heartbeat_s=0.1)
    svc = wire.Service(hub, "dc-hub", heartbeat_s=1)
    endpoint = f"ipc://{root}/{name}.sock"
    svc.bind(endpoint)
    svc.start()
    return store, hub, svc, endpoint


def test_a_link_whose_hub_stops_moves_to_the_next_and_rejoins_after_a_ping_and_its_delay(tmp_path):
    agent = wire.Service(StandInAgent(), "dc-agent@local-2")
    agent_ep = f"ipc://{tmp_path}/agent.sock"
    agent.bind(agent_ep)
    agent.start()
    hubs = [_hub(tmp_path, "a"), _hub(tmp_path, "b")]
    link = HubLink([hubs[0][3], hubs[1][3]], {"name": "local-2", "endpoint": agent_ep, "address": "", "labels": {}},
                   lambda: {"capacity": CAPACITY, "containers": []}, heartbeat_s=0.1, jitter_s=0.3)
    link.start()
    try:
        _wait(lambda: [h["name"] for h in hubs[0][0].hosts()] == ["local-2"], "joined the first hub")
        hubs[0][2].stop()  # the first hub goes away
        _wait(lambda: [h["name"] for h in hubs[1][0].hosts()] == ["local-2"], "joined the second hub")
        assert link.endpoint == hubs[1][3] and link.switches == 1 and link.rejoins >= 1
        _wait(lambda: link.registered and link.failures == 0, "heartbeats accepted by the second hub")
    finally:
        link.stop()
        agent.stop()
        for store, hub, svc, _ in hubs:
            svc.stop()
            hub.stop()
            store.close()
