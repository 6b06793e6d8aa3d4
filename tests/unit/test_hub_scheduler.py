"""Placement decisions and the store's atomic claims."""
import gevent
import pytest

from dcctl import errors
from hub import scheduler
from hub.store import HubStore

GiB = 1 << 30


def host(name, free_gib=8, state="alive", labels=None, slots=10, reserved_gib=0):
    return {"name": name, "state": state, "labels": labels or {},
            "capacity": {"memory_reservable_bytes": free_gib * GiB, "memory_reserved_bytes": reserved_gib * GiB,
                         "container_slots": slots, "containers": 0}}


def test_spread_prefers_most_free_memory_and_binpack_the_least():
    hosts = [host("a", 4), host("b", 8), host("c", 6)]
    ranked, _ = scheduler.place(hosts, scheduler.Request(GiB), {})
    assert ranked == ["b", "c", "a"]
    ranked, _ = scheduler.place(hosts, scheduler.Request(GiB, strategy="binpack"), {})
    assert ranked == ["a", "c", "b"]


def test_reservations_in_the_store_count_and_reasons_are_named():
    hosts = [host("a", 2, labels={"zone": "y"}), host("b", 2, state="unreachable"),
             host("c", 8, labels={"zone": "x"})]
    ranked, rejected = scheduler.place(hosts, scheduler.Request(GiB, {"zone": "y"}), {"a": (2 * GiB, 1)})
    assert ranked == []
    assert "unreserved" in rejected["a"] and "unreachable" in rejected["b"] and "labels" in rejected["c"]
    with pytest.raises(errors.NoCapacity, match="a: needs"):
        scheduler.choose(hosts, scheduler.Request(GiB, {"zone": "y"}))({"a": (2 * GiB, 1)})


def test_nocapacity_gives_readable_sizes():
    hosts = [host("a", 2)]
    with pytest.raises(errors.NoCapacity) as caught:
        scheduler.choose(hosts, scheduler.Request(GiB + GiB // 2))({"a": (GiB, 1)})
    assert "a: needs 1.5 GiB of memory, 1.0 GiB unreserved" in str(caught.value)
    assert "bytes" not in str(caught.value)


def test_the_store_is_the_truth_not_lagging_host_figures():
    # a host's heartbeat still counts containers destroyed a moment ago: only
    # the store's reservations (which adoption keeps whole) decide
    hosts = [host("a", 4, reserved_gib=4), host("b", 4)]
    assert scheduler.place(hosts, scheduler.Request(GiB), {})[0] == ["a", "b"]
    assert scheduler.place(hosts, scheduler.Request(GiB), {"a": (4 * GiB, 4)})[0] == ["b"]


def test_pinned_unknown_host():
    with pytest.raises(errors.NoSuchHost):
        scheduler.choose([host("a")], scheduler.Request(0, host="zz"))({})


def test_concurrent_claims_never_overcommit(tmp_path):
    store = HubStore(str(tmp_path / "hub"))
    hosts = [host("a", 4), host("b", 4)]
    for h in hosts:
        store.upsert_host(h["name"], "ipc:///x", "", {}, h["capacity"])

    def create(i):
        try:
            return store.claim(f"c{i}", "img", GiB, {}, scheduler.choose(store.hosts(), scheduler.Request(GiB)))["host"]
        except errors.NoCapacity:
            return None

    results = [g.value for g in gevent.joinall([gevent.spawn(create, i) for i in range(20)])]
    placed = [r for r in results if r]
    assert len(placed) == 8 and placed.count("a") == 4 and placed.count("b") == 4


def test_one_name_claimed_once_and_second_hub_refused(tmp_path):
    store = HubStore(str(tmp_path / "hub"))
    store.upsert_host("a", "ipc:///x", "", {}, host("a")["capacity"])
    pick = scheduler.choose(store.hosts(), scheduler.Request(0))
    store.claim("same", "img", 0, {}, pick)
    with pytest.raises(errors.ContainerExists):
        store.claim("same", "img", 0, {}, pick)
    with pytest.raises(errors.HubBusy):
        HubStore(str(tmp_path / "hub"))
    store.close()
    HubStore(str(tmp_path / "hub")).close()  # free again once the first is gone
