"""The watched indexes of hub/store/etcd.py on a real etcd (loopback,
tests/etcdkit.py): two EtcdStores on one prefix are two hubs.  A key bound
through one hub is admitted by the other's index within the bound, and
refused there within it once removed; each hub sees its own writes at
once; while etcd is stopped the last known index answers and a new binding
is StoreUnavailable; the watch resumes after etcd restarts (no full
listing), and a compacted revision makes it list again.  Every test has
its own key prefix, deleted at the end."""
from __future__ import annotations

import shutil
import time
import uuid

import gevent
import pytest

from dcctl import errors
from hub.store.etcd import EtcdClient, EtcdStore, PrefixIndex
from tests.etcdkit import running_etcd

KEY_A, KEY_B, KEY_C = "A" * 40, "B" * 40, "C" * 40
BOUND_SECONDS = 2.0  # a binding made or removed on one hub shows on the others within this
CAP = {"memory_reservable_bytes": 1 << 30, "container_slots": 4}


def _within(cond, timeout_s: float) -> bool:
    """True once ``cond()`` holds, polled with gevent sleeps (the watches
    are greenlets), False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        gevent.sleep(0.01)
    return cond()


@pytest.fixture
def etcd(tmp_path):
    with running_etcd(str(tmp_path)) as server:
        yield server


@pytest.fixture
def hubs(etcd):
    """make() -> an EtcdStore on this test's prefix; all closed and the
    prefix deleted at the end."""
    prefix = f"/ksy-{uuid.uuid4().hex[:8]}/"
    made: list[EtcdStore] = []

    def make():
        made.append(EtcdStore(etcd.url, prefix, timeout_s=1.0))
        return made[-1]
    yield make
    for s in made:
        s.close()
    try:
        client = EtcdClient(etcd.url)
        client.txn([], [client.delete(prefix, prefix=True)])
    except errors.StoreError:
        pass  # etcd stopped by the test


def test_a_binding_on_one_hub_is_admitted_and_its_removal_refused_on_the_other_within_the_bound(hubs):
    a, b = hubs(), hubs()
    assert a.agent_key_name(KEY_A) is None and b.agent_key_name(KEY_A) is None
    a.bind_key("ksy-h1", KEY_A)
    assert a.agent_key_name(KEY_A) == "ksy-h1"  # its own write: at once, before any watch event
    started = time.monotonic()
    assert _within(lambda: b.agent_key_name(KEY_A) == "ksy-h1", BOUND_SECONDS)
    admitted_s = time.monotonic() - started
    b.upsert_host("ksy-h1", "tcp://127.0.0.1:1", "", {}, CAP, KEY_A)  # registers through hub b
    assert [h["name"] for h in b.hosts()] == ["ksy-h1"]  # b's own write, at once
    assert _within(lambda: [h["name"] for h in a.hosts()] == ["ksy-h1"], BOUND_SECONDS)
    a.remove_host("ksy-h1")
    assert a.agent_key_name(KEY_A) is None and a.hosts() == []  # at once on the hub that removed it
    started = time.monotonic()
    assert _within(lambda: b.agent_key_name(KEY_A) is None, BOUND_SECONDS), "hub b still admits a removed key"
    assert _within(lambda: b.hosts() == [] and b.host_state("ksy-h1", KEY_A) is None, BOUND_SECONDS)
    print(f"admitted on the other hub after {admitted_s * 1000:.1f} ms, "
          f"refused after {(time.monotonic() - started) * 1000:.1f} ms")


def test_while_etcd_is_stopped_the_known_keys_answer_and_a_new_binding_is_store_unavailable(hubs, etcd):
    a, b = hubs(), hubs()
    a.bind_key("ksy-h1", KEY_A)
    a.upsert_host("ksy-h1", "tcp://127.0.0.1:1", "", {}, CAP, KEY_A)
    assert _within(lambda: b.agent_key_name(KEY_A) == "ksy-h1" and b.host_state("ksy-h1", KEY_A) == "alive",
                   BOUND_SECONDS)
    lists = b._keyidx.lists, b._hostidx.lists
    etcd.stop()
    assert _within(lambda: not b._keyidx.live, 5.0)  # its stream ended with etcd
    assert b.agent_key_name(KEY_A) == "ksy-h1"  # the last known index keeps admitting the host
    assert b.host_state("ksy-h1", KEY_A) == "alive"  # and its heartbeats are taken
    with pytest.raises(errors.Unauthorized):
        b.host_state("ksy-h1", KEY_B)
    with pytest.raises(errors.StoreUnavailable):
        b.bind_key("ksy-h2", KEY_B)
    with pytest.raises(errors.StoreUnavailable):
        b.hosts()
    assert b.agent_key_name(KEY_B) is None
    etcd.start()
    assert _within(lambda: b._keyidx.live and a._keyidx.live, 10.0), "the watch did not come back"
    assert (b._keyidx.lists, b._hostidx.lists) == lists  # resumed from its revision: no new listing
    a.bind_key("ksy-h2", KEY_B)  # a change made after the restart reaches the resumed watch
    assert _within(lambda: b.agent_key_name(KEY_B) == "ksy-h2", BOUND_SECONDS)
    a.remove_host("ksy-h1")
    assert _within(lambda: b.agent_key_name(KEY_A) is None, BOUND_SECONDS)


def test_a_watch_behind_a_compacted_revision_lists_again_and_misses_nothing(hubs, etcd):
    a = hubs()
    client = EtcdClient(etcd.url)
    index = PrefixIndex(client, a._k("keyidx", ""))
    try:
        a.bind_key("ksy-h1", KEY_A)
        a.bind_key("ksy-h2", KEY_B)
        assert _within(lambda: index.get(KEY_B) is not None, BOUND_SECONDS)
        assert index.lists == 1
        index.close()  # away (as over a long partition) while the keys change and etcd compacts
        a.remove_host("ksy-h1")
        a.bind_key("ksy-h3", KEY_C)
        for i in range(5):  # revisions past the changes, so the compaction covers them all
            client.txn([], [client.put(a._k("filler"), i)])
        client.post("kv/compaction", {"revision": str(client.revision())})
        index.start()
        assert _within(lambda: index.lists == 2 and index.live, 5.0), "the compacted watch did not list again"
        assert {k: v for k, (v, _) in index.items().items()} == {KEY_B: "ksy-h2", KEY_C: "ksy-h3"}
        a.remove_host("ksy-h2")  # and it watches on from the new listing
        assert _within(lambda: index.get(KEY_B) is None, BOUND_SECONDS)
    finally:
        index.close()


def test_an_older_event_never_undoes_a_newer_change(etcd):
    client = EtcdClient(etcd.url)
    index = PrefixIndex(client, f"/ksy-{uuid.uuid4().hex[:8]}/")
    try:
        index.apply("k", "new", 10)
        index.apply("k", "old", 9)  # e.g. the watch bringing an earlier put after this hub's own write
        assert index.get("k") == ("new", 10)
        index.apply("k", None, 12)
        index.apply("k", "older", 11)  # a put from before the deletion, delivered late
        assert index.get("k") is None
        index.apply("k", "again", 13)
        assert index.get("k") == ("again", 13)
    finally:
        index.close()


def test_a_hubs_reads_of_hosts_and_keys_ask_etcd_nothing_and_follow_another_hubs_changes(hubs):
    a, b = hubs(), hubs()
    for i in range(3):
        a.bind_key(f"ksy-h{i}", "ABC"[i] * 40)
        a.upsert_host(f"ksy-h{i}", f"tcp://127.0.0.1:{i + 1}", "", {}, CAP, "ABC"[i] * 40)
    assert _within(lambda: len(b.hosts()) == 3, BOUND_SECONDS)
    sent = b.etcd.requests
    for _ in range(50):  # a placement's, a heartbeat's, a forwarded call's and ZAP's reads
        assert [h["name"] for h in b.hosts()] == ["ksy-h0", "ksy-h1", "ksy-h2"]
        assert b.host_state("ksy-h1", KEY_B) == "alive"
        assert b.host("ksy-h2")["endpoint"] == "tcp://127.0.0.1:3"
        assert b.agent_key_name(KEY_C) == "ksy-h2"
    assert b.etcd.requests == sent, "reads of the watched hosts and keys went to etcd"
    now = time.time()
    a.record_beats({"ksy-h1": (now + 60, '{"beat": 1}', None)})  # another hub's beats and judgement
    assert sorted(a.mark_unreachable(now + 30)) == ["ksy-h0", "ksy-h2"]
    assert _within(lambda: [h["state"] for h in b.hosts()] == ["unreachable", "alive", "unreachable"]
                   and b.host("ksy-h1")["summary"] == {"beat": 1}, BOUND_SECONDS)
    assert b.etcd.requests == sent


def test_an_etcd_that_lost_its_data_is_listed_again_not_waited_on(hubs, etcd):
    a = hubs()
    client = EtcdClient(etcd.url)
    index = PrefixIndex(client, a._k("keyidx", ""))
    try:
        for i in range(20):  # this index's revision well past what a new etcd will have
            client.txn([], [client.put(a._k("filler"), i)])
        a.bind_key("ksy-h1", KEY_A)
        assert _within(lambda: index.get(KEY_A) is not None, BOUND_SECONDS)
        etcd.stop()
        shutil.rmtree(etcd.data_dir)
        etcd.start()
        client.txn([], [client.put(a._k("keyidx", KEY_B), "ksy-h2")])  # the new store's first binding
        assert _within(lambda: index.lists == 2 and index.live, 10.0), "the index waited for old revisions"
        assert {k: v for k, (v, _) in index.items().items()} == {KEY_B: "ksy-h2"}  # the lost one is gone too
    finally:
        index.close()


def test_a_hub_that_never_read_a_container_still_routes_to_it_while_etcd_is_stopped(hubs, etcd):
    """Calls to existing containers go on while etcd is down through every
    hub, also one started just before the outage that never read the
    container or its host (before: StoreUnavailable from such a hub)."""
    from hub import scheduler
    a = hubs()
    a.bind_key("ksy-h1", KEY_A)
    a.upsert_host("ksy-h1", "tcp://127.0.0.1:1", "10.0.0.1", {}, CAP, KEY_A)
    a.claim("ksy.web", "img", 1 << 20, {}, scheduler.choose(a.hosts(), scheduler.Request(1 << 20)))
    a.set_placed("ksy.web", "img", [{"proto": "tcp", "container_port": 80, "host_port": 20001}])
    a.add_route("web.ksy.test", "ksy.web", 80)
    b = hubs()  # a new hub: its first reads of either come after etcd stopped
    assert _within(lambda: b._ctridx.get("ksy.web") is not None and b._ctridx.get("ksy.web")[0]["state"] == "placed",
                   BOUND_SECONDS)
    etcd.stop()
    assert _within(lambda: not b._ctridx.live, 5.0)
    row = b.container("ksy.web")
    assert (row["host"], row["state"]) == ("ksy-h1", "placed")
    assert b.host("ksy-h1")["endpoint"] == "tcp://127.0.0.1:1"
    with pytest.raises(errors.StoreUnavailable):
        b.containers()  # a listing is never answered from memory: the healer decides on it
    assert [(r["name"], r["container"], r["port"]) for r in b.routes()] == [("web.ksy.test", "ksy.web", 80)]
    with pytest.raises(errors.StoreUnavailable):
        b.container("ksy.other")  # one it does not know: no guess
