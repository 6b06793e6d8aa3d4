"""Placement on a real store (SQLite) and fake agents on real ipc sockets:
the chosen host failing moves the reservation to the next feasible host,
NoCapacity names each host's reason, and the journal of placements a hub
restart interrupted is adopted or rolled back once each host answers."""
from __future__ import annotations

import gevent
import gevent.event
import pytest

from dcctl import errors
from tests.hubfakes import GiB, FakeFleet
from tests.waiting import wait_for


@pytest.fixture
def fleet(tmp_path):
    made = FakeFleet(tmp_path, {"h1": 4, "h2": 2, "h3": 1})  # spread ranks h1, h2, h3
    made.push_image()
    yield made
    made.close()


def test_the_next_feasible_host_is_tried_when_the_chosen_one_fails(fleet):
    fleet.agents["h1"].fail["container_start"] = errors.LxcFailure("lxc-start failed on h1")
    result = fleet.hub.create_container("busybox", "app.web", {"memory_bytes": GiB})
    assert result["host"] == "h2" and result["state"] == "running" and result["address"] == fleet.address("h2")
    assert result["ports"] == [{"proto": "tcp", "container_port": 80, "host_port": 20000}]
    row = fleet.store.container("app.web")
    assert (row["host"], row["state"], row["ports"]) == ("h2", "placed", result["ports"])
    # h1 made it, failed to start it, and had it destroyed again; h3 was never asked
    assert ("container_destroy", "app.web") in fleet.agents["h1"].calls
    assert fleet.agents["h1"].containers == {}
    assert fleet.agents["h2"].containers["app.web"]["state"] == "running"
    assert fleet.agents["h3"].calls == []


def test_no_capacity_names_each_hosts_reason_and_the_last_failure(fleet):
    for h in ("h1", "h2"):
        fleet.agents[h].fail["container_create"] = errors.Unreachable(f"{h} went away")
    with pytest.raises(errors.NoCapacity) as caught:
        fleet.hub.create_container("busybox", "app.big", {"memory_bytes": 2 * GiB})
    message = str(caught.value)
    assert "h1: already tried for this placement" in message
    assert "h2: already tried for this placement" in message
    assert "h3: needs 2.0 GiB of memory, 1.0 GiB unreserved" in message
    assert "last failure on h2: Unreachable: h2 went away" in message
    with pytest.raises(errors.NoSuchContainer):  # the reservation is gone
        fleet.store.container("app.big")
    assert all(not a.containers for a in fleet.agents.values())
    # the capacity is free again: the same create succeeds once h1 works
    del fleet.agents["h1"].fail["container_create"]
    assert fleet.hub.create_container("busybox", "app.big", {"memory_bytes": 2 * GiB})["host"] == "h1"


def test_an_error_not_worth_retrying_elsewhere_ends_the_placement(fleet):
    fleet.agents["h1"].fail["container_create"] = errors.InvalidArgument("bad command on h1")
    with pytest.raises(errors.InvalidArgument, match="bad command on h1"):
        fleet.hub.create_container("busybox", "app.bad")
    assert fleet.agents["h2"].calls == [] and fleet.agents["h3"].calls == []
    with pytest.raises(errors.NoSuchContainer):
        fleet.store.container("app.bad")


def test_a_pinned_host_that_fails_is_not_replaced(fleet):
    fleet.agents["h3"].fail["image_pull"] = errors.CallTimeout("pull too slow")
    with pytest.raises(errors.CallTimeout, match="app.pinned on h3 .the host it is pinned to. failed: pull too slow"):
        fleet.hub.create_container("busybox", "app.pinned", {"host": "h3"})  # its own error, not NoCapacity
    assert fleet.agents["h1"].calls == [] and fleet.agents["h2"].calls == []


def test_the_journal_adopts_rolls_back_and_waits_for_hosts_that_do_not_answer(fleet):
    image = fleet.registry.resolve("busybox")["id"]
    # as a hub that died mid-placement left them: h1 made "kept", never made
    # "lost"; h2 made "later" but does not answer yet
    for name, host in (("kept", "h1"), ("lost", "h1"), ("later", "h2")):
        fleet.store.claim(name, image, 0, {}, lambda figures, host=host: host)
    for name, host in (("kept", "h1"), ("later", "h2")):
        fleet.agents[host].containers[name] = {"name": name, "state": "running", "image_id": image,
                                               "ports": [{"proto": "tcp", "container_port": 80, "host_port": 20001}]}
    fleet.unserve("h2")
    fleet.start_beats()
    fleet.hub.start()  # the journal: every row still "reserved"
    wait_for(lambda: fleet.store.container("kept")["state"] == "placed", 10, "kept to be adopted")
    assert fleet.store.container("kept")["ports"] == [{"proto": "tcp", "container_port": 80, "host_port": 20001}]
    wait_for(lambda: "lost" not in {r["name"] for r in fleet.store.containers()}, 10, "lost to be rolled back")
    assert fleet.store.container("later")["state"] == "reserved"  # undecided while h2 does not answer
    assert ("container_inspect", "later") not in fleet.agents["h2"].calls
    fleet.serve("h2")
    wait_for(lambda: fleet.store.container("later")["state"] == "placed", 10, "later to be adopted once h2 answers")
    # the callers of those creates got an error: the fleet events say what became of each
    said = {(e["type"], e["name"]): e for e in fleet.hub.events_log.query("0", ["type=adopted"])
            + fleet.hub.events_log.query("0", ["type=create_rolled_back"])}
    assert said[("adopted", "kept")]["by"] == "journal" and said[("adopted", "kept")]["state"] == "running"
    assert said[("adopted", "later")]["host"] == "h2"
    assert said[("create_rolled_back", "lost")]["host"] == "h1"


def hold_pulls(fleet, host: str):
    """Make ``host``'s image_pull wait: (pulled, go) events, ``pulled`` set
    once a pull reached the host, which then waits for ``go`` (30 s at most)."""
    pulled, go = gevent.event.Event(), gevent.event.Event()

    def hold():
        pulled.set()
        go.wait(30)
    fleet.agents[host].before["image_pull"] = hold
    return pulled, go


def test_a_destroy_during_the_create_leaves_no_container_the_fleet_does_not_know(fleet):
    """container_destroy of a name whose create is still under way (its row
    "reserved") must not forget the reservation under the create: before,
    the create went on, made and started the container on h1 and answered
    success, while the fleet had no row (the name free for a second create
    elsewhere, the capacity untallied)."""
    pulled, go = hold_pulls(fleet, "h1")
    create = gevent.spawn(fleet.hub.create_container, "busybox", "mid.web", {"memory_bytes": GiB})
    try:
        assert pulled.wait(30), "the create to reach h1"
        with pytest.raises(errors.Busy):
            fleet.hub.container_destroy("mid.web")
    finally:
        go.set()
    result = create.get(timeout=30)
    assert result["host"] == "h1"
    row = fleet.store.container("mid.web")
    assert (row["host"], row["state"]) == ("h1", "placed")
    assert fleet.store.reserved_memory() == {"h1": (GiB, 1)}
    # once made, the destroy goes through and both records go
    assert fleet.hub.container_destroy("mid.web")["destroyed"] is True
    assert fleet.agents["h1"].containers == {} and fleet.store.reserved_memory() == {}


def test_a_create_whose_row_goes_meanwhile_leaves_no_copy_on_its_host(fleet):
    """host_remove of the chosen host while a create is under way there
    forgets the reservation and fails the calls to it: the create must fail
    with a typed error (before: TypeError in the SQLite store's move of the
    row that is gone, an InternalError to the caller) and leave no row."""
    pulled, go = hold_pulls(fleet, "h1")
    create = gevent.spawn(fleet.hub.create_container, "busybox", "gone.web", {"memory_bytes": GiB})
    try:
        assert pulled.wait(30), "the create to reach h1"
        assert fleet.hub.host_remove("h1")["containers_forgotten"] == 1
    finally:
        go.set()
    with pytest.raises(errors.NoSuchContainer):
        create.get(timeout=30)
    assert fleet.agents["h1"].containers == {}, "the copy made on h1 was undone"
    with pytest.raises(errors.NoSuchContainer):
        fleet.store.container("gone.web")
    assert fleet.store.reserved_memory() == {}


@pytest.mark.parametrize("route", [True, False])
def test_a_create_whose_row_goes_after_its_last_agent_call_fails_typed_and_undoes_its_copy(fleet, route):
    """The row removed once the host made the container, before the hub
    marks it placed (host_remove on another hub of the same store, as the
    store's own forget): before, set_placed wrote nothing and said nothing;
    create_container answered success without a record (no_route), or
    failed on its default route with a bare NoSuchContainer, and the copy
    ran on h1 unrecorded either way."""
    def remove_row():
        fleet.store.forget("late.web")
    fleet.agents["h1"].before["container_connection_add"] = remove_row
    options = {"memory_bytes": GiB, "host": "h1", **({} if route else {"no_route": True})}
    with pytest.raises(errors.NoSuchContainer, match="removed from the fleet while it was being created on h1"):
        fleet.hub.create_container("busybox", "late.web", options)
    assert fleet.agents["h1"].containers == {}, "the copy made on h1 was undone"
    with pytest.raises(errors.NoSuchContainer):
        fleet.store.container("late.web")
    assert fleet.store.reserved_memory() == {} and fleet.store.abandoned() == []
    assert "placed" not in fleet.hub.events_log.kinds() and fleet.store.routes() == []
    # the name is free again
    del fleet.agents["h1"].before["container_connection_add"]
    assert fleet.hub.create_container("busybox", "late.web", options)["host"] == "h1"


def test_a_create_too_large_to_start_or_to_store_is_refused_before_any_reservation(fleet):
    """A command and env over their budget (512 KiB; execve's E2BIG past 2 MiB)
    or labels past a store row's size (etcd refuses requests over 1.5 MiB)
    are InvalidArgument before the claim: no row, no host asked."""
    big_env = {f"V{i}": "x" * 60000 for i in range(10)}  # 600 kB: each value is allowed alone
    with pytest.raises(errors.InvalidArgument, match="command and env take") as caught:
        fleet.hub.create_container("busybox", "app.envy", {"env": big_env})
    assert "E2BIG" in caught.value.hint
    with pytest.raises(errors.InvalidArgument, match="at most 32"):  # a host's label rules bound them
        fleet.hub.create_container("busybox", "app.tagged", {"label": {f"k{i}": "y" * 1000 for i in range(900)}})
    with pytest.raises(errors.InvalidArgument, match="bad label key"):
        fleet.hub.create_container("busybox", "app.tagged", {"label": {"zone=a": "b"}})
    for name in ("app.envy", "app.tagged"):
        with pytest.raises(errors.NoSuchContainer):
            fleet.store.container(name)
    assert all(a.calls == [] for a in fleet.agents.values())
    # just under the budget is fine
    ok = fleet.hub.create_container("busybox", "app.fits", {"env": {f"V{i}": "x" * 60000 for i in range(8)}})
    assert ok["state"] == "running"
