"""The hub's store when its disk fails it (SQLite full or unwritable): a
typed StoreError at the store boundary, no reservation left for ever, and a
host lost meanwhile is told back.  Real SQLite (its own page limit and
query_only make the writes fail), fake agents on real ipc sockets."""
from __future__ import annotations

import pytest

from dcctl import errors
from tests.hubfakes import FakeFleet
from tests.waiting import wait_for


@pytest.fixture
def fleet(tmp_path):
    made = FakeFleet(tmp_path, {"h1": 4, "h2": 2}, heartbeat_s=0.5)
    made.push_image()
    yield made
    made.close()


def kinds(fleet) -> list[str]:
    return [e["kind"] for e in fleet.hub.events()]


def test_a_full_store_is_a_store_error_and_reserves_nothing(fleet):
    db = fleet.store.db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count={pages}")
    made = []
    with pytest.raises(errors.StoreError, match="disk is full") as caught:
        for i in range(5000):
            fleet.hub.create_container("busybox", f"full.c{i}", {"command": "x" * 2000})
            made.append(f"full.c{i}")
    assert caught.value.hint and "state-dir" in caught.value.hint
    assert made  # some fitted before the store was full
    assert {r["name"] for r in fleet.store.containers()} == set(made)  # the failed one reserved nothing
    db.execute("PRAGMA max_page_count=1073741823")
    assert fleet.hub.create_container("busybox", "full.after")["state"] == "running"


def test_a_failed_create_whose_forget_cannot_be_written_is_forgotten_later(fleet):
    db = fleet.store.db
    fleet.agents["h1"].fail["container_start"] = errors.LxcFailure("lxc-start failed on h1")
    fleet.agents["h1"].before["container_start"] = lambda: db.execute("PRAGMA query_only=1")
    with pytest.raises(errors.DcError):
        fleet.hub.create_container("busybox", "full.left", {"host": "h1"})
    assert fleet.store.container("full.left")["state"] == "reserved"  # the forget could not be written
    assert "full.left" not in fleet.agents["h1"].containers  # the undo reached h1
    fleet.hub.start()
    db.execute("PRAGMA query_only=0")  # the disk has room again
    wait_for(lambda: not fleet.store.containers(), 10, "the failed reservation to be forgotten")
    del fleet.agents["h1"].fail["container_start"], fleet.agents["h1"].before["container_start"]
    assert fleet.hub.create_container("busybox", "full.left", {"host": "h1"})["host"] == "h1"


def test_a_host_lost_while_the_store_failed_is_told_back_when_it_registers_again(fleet):
    fleet.start_beats()
    fleet.hub.start()
    fleet.silent.add("h1")
    wait_for(lambda: fleet.store.host("h1")["state"] == "unreachable", 10, "h1 to be judged lost")
    fleet.store.db.execute("PRAGMA query_only=1")
    with pytest.raises(errors.StoreError):  # the beat that would bring it back cannot be written
        fleet.beat("h1")
    fleet.store.db.execute("PRAGMA query_only=0")
    # the agent, told of an error, registers again (agents/hubclient.py)
    fleet.hub.host_register({"name": "h1", "endpoint": fleet.endpoint("h1"), "address": fleet.address("h1"),
                             "capacity": fleet.capacity("h1"), "boot_id": "boot-h1"})
    fleet.silent.discard("h1")
    wait_for(lambda: fleet.store.host("h1")["state"] == "alive", 10, "h1 to be alive")
    assert "host_lost" in kinds(fleet) and "host_back" in kinds(fleet)
