"""Failover on a real store (SQLite) and fake agents on real ipc sockets: a
lost host's containers with a restart policy are re-created elsewhere (names
kept), the others stay; when the lost host comes back, its stale copies are
removed and nothing else is touched."""
from __future__ import annotations

import gevent
import pytest

from tests.hubfakes import GiB, FakeFleet
from tests.waiting import wait_for


@pytest.fixture
def fleet(tmp_path):
    made = FakeFleet(tmp_path, {"h1": 4, "h2": 2, "h3": 1}, heartbeat_s=0.5)  # lost after 1.5 s of silence
    made.push_image()
    yield made
    made.close()


def kinds(fleet) -> list[str]:
    return [e["kind"] for e in fleet.hub.events()]


def test_a_lost_hosts_restart_policy_containers_move_and_stale_copies_go_on_return(fleet):
    hub = fleet.hub
    assert hub.create_container("busybox", "app.web", {"memory_bytes": GiB, "restart": "always"})["host"] == "h1"
    assert hub.create_container("busybox", "app.once", {"memory_bytes": GiB, "host": "h1"})["host"] == "h1"
    fleet.start_beats()
    hub.start()
    fleet.silent.add("h1")  # h1's agent still runs, but the hub hears nothing from it
    wait_for(lambda: fleet.store.host("h1")["state"] == "unreachable", 10, "h1 to be judged lost")
    wait_for(lambda: "rescheduled" in kinds(fleet), 15, "app.web to be re-created elsewhere")
    moved = fleet.store.container("app.web")
    assert (moved["host"], moved["state"]) == ("h2", "placed")  # h2 has the most free memory left
    assert fleet.agents["h2"].containers["app.web"]["state"] == "running"
    assert fleet.agents["h2"].containers["app.web"]["options"]["restart"] == "always"
    assert moved["ports"] == [{"proto": "tcp", "container_port": 80, "host_port": 20000}]
    assert fleet.store.container("app.once")["host"] == "h1"  # no restart policy: it waits for its host
    assert "app.once" not in fleet.agents["h2"].containers and not fleet.agents["h3"].containers
    assert "host_lost" in kinds(fleet)
    # h1 comes back, still running both: its copy of app.web is stale
    assert set(fleet.agents["h1"].containers) == {"app.web", "app.once"}
    fleet.silent.discard("h1")
    wait_for(lambda: "app.web" not in fleet.agents["h1"].containers, 10, "the stale copy on h1 to be removed")
    assert "host_back" in kinds(fleet) and "stale_copy_removed" in kinds(fleet)
    assert set(fleet.agents["h1"].containers) == {"app.once"}
    assert "app.web" in fleet.agents["h2"].containers and fleet.store.container("app.web")["host"] == "h2"


def test_no_host_with_room_leaves_the_container_waiting_for_its_host(fleet):
    hub = fleet.hub
    hub.create_container("busybox", "app.big", {"memory_bytes": 3 * GiB, "restart": "always"})
    fleet.start_beats()
    hub.start()
    fleet.silent.add("h1")
    wait_for(lambda: "reschedule_waiting" in kinds(fleet), 15, "a reschedule to find no host")
    waiting = [e for e in hub.events() if e["kind"] == "reschedule_waiting"][0]
    assert "h2: needs 3.0 GiB of memory, 2.0 GiB unreserved" in waiting["reason"]
    assert fleet.store.container("app.big")["host"] == "h1"
    fleet.silent.discard("h1")  # back: the reschedule stops, nothing is removed
    wait_for(lambda: fleet.store.host("h1")["state"] == "alive", 10, "h1 to be back")
    wait_for(lambda: not fleet.hub.healer.moving, 30, "the reschedule to stop")
    assert set(fleet.agents["h1"].containers) == {"app.big"}
    assert not fleet.agents["h2"].containers and not fleet.agents["h3"].containers


def _hold(agent, method: str):
    """Make ``agent``'s ``method`` wait: (reached, go) events."""
    import gevent.event
    reached, go = gevent.event.Event(), gevent.event.Event()

    def hold():
        reached.set()
        go.wait(30)
    agent.before[method] = hold
    return reached, go


def test_a_move_routes_nowhere_until_made_and_a_destroy_meanwhile_cancels_it(fleet):
    """While failover makes a container again on another host, its routes
    must not point at the new host with the lost host's port (before: the
    row kept the old ports, so the backend was "up" at h2:<h1's port>, which
    may be another container's there); a destroy during the move must not
    leave the new copy running unrecorded (before: set_placed wrote nothing
    and said nothing, "rescheduled" was logged, and h2's copy ran on)."""
    from hub import routes
    hub = fleet.hub
    hub.create_container("busybox", "app.web", {"memory_bytes": GiB, "restart": "always", "host": "h1"})
    reached, go = _hold(fleet.agents["h2"], "container_create")
    fleet.start_beats()
    hub.start()
    fleet.silent.add("h1")
    try:
        assert reached.wait(15), "the move to reach h2"
        (b,) = routes.resolve(fleet.store)[0]["backends"]
        assert b["host"] == "h2" and not b["routed"] and b["status"] == "not_mapped", b
        assert hub.container_destroy("app.web")["destroyed"] is True  # forwarded to h2: not made yet
    finally:
        go.set()
    wait_for(lambda: "reschedule_cancelled" in kinds(fleet), 15, "the move to be cancelled")
    assert "rescheduled" not in kinds(fleet)
    assert fleet.agents["h2"].containers == {}, "the copy made on h2 was undone"
    assert fleet.store.abandoned() == [] and fleet.store.reserved_memory().get("h2", (0, 0)) == (0, 0)


def test_a_container_removed_behind_the_hubs_back_is_forgotten_once_its_host_confirms(fleet, monkeypatch):
    from hub import failover
    monkeypatch.setattr(failover, "VANISHED_MIN_AGE_SECONDS", 0.0)
    monkeypatch.setattr(failover, "VANISHED_CHECK_SECONDS", 0.2)
    hub = fleet.hub
    for name in ("app.gone", "app.hidden", "app.kept"):
        assert hub.create_container("busybox", name, {"memory_bytes": GiB, "host": "h1"})["host"] == "h1"
    hub.route_add("gone.example", "app.gone", 80)
    assert [b["container"] for r in hub.route_ls() if r["name"] == "gone.example" for b in r["backends"]] == ["app.gone"]
    hidden = fleet.agents["h1"].container_ls

    def container_ls():  # app.hidden is missing from h1's heartbeats, but h1 still has it
        return [c for c in hidden() if c["name"] != "app.hidden"]
    fleet.agents["h1"].container_ls = container_ls
    del fleet.agents["h1"].containers["app.gone"]  # e.g. a broadcast container_destroy, or a wiped host
    fleet.start_beats()
    hub.start()
    wait_for(lambda: "container_vanished" in kinds(fleet), 10, "app.gone to be found gone")
    (vanished,) = [e for e in hub.events() if e["kind"] == "container_vanished"]
    assert (vanished["name"], vanished["host"]) == ("app.gone", "h1")
    assert sorted(c["name"] for c in hub.container_ls()) == ["app.hidden", "app.kept"]
    assert not [r for r in hub.route_ls() if r["name"] == "gone.example"]  # its only backend went with it
    # the name is free again, and the container its host still has stays recorded after more checks
    assert hub.create_container("busybox", "app.gone", {"memory_bytes": GiB, "host": "h2"})["host"] == "h2"
    checked = len([e for e in hub.events() if e["kind"] == "container_vanished"])
    gevent.sleep(1.0)  # five more checks of h1
    assert fleet.store.container("app.hidden")["state"] == "placed"
    assert len([e for e in hub.events() if e["kind"] == "container_vanished"]) == checked
