"""The fleet events section of both stores (real SQLite in a tmp dir, a real
etcd on loopback): indexes never reused, cursors with their events, the
since-time lookup, retention marks; and the hub's EventLog over each."""
from __future__ import annotations

import time
import uuid

import pytest

from dcctl import errors
from hub.events import EventLog
from hub.store import HubStore
from tests.etcdkit import running_etcd


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    with running_etcd(str(tmp_path_factory.mktemp("etcd"))) as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
def store(request, tmp_path):
    if request.param == "sqlite":
        made = HubStore(str(tmp_path / "hub"))
    else:
        from hub.store.etcd import EtcdStore
        made = EtcdStore(request.getfixturevalue("etcd_server").url, f"/evt-test-{uuid.uuid4().hex[:8]}/", lease_s=2)
    yield made
    made.close()


def test_append_read_and_cursor(store):
    assert store.events_bounds() == {"first": 1, "last": 0, "pruned_index": 0, "pruned_at": 0.0}
    now = time.time()
    made = store.events_append([{"at": now - 10, "type": "a"}, {"at": now - 5, "type": "b"}])
    assert [e["index"] for e in made] == [1, 2]
    docs = [{"at": now, "type": "c", "agent_index": i} for i in range(1, 251)]  # past one etcd transaction
    made = store.events_append(docs, host="h1", agent_index=250)
    assert [e["index"] for e in made] == list(range(3, 253))
    assert store.event_cursor("h1") == 250 and store.event_cursor("h2") == 0
    assert [e["type"] for e in store.events_after(0, 3)] == ["a", "b", "c"]
    assert store.events_after(252, 10) == []
    assert store.events_index_at(now - 7) == 1 and store.events_index_at(now - 100) == 0
    store.set_event_cursor("h1", 0)
    assert store.event_cursor("h1") == 0
    assert store.events_bounds()["last"] == 252


def test_pruning_keeps_the_newest_and_never_reuses_an_index(store):
    now = time.time()
    store.events_append([{"at": now - 3600, "type": "old"}] + [{"at": now, "type": "x"} for _ in range(59)])
    assert store.events_prune(1000, 600, now=now) == 1  # the old one, by age
    assert store.events_prune(50, 3600 * 24, now=now) == 9  # beyond the count
    bounds = store.events_bounds()
    assert bounds["first"] == 11 and bounds["last"] == 60 and bounds["pruned_index"] == 10
    assert store.events_after(0, 100)[0]["index"] == 11
    assert store.events_append([{"at": now, "type": "y"}])[0]["index"] == 61


def test_the_event_log_over_each_store(store):
    log = EventLog(store, max_events=100)
    log.add("host_added", host="h1")
    ev = {"at": time.time(), "type": "died", "container": "evt.s", "exit_code": 3}
    assert log.ingest("h1", [{**ev, "index": 1}], 1) == 1
    assert log.ingest("h1", [{**ev, "index": 1}], 1) == 1  # taken once
    got = log.query("0", ["type=died"])
    assert len(got) == 1 and got[0]["exit_code"] == 3 and got[0]["host"] == "h1"
    with pytest.raises(errors.InvalidArgument, match="in the future"):
        log.query("99")


def test_concurrent_hub_events_are_written_once_each(store):
    """Twenty creates recording "placed" at once: on etcd each append yields
    on its request, and an append that sent what another was still writing
    wrote it twice (a fresh operator saw 2-3 "placed" per create)."""
    import gevent
    log = EventLog(store, max_events=1000)
    got = gevent.joinall([gevent.spawn(log.add, "placed", name=f"evt.c{i}", host="h1") for i in range(20)],
                         raise_error=True)
    stored = [g.value for g in got]
    assert all(s is not None and s["name"] == f"evt.c{i}" for i, s in enumerate(stored))
    assert len({s["index"] for s in stored}) == 20
    written = [e["name"] for e in store.events_after(0, 1000) if e["type"] == "placed"]
    assert sorted(written) == sorted(f"evt.c{i}" for i in range(20))


def test_retention_is_per_source(store):
    now = time.time()
    store.events_append([{"at": now, "type": "host_added", "host": "h1"}])
    store.events_append([{"at": now, "type": "died", "source": "agent", "host": "h2"}])
    store.events_append([{"at": now, "type": "died", "source": "agent", "host": "h1"} for _ in range(300)])
    store.events_append([{"at": now, "type": "placed", "host": "h2"}])
    assert store.events_prune(10, 3600, now=now, max_per_host=20) == 280  # h1's oldest only
    kept = store.events_after(0, 1000)
    assert [e["index"] for e in kept[:2]] == [1, 2] and kept[-1]["index"] == 303 and len(kept) == 23
    assert store.events_source_marks() == {"agent:h1": 282}
    assert store.events_bounds()["pruned_index"] == 0  # a host's own count: not the fleet's marks
    assert store.events_prune(10, 60, now=now + 3600, max_per_host=20) == 23  # the age limit: all sources
    assert store.events_bounds()["pruned_index"] == 303


def test_all_hosts_events_together_are_bounded_the_largest_cut_first(store):
    now = time.time()
    store.events_append([{"at": now, "type": "host_added", "host": "h0"}])
    for host, n in (("h1", 5), ("h2", 30), ("h3", 80)):
        store.events_append([{"at": now, "type": "died", "source": "agent", "host": host} for _ in range(n)])
    # each host may keep 60, all together 50: h1 keeps its 5, h2 and h3 share the rest equally
    assert store.events_prune(10, 3600, now=now, max_per_host=60, max_agent_events=50) == 115 - 5 - 22 - 22
    kept = store.events_after(0, 1000)
    by_host = {h: len([e for e in kept if e.get("source") == "agent" and e["host"] == h]) for h in ("h1", "h2", "h3")}
    assert by_host == {"h1": 5, "h2": 22, "h3": 22}
    assert kept[0]["type"] == "host_added"  # the hub's own are apart
    assert store.events_bounds()["pruned_index"] == 0  # hosts' counts: not the fleet's marks


def test_retention_keeps_water_fills():
    from hub.store.base import retention_keeps
    assert retention_keeps({"hub": 5, "agent:a": 100, "agent:b": 10}, 3, 60, None) == {
        "hub": 3, "agent:a": 60, "agent:b": 10}
    assert retention_keeps({"hub": 5, "agent:a": 100, "agent:b": 10, "agent:c": 50}, 3, 60, 100) == {
        "hub": 3, "agent:a": 45, "agent:b": 10, "agent:c": 45}
    assert retention_keeps({"agent:a": 10, "agent:b": 10}, 3, 60, 100) == {"agent:a": 10, "agent:b": 10}
