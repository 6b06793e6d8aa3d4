"""A create the hub gave up on after the host may have made the container
(its undo could not reach the host): the hub keeps a record of that copy,
keeps the name claimed while it is undecided, and destroys the copy once the
host answers again, never adopting it; the same rule removes the copy when
the create succeeded on another host.  Real SQLite store, fake agents on
real ipc sockets."""
from __future__ import annotations

import pytest

from dcctl import errors
from tests.hubfakes import GiB, FakeFleet
from tests.waiting import wait_for


@pytest.fixture
def fleet(tmp_path):
    made = FakeFleet(tmp_path, {"h1": 4, "h2": 2})
    made.push_image()
    yield made
    made.close()


def kinds(fleet) -> list[str]:
    return [e["kind"] for e in fleet.hub.events()]


def lose_h1_mid_start(fleet) -> None:
    """h1 makes the container, then is lost during the start and its undo."""
    fleet.agents["h1"].fail["container_start"] = errors.Unreachable("lost h1 during container_start")
    fleet.agents["h1"].fail["container_destroy"] = errors.Unreachable("h1 is still away")


def test_a_copy_left_by_a_failed_create_is_destroyed_when_its_host_is_back_not_adopted(fleet):
    lose_h1_mid_start(fleet)
    with pytest.raises(errors.Unreachable, match="on h1 .the host it is pinned to. failed: lost h1"):
        fleet.hub.create_container("busybox", "kill.mid", {"host": "h1"})
    assert "kill.mid" in fleet.agents["h1"].containers  # made there; the undo did not reach h1
    with pytest.raises(errors.ContainerExists) as caught:  # undecided: the name stays claimed
        fleet.hub.create_container("busybox", "kill.mid", {"host": "h2"})
    assert "h1" in (caught.value.hint or "")
    fleet.agents["h1"].fail.clear()  # h1 is back
    fleet.start_beats()
    fleet.hub.start()
    wait_for(lambda: "kill.mid" not in fleet.agents["h1"].containers, 10, "h1's copy to be destroyed")
    wait_for(lambda: not fleet.store.abandoned(), 10, "the record of the copy to be forgotten")
    assert "adopted" not in kinds(fleet)
    with pytest.raises(errors.NoSuchContainer):
        fleet.store.container("kill.mid")
    assert fleet.hub.create_container("busybox", "kill.mid", {"host": "h2"})["host"] == "h2"


def test_a_copy_left_on_a_host_when_the_create_succeeded_elsewhere_is_removed(fleet):
    lose_h1_mid_start(fleet)
    assert fleet.hub.create_container("busybox", "kill.mid", {"memory_bytes": GiB})["host"] == "h2"
    assert "kill.mid" in fleet.agents["h1"].containers
    fleet.agents["h1"].fail.clear()
    fleet.start_beats()
    fleet.hub.start()
    wait_for(lambda: "kill.mid" not in fleet.agents["h1"].containers, 10, "h1's stale copy to be destroyed")
    wait_for(lambda: not fleet.store.abandoned(), 10, "the record of the copy to be forgotten")
    row = fleet.store.container("kill.mid")
    assert (row["host"], row["state"]) == ("h2", "placed")
    assert fleet.agents["h2"].containers["kill.mid"]["state"] == "running"
    assert "adopted" not in kinds(fleet)


def test_a_destroy_whose_outcome_was_lost_is_forgotten_when_the_host_no_longer_lists_it(fleet):
    assert fleet.hub.create_container("busybox", "kill.gone", {"host": "h1"})["host"] == "h1"
    assert fleet.hub.create_container("busybox", "kill.kept", {"host": "h1"})["host"] == "h1"
    fleet.agents["h1"].fail["container_destroy"] = errors.Unreachable("lost h1 during container_destroy")
    for name in ("kill.gone", "kill.kept"):
        with pytest.raises(errors.Unreachable):
            fleet.hub.container_destroy(name, True)
    assert fleet.store.container("kill.gone")["state"] == "destroying"
    fleet.agents["h1"].fail.clear()
    del fleet.agents["h1"].containers["kill.gone"]  # the restarted agent finished this destroy, not the other
    fleet.start_beats()
    fleet.hub.start()
    wait_for(lambda: "kill.gone" not in {r["name"] for r in fleet.store.containers()}, 10,
             "the ghost row to be forgotten")
    assert "destroy_finished" in kinds(fleet)
    assert fleet.store.container("kill.kept")["state"] == "destroying"  # still on h1: kept until destroyed
    assert fleet.hub.container_destroy("kill.kept", True)["destroyed"]
    assert not fleet.store.containers() and not fleet.agents["h1"].containers


def test_an_agents_refusal_to_destroy_keeps_the_row_placed(fleet):
    fleet.hub.create_container("busybox", "kill.busy", {"host": "h1"})
    fleet.agents["h1"].fail["container_destroy"] = errors.Busy("h1 is busy")
    with pytest.raises(errors.Busy):
        fleet.hub.container_destroy("kill.busy", True)
    assert fleet.store.container("kill.busy")["state"] == "placed"
