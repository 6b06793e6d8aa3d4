"""Heartbeats off the hot path, on a real store (SQLite): beats are taken in
memory and written in one transaction per flush; a host coming back is
written at once; the liveness judgement counts beats not yet written; a hub
that stops writes the last beats, so a restarted hub finds them."""
from __future__ import annotations

import time

import gevent
import pytest

from dcctl import errors
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore

CAPACITY = {"memory_reservable_bytes": 1 << 30, "container_slots": 10}
HOSTS = [f"host-{i:02d}" for i in range(50)]


def make_hub(tmp_path, flush_s, heartbeat_s=0.2):
    store = HubStore(str(tmp_path / "hub"))
    hub = HubService(store, Registry(str(tmp_path / "hub" / "registry")), heartbeat_s=heartbeat_s,
                     missed_heartbeats=3, heartbeat_flush_s=flush_s)
    return store, hub


@pytest.fixture
def made(tmp_path):
    made = []

    def make(flush_s=0.5, heartbeat_s=0.2):
        store, hub = make_hub(tmp_path, flush_s, heartbeat_s)
        for name in HOSTS:
            hub.host_register({"name": name, "endpoint": f"ipc://{tmp_path}/{name}.sock", "capacity": CAPACITY})
        made.append((store, hub))
        return store, hub

    yield make
    for store, hub in made:
        hub.stop()
        store.close()


def write_transactions(store) -> list[str]:
    """Every write transaction the store's connection begins from now on."""
    seen: list[str] = []
    store.db.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith("BEGIN") else None)
    return seen


def beat_all(hub, rounds: int) -> float:
    for _ in range(rounds):
        for name in HOSTS:
            hub.host_heartbeat(name, {"capacity": {**CAPACITY, "container_slots": 20}})
    return time.time()


def test_beats_are_written_in_one_transaction_per_flush(made):
    store, hub = made()
    before = {h["name"]: h["last_heartbeat"] for h in store.hosts()}
    writes = write_transactions(store)
    beat_all(hub, 4)
    assert writes == []  # 200 heartbeats, no write transaction on the hot path
    assert all(h["last_heartbeat"] == before[h["name"]] for h in store.hosts())
    view = {h["name"]: h for h in hub.hosts()}  # the view counts the beats heard
    assert all(view[n]["last_heartbeat"] == hub.beats.last(n) > before[n] for n in HOSTS)
    assert hub.beats.flush() == 50
    assert writes == ["BEGIN IMMEDIATE"]
    rows = {h["name"]: h for h in store.hosts()}
    assert all(rows[n]["last_heartbeat"] == hub.beats.last(n) for n in HOSTS)
    assert all(rows[n]["capacity"]["container_slots"] == 20 for n in HOSTS)


def test_a_summary_json_cannot_hold_is_refused_and_fails_no_flush(made):
    store, hub = made()
    hub.host_heartbeat("host-01", {"capacity": CAPACITY, "metrics": {"load": 0.5}})
    with pytest.raises(errors.InvalidArgument, match="JSON"):
        hub.host_heartbeat("host-02", {"capacity": CAPACITY, "metrics": {"blob": b"\x00"}})
    assert hub.beats.flush() == 1
    assert store.host("host-01")["summary"]["metrics"] == {"load": 0.5}
    assert store.host("host-02")["summary"] == {}


def test_flush_zero_writes_every_beat_at_once(made):
    store, hub = made(flush_s=0)
    writes = write_transactions(store)
    beat_all(hub, 2)
    assert len(writes) == 100
    assert all(h["last_heartbeat"] == hub.beats.last(h["name"]) for h in store.hosts())


def test_a_host_coming_back_is_written_at_once(made):
    store, hub = made()
    store.mark_unreachable(time.time() + 1)
    assert {h["state"] for h in store.hosts()} == {"unreachable"}
    hub.host_heartbeat("host-07", {"capacity": CAPACITY})
    assert store.host("host-07")["state"] == "alive"
    assert store.host("host-07")["last_heartbeat"] == hub.beats.last("host-07")
    assert [e["host"] for e in hub.events() if e["kind"] == "host_back"] == ["host-07"]
    hub.host_heartbeat("host-07", {"capacity": CAPACITY})  # alive now: back in memory
    assert store.host("host-07")["last_heartbeat"] < hub.beats.last("host-07")


def test_the_judge_counts_beats_not_yet_written(made):
    store, hub = made(flush_s=3600, heartbeat_s=0.5)  # nothing is written while the test runs
    hub.start()
    deadline = time.monotonic() + 60
    while any(h["state"] == "alive" for h in store.hosts() if h["name"] in HOSTS[25:]):
        assert time.monotonic() < deadline, "the silent hosts were never judged"
        for name in HOSTS[:25]:
            hub.host_heartbeat(name, {"capacity": CAPACITY})
        gevent.sleep(hub.heartbeat_s / 4)
    states = {h["name"]: h["state"] for h in store.hosts()}
    assert {states[n] for n in HOSTS[:25]} == {"alive"}
    assert {states[n] for n in HOSTS[25:]} == {"unreachable"}
    assert hub.beats.flushes == 0


def test_a_stopped_hub_writes_its_last_beats(tmp_path):
    store, hub = make_hub(tmp_path, 3600)
    for name in HOSTS:
        hub.host_register({"name": name, "endpoint": f"ipc://{tmp_path}/{name}.sock", "capacity": CAPACITY})
    beat_all(hub, 1)
    last = {n: hub.beats.last(n) for n in HOSTS}
    hub.stop()
    store.close()
    store, hub = make_hub(tmp_path, 0.5)  # the restarted hub
    try:
        assert {h["name"]: h["last_heartbeat"] for h in store.hosts()} == last
    finally:
        hub.stop()
        store.close()
