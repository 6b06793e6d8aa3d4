"""Store conformance: the same cases against both implementations of
hub/store/base.py, real SQLite in a tmp dir and a real etcd on loopback
(tests/etcdkit.py; each test has its own key prefix)."""
from __future__ import annotations

import time
import uuid

import gevent
import pytest

from dcctl import errors
from hub import scheduler
from hub.store import HubStore, Store
from tests.etcdkit import running_etcd

KEY_A, KEY_B = "A" * 40, "B" * 40
GiB = 1 << 30


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    with running_etcd(str(tmp_path_factory.mktemp("etcd"))) as server:
        yield server


@pytest.fixture(params=["sqlite", "etcd"])
def make_store(request, tmp_path):
    """make() -> a store; for etcd every make() of one test shares its
    prefix (two hubs on one fleet), for SQLite there is one store."""
    made: list[Store] = []
    if request.param == "sqlite":
        one = HubStore(str(tmp_path / "hub"))
        made.append(one)

        def make():
            return one
    else:
        from hub.store.etcd import EtcdStore
        server = request.getfixturevalue("etcd_server")
        prefix = f"/etc-test-{uuid.uuid4().hex[:8]}/"

        def make():
            s = EtcdStore(server.url, prefix, lease_s=2)
            made.append(s)
            return s
    yield make
    for s in made:
        s.close()


@pytest.fixture
def store(make_store):
    return make_store()


def _host(store, name, mem=4 * GiB, slots=10, labels=None):
    return store.upsert_host(name, f"ipc:///run/{name}.sock", "10.0.0.1", labels or {},
                             {"memory_reservable_bytes": mem, "container_slots": slots})


def _claim(store, name, mem=GiB, request=None):
    req = request or scheduler.Request(mem)
    return store.claim(name, "img", mem, {"options": {}}, scheduler.choose(store.hosts(), req))


def test_every_store_implements_the_whole_interface(store):
    assert isinstance(store, Store) and store.kind in ("sqlite", "etcd")
    assert not getattr(type(store), "__abstractmethods__", None)


def test_keys_bind_one_to_one_and_registration_checks_them(store):
    assert store.bind_key("h1", KEY_A)["key"] == KEY_A
    assert store.bind_key("h1", KEY_A)["key"] == KEY_A  # idempotent
    with pytest.raises(errors.Conflict):
        store.bind_key("h2", KEY_A)
    with pytest.raises(errors.Conflict):
        store.bind_key("h1", KEY_B)
    assert store.name_of_key(KEY_A) == "h1" and store.binding("h1")["name"] == "h1"
    with pytest.raises(errors.Unauthorized):
        store.upsert_host("h1", "tcp://10.0.0.1:7000", "", {}, {}, KEY_B)
    with pytest.raises(errors.Unauthorized):
        store.upsert_host("h9", "tcp://10.0.0.1:7000", "", {}, {}, KEY_B)
    row = store.upsert_host("h1", "tcp://10.0.0.1:7000", "10.0.0.1", {"zone": "a"}, {"container_slots": 3}, KEY_A)
    assert row["previous_state"] is None and row["state"] == "alive" and row["labels"] == {"zone": "a"}
    assert store.upsert_host("h1", "tcp://10.0.0.1:7000", "", {}, {}, KEY_A)["previous_state"] == "alive"
    with pytest.raises(errors.Unauthorized):
        store.host_state("h1", KEY_B)
    store.remove_host("h1")
    assert store.binding("h1") is None and store.name_of_key(KEY_A) is None and store.hosts() == []
    with pytest.raises(errors.NoSuchHost):
        store.host("h1")


def test_heartbeats_keep_hosts_alive_and_missed_ones_make_them_unreachable(store):
    _host(store, "h1"), _host(store, "h2")
    assert store.host_state("h1") == "alive" and store.host_state("nope") is None
    assert store.heartbeat("nope", {"capacity": {}}) is None
    now = time.time()
    store.record_beats({"h1": (now + 100, '{"capacity": {"container_slots": 7}, "n": 1}', '{"container_slots": 7}'),
                        "ghost": (now, "{}", None)})
    h1 = store.host("h1")
    assert h1["last_heartbeat"] == pytest.approx(now + 100) and h1["capacity"] == {"container_slots": 7}
    assert h1["summary"]["n"] == 1
    store.record_beats({"h1": (now + 50, '{"n": 2}', None)})  # older: the last heartbeat never goes back
    assert store.host("h1")["last_heartbeat"] == pytest.approx(now + 100)
    assert store.mark_unreachable(now + 10, fresh={"h3"}) == ["h2"]
    assert store.host_state("h2") == "unreachable" and store.mark_unreachable(now + 10) == []
    assert store.heartbeat("h2", {"capacity": {"container_slots": 2}}) == "unreachable"
    assert store.host("h2")["state"] == "alive" and store.host("h2")["capacity"] == {"container_slots": 2}
    assert [h["name"] for h in store.hosts()] == ["h1", "h2"]


def test_a_name_is_claimed_once_and_an_abandoned_copy_keeps_it(store):
    _host(store, "h1")
    row = _claim(store, "a.web")
    assert (row["name"], row["host"], row["state"], row["memory_bytes"]) == ("a.web", "h1", "reserved", GiB)
    with pytest.raises(errors.ContainerExists):
        _claim(store, "a.web")
    assert store.reserved_memory() == {"h1": (GiB, 1)}
    store.abandon("b.web", "h1")
    assert store.is_abandoned("b.web", "h1") and [r["name"] for r in store.abandoned("h1")] == ["b.web"]
    with pytest.raises(errors.ContainerExists, match="still claimed"):
        _claim(store, "b.web")
    store.unabandon("b.web", "h1")
    assert store.abandoned() == [] and _claim(store, "b.web")["host"] == "h1"


def test_concurrent_claims_from_two_hubs_never_over_commit_a_host(make_store):
    a, b = make_store(), make_store()
    _host(a, "h1", mem=3 * GiB, slots=10), _host(a, "h2", mem=10 * GiB, slots=2)
    outcomes: dict[str, str] = {}

    def one(i):
        s = a if i % 2 else b
        try:
            outcomes[f"c{i}"] = _claim(s, f"c{i}", GiB)["host"]
        except errors.NoCapacity:
            outcomes[f"c{i}"] = "none"

    gevent.joinall([gevent.spawn(one, i) for i in range(12)], raise_error=True)
    placed = [h for h in outcomes.values() if h != "none"]
    assert sorted(placed) == ["h1"] * 3 + ["h2"] * 2  # 3 GiB on h1, 2 slots on h2
    assert a.reserved_memory() == b.reserved_memory() == {"h1": (3 * GiB, 3), "h2": (2 * GiB, 2)}
    assert sorted(r["name"] for r in a.containers()) == sorted(n for n, h in outcomes.items() if h != "none")


def test_move_assign_and_forget_keep_reservations_exact(store):
    _host(store, "h1"), _host(store, "h2", mem=8 * GiB)
    assert _claim(store, "m.1", GiB)["host"] == "h2"  # spread: most free memory
    host = store.move("m.1", scheduler.choose(store.hosts(), scheduler.Request(GiB), exclude={"h2"}))
    assert host == "h1" and store.container("m.1")["host"] == "h1"
    assert store.reserved_memory().get("h1") == (GiB, 1) and store.reserved_memory().get("h2", (0, 0)) == (0, 0)
    store.assign("m.1", "h2")
    assert store.container("m.1")["host"] == "h2" and store.reserved_memory().get("h1", (0, 0)) == (0, 0)
    store.forget("m.1")
    store.forget("m.1")  # a no-op
    assert all(v == (0, 0) for v in store.reserved_memory().values()) and store.containers() == []
    with pytest.raises(errors.NoSuchContainer):
        store.container("m.1")


def _summed(store) -> dict:
    """{host: (memory_bytes, count)} summed over the container rows."""
    out: dict = {}
    for r in store.containers():
        mem, n = out.get(r["host"], (0, 0))
        out[r["host"]] = (mem + r["memory_bytes"], n + 1)
    return out


def test_reservations_always_equal_the_sum_of_the_container_rows(store):
    _host(store, "h1", mem=64 * GiB, slots=100), _host(store, "h2", mem=64 * GiB, slots=100)
    steps = [lambda: _claim(store, "r.1", GiB), lambda: _claim(store, "r.2", 2 * GiB),
             lambda: _claim(store, "r.3", 0), lambda: store.move("r.1", scheduler.choose(
                 store.hosts(), scheduler.Request(GiB), exclude={store.container("r.1")["host"]})),
             lambda: store.assign("r.2", "h1"), lambda: store.set_placed("r.2", "img", []),
             lambda: store.set_state("r.2", "destroying", "placed"), lambda: store.adopt("r.4", "h2", "img", [], GiB),
             lambda: store.forget("r.3"), lambda: store.forget("r.1"), lambda: store.forget("r.2"),
             lambda: store.forget("r.4")]
    for step in steps:
        step()
        held = {h: v for h, v in store.reserved_memory().items() if v != (0, 0)}
        assert held == _summed(store)
    assert _summed(store) == {}


def test_a_claim_returns_its_row_as_stored(store):
    _host(store, "h1")
    row = store.claim("c.1", "img", GiB, {"options": {"env": {"A": "1"}}, "labels": {}}, scheduler.choose(
        store.hosts(), scheduler.Request(GiB)))
    assert row == store.container("c.1")


def test_host_rows_are_the_callers_own_and_follow_every_change(store):
    _host(store, "h1", labels={"zone": "a"}), _host(store, "h2", labels={"zone": "a"})
    first = store.hosts()
    first[0]["labels"]["zone"] = "changed"
    first[0]["capacity"]["container_slots"] = 0
    first[1]["state"] = "gone"
    again = store.hosts()
    assert [h["labels"] for h in again] == [{"zone": "a"}, {"zone": "a"}]
    assert [h["capacity"]["container_slots"] for h in again] == [10, 10] and again[1]["state"] == "alive"
    _host(store, "h1", slots=3, labels={"zone": "b"})
    assert [(h["labels"], h["capacity"]["container_slots"]) for h in store.hosts()] == [
        ({"zone": "b"}, 3), ({"zone": "a"}, 10)]
    store.heartbeat("h2", {"capacity": {"memory_reservable_bytes": GiB, "container_slots": 7}})
    assert store.hosts()[1]["capacity"]["container_slots"] == 7
    store.remove_host("h1")
    assert [h["name"] for h in store.hosts()] == ["h2"]


def test_states_ports_and_adoption(store):
    _host(store, "h1")
    _claim(store, "s.1")
    store.set_placed("s.1", "img2", [{"proto": "tcp", "container_port": 80, "host_port": 32000}])
    row = store.container("s.1")
    assert row["state"] == "placed" and row["image"] == "img2" and row["ports"][0]["host_port"] == 32000
    assert store.set_state("s.1", "destroying", "placed") and not store.set_state("s.1", "destroying", "placed")
    assert store.destroying("h1") == ["s.1"] and store.destroying("h2") == []
    store.set_ports("s.1", [])
    assert store.container("s.1")["ports"] == []
    store.adopt("s.2", "h1", "img", [], 2 * GiB)
    store.adopt("s.2", "h2", "img", [])  # the name has a row: a no-op
    assert store.container("s.2")["host"] == "h1" and store.container("s.2")["state"] == "placed"
    assert store.reserved_memory()["h1"] == (3 * GiB, 2)
    assert [r["name"] for r in store.containers("h1")] == ["s.1", "s.2"] and store.containers("h2") == []


def test_routes_follow_their_container(store):
    _host(store, "h1")
    _claim(store, "r.1")
    with pytest.raises(errors.NoSuchPortMapping):
        store.add_route("www.dcf.test", "r.1", 80)
    with pytest.raises(errors.NoSuchContainer):
        store.add_route("www.dcf.test", "r.9", 80)
    store.set_placed("r.1", "img", [{"proto": "tcp", "container_port": 80, "host_port": 32000}])
    assert store.add_route("www.dcf.test", "r.1", 80) is True
    assert store.add_route("www.dcf.test", "r.1", 80, exist_ok=True) is False
    with pytest.raises(errors.RouteExists):
        store.add_route("www.dcf.test", "r.1", 80)
    store.add_route("tcp:5432", "r.1", 80)
    store.add_route("*.dcf.test", "r.1", 80)
    assert [(r["name"], r["container"], r["port"]) for r in store.routes()] == [
        ("*.dcf.test", "r.1", 80), ("tcp:5432", "r.1", 80), ("www.dcf.test", "r.1", 80)]
    store.remove_route("tcp:5432", "r.1", 80)
    with pytest.raises(errors.NoSuchRoute):
        store.remove_route("tcp:5432", "r.1", 80)
    store.forget("r.1")
    assert store.routes() == []


def test_one_leader_among_the_hubs_and_it_moves_when_the_leader_leaves(make_store):
    a, b = make_store(), make_store()
    a.join("hub-a", "tcp://127.0.0.1:1")
    b.join("hub-b", "tcp://127.0.0.1:2")
    if a is b:  # SQLite: one hub, its own leader
        assert a.is_leader() and a.leader() == "hub-b" and [m["name"] for m in a.members()] == ["hub-b"]
        return
    assert a.is_leader() and not b.is_leader() and a.leader() == b.leader() == "hub-a"
    assert [m["name"] for m in b.members()] == ["hub-a", "hub-b"]
    a.close()  # revokes its lease: b takes over within its next campaign (lease_s / 4)
    deadline = time.monotonic() + 5
    while not b.is_leader() and time.monotonic() < deadline:
        gevent.sleep(0.05)
    assert b.is_leader() and b.leader() == "hub-b" and [m["name"] for m in b.members()] == ["hub-b"]


def test_a_reservation_whose_hub_died_is_orphaned_for_the_leader(make_store):
    a, b = make_store(), make_store()
    a.join("hub-a", "tcp://127.0.0.1:1")
    _host(a, "h1")
    _claim(a, "o.1")
    _claim(a, "o.2")
    a.set_placed("o.2", "img", [])
    if a is b:
        assert a.orphaned_reservations() == []  # one hub: in flight in this process
        return
    b.join("hub-b", "tcp://127.0.0.1:2")
    assert b.orphaned_reservations() == []
    a.close()
    assert b.orphaned_reservations() == ["o.1"]


def test_deploy_documents_by_key_and_one_journal_per_app(make_store):
    a, b = make_store(), make_store()
    assert a.deploy_doc_get("apps/web") is None and a.deploy_docs("apps/") == []
    assert a.deploy_doc_put("apps/web", {"name": "web", "current": None})
    assert a.deploy_doc_put("releases/web/000002", {"release": 2})
    assert a.deploy_doc_put("releases/web/000001", {"release": 1})
    assert a.deploy_doc_put("releases/webx/000001", {"release": 1})
    assert b.deploy_docs("releases/web/") == [("releases/web/000001", {"release": 1}),
                                              ("releases/web/000002", {"release": 2})]
    assert a.deploy_doc_put("apps/web", {"name": "web", "current": 2})
    assert b.deploy_doc_get("apps/web") == {"name": "web", "current": 2}
    # the journal: only one deploy of an app starts, whichever hub asks
    assert a.deploy_doc_put("deploys/web", {"release": 3}, create_only=True)
    assert not b.deploy_doc_put("deploys/web", {"release": 4}, create_only=True)
    assert b.deploy_doc_get("deploys/web") == {"release": 3}
    assert b.deploy_doc_delete("deploys/web") and not a.deploy_doc_delete("deploys/web")
    assert b.deploy_doc_put("deploys/web", {"release": 4}, create_only=True)


def test_fleet_events_keep_their_index_order_cursors_and_pruning(make_store):
    a, b = make_store(), make_store()
    assert a.events_bounds() == {"first": 1, "last": 0, "pruned_index": 0, "pruned_at": 0.0}
    assert a.events_after(0, 10) == [] and a.event_cursor("h1") == 0
    t = 1_000_000.0
    got = a.events_append([{"at": t + i, "kind": "host_lost", "host": f"h{i}"} for i in range(3)], "h1", 7)
    assert [e["index"] for e in got] == [1, 2, 3] and a.event_cursor("h1") == 7
    assert [e["index"] for e in b.events_append([{"at": t + 10, "kind": "adopted"}])] == [4]  # another hub
    assert [e["index"] for e in a.events_after(1, 2)] == [2, 3] and a.events_after(4, 5) == []
    assert b.events_index_at(t + 1.5) == 2 and b.events_index_at(t + 99) == 4
    many = a.events_append([{"at": t + 20, "kind": "x", "n": i} for i in range(200)])  # over 128 operations
    assert [e["index"] for e in many] == list(range(5, 205))
    assert b.events_bounds()["last"] == 204
    assert a.events_prune(100, 3600.0, now=t + 30) == 104  # keeps the newest 100
    bounds = b.events_bounds()
    assert bounds["first"] == 105 and bounds["last"] == 204 and bounds["pruned_index"] == 104
    assert bounds["pruned_at"] == t + 20
    assert b.events_index_at(t) == 104  # older than every kept one: the last pruned index
    assert [e["index"] for e in a.events_append([{"at": t + 40, "kind": "y"}])] == [205]  # never reused
    assert [e["index"] for e in a.events_append([{"at": t + 30, "kind": "z"}])] == [206]  # an older time later
    assert b.events_index_at(t + 35) == 204 and b.events_index_at(t + 40) == 206  # 205 (t + 40) is not skipped
    b.set_event_cursor("h1", 0)
    assert a.event_cursor("h1") == 0
    assert a.events_prune(1000, 15.0, now=t + 40) == 100  # the age rule: everything before t + 25
    assert [e["index"] for e in b.events_after(0, 10)] == [205, 206]


def test_set_placed_says_whether_the_row_was_there(store):
    """set_placed of a row removed meanwhile (host_remove or a destroy during
    the create, another hub) or claimed again on another host writes nothing
    and says so (before: silent, on both stores)."""
    _host(store, "h1")
    _host(store, "h2")
    _claim(store, "p.1", request=scheduler.Request(GiB, {}, "h1"))
    assert store.set_placed("p.1", "img", [], host="h1") is True
    assert store.container("p.1")["state"] == "placed"
    assert store.set_placed("p.1", "img2", [], host="h2") is False  # the row is on h1
    assert store.container("p.1")["image"] == "img"
    store.forget("p.1")
    assert store.set_placed("p.1", "img", []) is False
    with pytest.raises(errors.NoSuchContainer):
        store.container("p.1")
