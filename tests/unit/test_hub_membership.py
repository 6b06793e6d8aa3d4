"""The hub's membership rules on a real store (SQLite) and real sockets: a
restarted agent's calls in flight fail at once, a restarted hub gives every
host a grace period, and a broadcast that targets no host is an error."""
from __future__ import annotations

import time

import gevent
import pytest

from dcctl import cli, errors, wire
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore
from tests.waiting import wait_for

CAPACITY = {"memory_reservable_bytes": 1 << 30, "container_slots": 10}


class SlowAgent:
    """Stands in for an agent: a pull that takes as long as it is told."""

    @wire.expose
    def image_pull(self, seconds: float) -> dict:
        gevent.sleep(seconds)
        return {"pulled": True}


@pytest.fixture
def hub(tmp_path):
    store = HubStore(str(tmp_path / "hub"))
    service = HubService(store, Registry(str(tmp_path / "hub" / "registry")), heartbeat_s=0.2,
                         missed_heartbeats=3)
    yield service
    service.stop()
    store.close()


@pytest.fixture
def agent(tmp_path):
    svc = wire.Service(SlowAgent(), "slow-agent", heartbeat_s=0.5)
    endpoint = f"ipc://{tmp_path}/agent.sock"
    svc.bind(endpoint)
    svc.start()
    yield endpoint
    svc.stop()


def register(hub, name, endpoint, boot_id):
    return hub.host_register({"name": name, "endpoint": endpoint, "address": "127.0.0.1",
                              "capacity": CAPACITY, "boot_id": boot_id})


def test_a_new_boot_id_fails_the_calls_in_flight_at_once(hub, agent):
    register(hub, "host-1", agent, "boot-a")
    pull = gevent.spawn(hub.agents.call, "host-1", "image_pull", 300.0, timeout_s=600)
    wait_for(lambda: hub.agents.cached("host-1") and hub.agents.cached("host-1")._calls, 5, "the pull in flight")
    register(hub, "host-1", agent, "boot-a")  # the same process registering again: nothing is lost
    hub.host_heartbeat("host-1", {"capacity": CAPACITY, "boot_id": "boot-a"})
    gevent.sleep(0.2)
    assert not pull.ready()
    hub.host_heartbeat("host-1", {"capacity": CAPACITY, "boot_id": "boot-b"})  # it restarted
    wait_for(pull.ready, 5, "the pull to fail")
    assert isinstance(pull.exception, errors.Unreachable) and "restarted" in str(pull.exception)
    assert "host_restarted" in [e["kind"] for e in hub.events()]
    assert hub.agents.call("host-1", "image_pull", 0.0) == {"pulled": True}  # a new client for the new process
    # a registration with a new boot id does the same
    pull = gevent.spawn(hub.agents.call, "host-1", "image_pull", 300.0, timeout_s=600)
    wait_for(lambda: hub.agents.cached("host-1")._calls, 5, "the second pull in flight")
    register(hub, "host-1", agent, "boot-c")
    wait_for(pull.ready, 5, "the second pull to fail")
    assert isinstance(pull.exception, errors.Unreachable)


def test_a_restarted_hub_gives_every_host_a_full_grace_period(hub, agent):
    for name in ("quiet", "chatty"):
        register(hub, name, agent, f"boot-{name}")
    # as the previous hub left them: last heartbeats long ago, still "alive"
    hub.store.db.execute("UPDATE hosts SET last_heartbeat=?", (time.time() - 3600,))
    grace_s = hub.heartbeat_s * hub.missed_heartbeats
    hub.start()
    started = time.monotonic()
    beats = gevent.spawn(_beat_forever, hub, "chatty")
    try:
        wait_for(lambda: hub.store.host("quiet")["state"] == "unreachable", 10, "the silent host to be judged")
        lost_after_s = time.monotonic() - started
        assert lost_after_s >= grace_s * 0.95, f"judged {lost_after_s:.2f} s after the start"
        assert hub.store.host("chatty")["state"] == "alive"
        assert [e["host"] for e in hub.events() if e["kind"] == "host_lost"] == ["quiet"]
    finally:
        beats.kill()


def _beat_forever(hub, name):
    gevent.sleep(hub.heartbeat_s * 2)  # its first beat comes late, but within the grace
    while True:
        hub.host_heartbeat(name, {"capacity": CAPACITY})
        gevent.sleep(hub.heartbeat_s / 4)


def test_a_broadcast_that_targets_no_host_is_an_error(hub, agent, tmp_path, capsys):
    register(hub, "host-1", agent, "boot-a")
    svc = wire.Service(hub, "dc-hub")
    endpoint = f"ipc://{tmp_path}/hub.sock"
    svc.bind(endpoint)
    svc.start()
    try:
        with wire.connect(endpoint, timeout_s=10) as client:
            for target in ("db-*", "label:zone=nowhere"):
                with pytest.raises(errors.NoSuchHost, match="no host matches"):
                    client.call("broadcast", "hostinfo", [], {"target": target})
            with pytest.raises(errors.NoSuchHost):
                client.call("broadcast", "hostinfo", [], {"target": "db-*", "fire_and_forget": True})
        capsys.readouterr()
        code = gevent.spawn(cli.run, ["-H", endpoint, "broadcast", "hostinfo", "--target", "db-*"], {}).get(timeout=30)
        assert code == 1
        assert "dcctl: NoSuchHost: no host matches the target 'db-*'" in capsys.readouterr().err
    finally:
        svc.stop()


@pytest.mark.parametrize("boot_id", ["", 7, "x" * 129, ["a"]])
def test_a_bad_boot_id_is_refused_before_any_change(hub, agent, boot_id):
    with pytest.raises(errors.InvalidArgument, match="boot_id"):
        register(hub, "host-1", agent, boot_id)
    with pytest.raises(errors.NoSuchHost):
        hub.store.host("host-1")
    register(hub, "host-1", agent, "boot-a")
    with pytest.raises(errors.InvalidArgument, match="boot_id"):
        hub.host_heartbeat("host-1", {"capacity": CAPACITY, "boot_id": boot_id})


def test_the_queue_members_follow_joins_removals_and_losses_without_rereading_every_pass(hub, agent):
    """The monitor re-reads the alive hosts only when membership changed
    (and every MEMBERS_REFRESH_PASSES passes), yet the worker queue's
    members still follow every join, removal and loss at the next pass."""
    hub.start()
    members = lambda: set(hub.hub_info()["queue"]["members"])  # noqa: E731
    register(hub, "host-1", agent, "boot-1")
    register(hub, "host-2", agent, "boot-2")
    wait_for(lambda: members() == {"host-1", "host-2"}, 10, "both hosts in the queue")
    hub.host_remove("host-2")
    wait_for(lambda: members() == {"host-1"}, 10, "the removed host out of the queue")
    # host-1 beats no more: lost after its grace, and out of the queue
    wait_for(lambda: members() == set(), 20, "the lost host out of the queue")
    assert hub.store.host("host-1")["state"] == "unreachable"
    hub.host_heartbeat("host-1", {"capacity": CAPACITY, "boot_id": "boot-1"})  # back
    wait_for(lambda: members() == {"host-1"}, 10, "the host back in the queue")
    assert not hub.members_changed()  # the monitor took the note


def test_fire_and_forget_broadcasts_are_bounded(hub, agent):
    """Each fire-and-forget broadcast holds its hosts' calls until their
    timeout_s: past FIRE_AND_FORGET_MAX still running, the next is Busy; once
    they end (timed out here), broadcasts are taken again."""
    from hub.fleetwide import FIRE_AND_FORGET_MAX
    register(hub, "host-1", agent, "boot-a")
    for _ in range(FIRE_AND_FORGET_MAX):
        out = hub.broadcast("image_pull", [30], {"fire_and_forget": True, "timeout_s": 1})
        assert out["fire_and_forget"] is True
    with pytest.raises(errors.Busy, match="fire-and-forget broadcasts are still running"):
        hub.broadcast("image_pull", [30], {"fire_and_forget": True, "timeout_s": 1})
    wait_for(lambda: not hub._fire_and_forget, 30, "the broadcasts to time out")
    assert hub.broadcast("image_pull", [30], {"fire_and_forget": True, "timeout_s": 1})["fire_and_forget"]
