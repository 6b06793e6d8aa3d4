"""etcd-only behaviour of hub/store/etcd.py on a real etcd: an unreachable
or hung etcd is a typed StoreUnavailable within the request timeout (and at
once while the breaker is open), the rows that route calls still answer
from what the hub read last, everything works again when etcd is back,
and transactions stay under etcd's 128 operations."""
from __future__ import annotations

import time
import uuid

import pytest

from dcctl import errors
from hub import scheduler
from hub.store.etcd import BREAKER_SECONDS, MAX_TXN_OPS, EtcdClient, EtcdStore
from tests.etcdkit import running_etcd

GiB = 1 << 30


def _wait(cond, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _claim(store, name):
    return store.claim(name, "img", GiB, {}, scheduler.choose(store.hosts(), scheduler.Request(GiB)))


def test_a_stopped_or_hung_etcd_is_store_unavailable_fast_and_then_recovers(tmp_path):
    with running_etcd(str(tmp_path)) as server:
        store = EtcdStore(server.url, f"/etc-{uuid.uuid4().hex[:8]}/", timeout_s=1.0)
        store.upsert_host("h1", "ipc:///x", "", {}, {"memory_reservable_bytes": 8 * GiB, "container_slots": 9})
        _claim(store, "u.1")
        assert store.container("u.1")["host"] == "h1" and store.host("h1")["state"] == "alive"  # read once
        server.pause()  # hung: holds its socket, answers nothing
        try:
            started = time.monotonic()
            with pytest.raises(errors.StoreUnavailable):
                _claim(store, "u.2")
            assert time.monotonic() - started < 1.0 + 0.5  # the request timeout, not the caller's
            started = time.monotonic()
            with pytest.raises(errors.StoreUnavailable):
                store.hosts()
            assert time.monotonic() - started < 0.2  # the breaker: no second wait
        finally:
            server.resume()
        server.stop()  # gone: connection refused
        time.sleep(BREAKER_SECONDS)
        started = time.monotonic()
        with pytest.raises(errors.StoreUnavailable):
            store.container("never.read")
        assert time.monotonic() - started < 1.0
        # the rows that route calls answer from what this hub read last; writes and listings fail
        assert store.container("u.1")["host"] == "h1" and store.host("h1")["address"] == ""
        assert store.host_state("h1") == "alive"
        with pytest.raises(errors.StoreUnavailable):
            store.set_ports("u.1", [])
        with pytest.raises(errors.StoreUnavailable):
            store.hosts()
        server.start()
        # (container() answers from the watched rows meanwhile: wait for a listing, which only etcd answers)
        assert _wait(lambda: _try(lambda: store.containers() is not None))
        assert store.container("u.1")["state"] == "reserved"
        # the claim sent to the hung etcd may have been applied when it woke: then it is a whole
        # claim (row and reservation), "reserved" with no live hub: an orphan for the leader's journal
        applied = "u.2" in {r["name"] for r in store.containers()}
        assert store.orphaned_reservations() == (["u.1", "u.2"] if applied else ["u.1"])
        assert _claim(store, "u.3")["host"] == "h1"  # nothing was half-written while etcd was away
        assert store.reserved_memory() == {"h1": ((3 if applied else 2) * GiB, 3 if applied else 2)}
        store.close()


def _try(fn):
    try:
        return fn()
    except errors.StoreUnavailable:
        return False


def test_an_etcd_that_never_ran_fails_at_open():
    with pytest.raises(errors.StoreUnavailable):
        EtcdStore("http://127.0.0.1:23799", timeout_s=0.5)
    with pytest.raises(errors.InvalidArgument):
        EtcdClient("https://127.0.0.1:2379")
    with pytest.raises(errors.InvalidArgument):
        EtcdStore("http://127.0.0.1:23799", "no-slashes")


def test_many_beats_go_in_transactions_of_at_most_128_operations(tmp_path):
    with running_etcd(str(tmp_path)) as server:
        store = EtcdStore(server.url, f"/etc-{uuid.uuid4().hex[:8]}/")
        for i in range(300):
            store.upsert_host(f"h{i:03d}", "ipc:///x", "", {}, {})
        now = time.time()
        before = store.etcd.requests
        store.record_beats({f"h{i:03d}": (now + 60, '{"i": %d}' % i, None) for i in range(300)})
        assert store.etcd.requests - before == -(-300 // MAX_TXN_OPS)  # three transactions, no read
        assert all(h["last_heartbeat"] == pytest.approx(now + 60) for h in store.hosts())
        assert store.mark_unreachable(now + 30) == []
        store.close()


def test_the_registry_index_is_shared_and_a_hub_fetches_the_layers_it_lacks(tmp_path):
    import hashlib
    from hub.registry import Registry, manifest_id
    layer = b"layer bytes of one image"
    d = hashlib.sha256(layer).hexdigest()
    manifest = {"name": "busybox", "created": time.time(), "layers": [d], "size_bytes": len(layer),
                "exposed_ports": []}
    manifest["id"] = manifest_id(manifest)
    with running_etcd(str(tmp_path)) as server:
        prefix = f"/etc-{uuid.uuid4().hex[:8]}/"
        sa, sb = EtcdStore(server.url, prefix), EtcdStore(server.url, prefix)
        a, b = Registry(str(tmp_path / "a"), index=sa), Registry(str(tmp_path / "b"), index=sb)
        a.receive(manifest, {d: len(layer)}, lambda dd, off, n: layer[off:off + n], source="host-1", expect=None)
        assert b.resolve("busybox")["id"] == manifest["id"] and b.get(manifest["id"])["layers"] == [d]
        assert b.missing(manifest) == [d] and a.missing(manifest) == []
        entry = b.entry(manifest["id"])
        assert entry["source"] == "host-1" and entry["sizes"] == {d: len(layer)}
        b.receive(manifest, entry["sizes"], lambda dd, off, n: layer[off:off + n], source="host-1", expect=None)
        assert b.missing(manifest) == [] and b.read_layer(d, 0, 100) == layer
        b.remove("busybox")
        assert a.ls() == [] and b.ls() == []
        with pytest.raises(errors.ImageNotFound):
            a.resolve("busybox")
        sa.close(), sb.close()


def test_a_restarted_etcd_is_reached_again_at_once(tmp_path):
    """Kept connections to an etcd that restarted are replaced before use:
    the first call after the restart works (no spurious StoreUnavailable)."""
    with running_etcd(str(tmp_path)) as server:
        store = EtcdStore(server.url, f"/etc-{uuid.uuid4().hex[:8]}/")
        store.upsert_host("h1", "ipc:///x", "", {}, {})
        server.stop()
        server.start()
        assert store.host("h1")["name"] == "h1"
        store.close()


def test_hosts_read_by_changes_agree_with_a_full_read_as_another_hub_changes_them(tmp_path):
    """hosts() after its first read takes only what changed (keys with
    their revisions, values changed since): what it returns must be what a
    fresh full read returns, through registrations, beats, a host judged
    unreachable, a removal and a name added again."""
    with running_etcd(str(tmp_path)) as server:
        prefix = f"/etc-{uuid.uuid4().hex[:8]}/"
        reader, writer = EtcdStore(server.url, prefix), EtcdStore(server.url, prefix)

        def agrees() -> bool:
            fresh = EtcdStore(server.url, prefix)
            try:
                return reader.hosts() == fresh.hosts()
            finally:
                fresh.close()

        try:
            for i in range(5):
                writer.upsert_host(f"h{i}", f"ipc:///h{i}", "", {"i": str(i)}, {"container_slots": 4})
            assert _wait(agrees)
            assert len(reader.hosts()) == 5
            now = time.time()
            writer.record_beats({"h1": (now + 60, '{"beat": 1}', None), "h3": (now + 60, '{"beat": 3}', None)})
            assert _wait(agrees)
            assert {h["name"]: h["summary"] for h in reader.hosts() if h["name"] in ("h1", "h3")} == \
                {"h1": {"beat": 1}, "h3": {"beat": 3}}
            assert sorted(writer.mark_unreachable(now + 30)) == ["h0", "h2", "h4"]
            assert _wait(agrees)
            writer.remove_host("h2")
            writer.upsert_host("h5", "ipc:///h5", "", {}, {"container_slots": 4})
            assert _wait(agrees)
            assert [h["name"] for h in reader.hosts()] == ["h0", "h1", "h3", "h4", "h5"]
            writer.remove_host("h1")
            writer.upsert_host("h1", "ipc:///h1-again", "", {}, {"container_slots": 2})  # a beat gone, a row new
            assert _wait(agrees)
            again = next(h for h in reader.hosts() if h["name"] == "h1")
            assert again["endpoint"] == "ipc:///h1-again" and again.get("summary") != {"beat": 1}
        finally:
            writer.etcd.txn([], [writer.etcd.delete(prefix, prefix=True)])
            reader.close()
            writer.close()


# ------------------------------------------------------------ group commit of claims (EtcdStore.claim)
@pytest.fixture(scope="module")
def group_etcd(tmp_path_factory):
    with running_etcd(str(tmp_path_factory.mktemp("etcd-groups"))) as server:
        yield server


def _fleet(server, hosts=4, slots=100, mem=64 * GiB):
    store = EtcdStore(server.url, f"/etc-grp-{uuid.uuid4().hex[:8]}/")
    for i in range(hosts):
        store.upsert_host(f"h{i}", f"ipc:///x/{i}", "", {}, {"memory_reservable_bytes": mem, "container_slots": slots})
    return store


def _summed(store) -> dict:
    out: dict = {}
    for r in store.containers():
        m, n = out.get(r["host"], (0, 0))
        out[r["host"]] = (m + r["memory_bytes"], n + 1)
    return out


def test_concurrent_claims_on_one_hub_share_transactions_and_stay_exact(group_etcd):
    import gevent
    store = _fleet(group_etcd, hosts=3, slots=5)
    try:
        outcomes = {}

        def one(i):
            try:
                outcomes[i] = _claim(store, f"g.{i}")["host"]
            except errors.NoCapacity:
                outcomes[i] = None

        _claim(store, "g.warm")  # hosts and records read once: what follows counts the claims' requests
        before = store.etcd.requests
        gevent.joinall([gevent.spawn(one, i) for i in range(24)], raise_error=True)
        used = store.etcd.requests - before
        placed = [h for h in outcomes.values() if h]
        assert len(placed) == 14 and sorted(placed + [store.container("g.warm")["host"]]) == [
            "h0"] * 5 + ["h1"] * 5 + ["h2"] * 5  # 3 hosts x 5 slots
        assert used < 14  # several decisions per request (one each before group commit)
        assert {h: v for h, v in store.reserved_memory().items() if v != (0, 0)} == _summed(store)
        assert sorted(r["name"] for r in store.containers()) == sorted(
            [f"g.{i}" for i, h in outcomes.items() if h] + ["g.warm"])
    finally:
        store.close()


def test_a_name_claimed_at_once_by_many_callers_is_claimed_once(group_etcd):
    import gevent
    store = _fleet(group_etcd)
    try:
        store.abandon("left.web", "h1")
        results = []

        def one(name):
            try:
                results.append((name, _claim(store, name)["host"]))
            except errors.ContainerExists:
                results.append((name, "exists"))

        names = ["same.web"] * 6 + ["left.web"] * 2 + [f"other.{i}" for i in range(4)]
        gevent.joinall([gevent.spawn(one, n) for n in names], raise_error=True)
        same = [h for n, h in results if n == "same.web"]
        assert len(same) == 6 and same.count("exists") == 5
        assert [h for n, h in results if n == "left.web"] == ["exists", "exists"]  # its abandoned copy holds it
        assert all(h not in ("exists",) for n, h in results if n.startswith("other."))
        assert sorted(r["name"] for r in store.containers()) == ["other.0", "other.1", "other.2", "other.3",
                                                                  "same.web"]
        assert {h: v for h, v in store.reserved_memory().items() if v != (0, 0)} == _summed(store)
    finally:
        store.close()


def test_a_grouped_claim_that_fails_or_is_killed_leaves_the_others_whole(group_etcd):
    import gevent
    import gevent.event
    store = _fleet(group_etcd)
    try:
        release, held = gevent.event.Event(), gevent.event.Event()
        first_pick = scheduler.choose(store.hosts(), scheduler.Request(GiB))

        def slow_pick(figures):  # the first claim's decision holds its transaction until released
            held.set()
            release.wait()
            return first_pick(figures)

        first = gevent.spawn(store.claim, "k.first", "img", GiB, {}, slow_pick)
        held.wait()
        waiting = [gevent.spawn(_claim, store, f"k.{i}") for i in range(3)]
        doomed = gevent.spawn(_claim, store, "k.killed")
        pinned = gevent.spawn(store.claim, "k.pinned", "img", GiB, {}, scheduler.choose(
            store.hosts(), scheduler.Request(GiB, host="nowhere")))
        gevent.sleep(0)
        doomed.kill()  # killed while its group waits: never claimed
        release.set()
        gevent.joinall([first, pinned, *waiting])
        assert first.get()["name"] == "k.first" and [g.get()["name"] for g in waiting] == ["k.0", "k.1", "k.2"]
        with pytest.raises(errors.NoSuchHost):
            pinned.get()
        assert sorted(r["name"] for r in store.containers()) == ["k.0", "k.1", "k.2", "k.first"]
        assert {h: v for h, v in store.reserved_memory().items() if v != (0, 0)} == _summed(store)
    finally:
        store.close()


def test_two_hubs_grouping_claims_on_one_host_at_once_never_over_commit_it(group_etcd):
    import gevent
    a = _fleet(group_etcd, hosts=1, slots=20, mem=15 * GiB)
    b = EtcdStore(group_etcd.url, a.prefix)
    try:
        outcomes = {}

        def one(store, name):
            try:
                outcomes[name] = _claim(store, name)["host"]
            except errors.NoCapacity:
                outcomes[name] = None

        gevent.joinall([gevent.spawn(one, s, f"{tag}.{i}") for i in range(30) for s, tag in ((a, "a"), (b, "b"))],
                       raise_error=True)
        placed = sorted(n for n, h in outcomes.items() if h)
        assert len(placed) == 15  # 15 GiB at 1 GiB each, before the 20 slots
        assert a.reserved_memory() == b.reserved_memory() == {"h0": (15 * GiB, 15)}
        assert sorted(r["name"] for r in b.containers()) == placed
    finally:
        a.close(), b.close()


def test_a_claim_refused_for_its_group_mates_is_retried_when_their_group_does_not_commit(group_etcd):
    import gevent
    import gevent.event
    a = _fleet(group_etcd, hosts=0)
    a.upsert_host("h1", "ipc:///x/1", "", {}, {"memory_reservable_bytes": 8 * GiB, "container_slots": 1})
    a.upsert_host("h2", "ipc:///x/2", "", {}, {"memory_reservable_bytes": 8 * GiB, "container_slots": 10})
    b = EtcdStore(group_etcd.url, a.prefix)
    try:
        def pinned(store, name, host):
            return store.claim(name, "img", GiB, {}, scheduler.choose(store.hosts(), scheduler.Request(GiB, host=host)))

        pinned(b, "x.web", "h2")  # another hub holds the name x.web (not on h1)
        release, held = gevent.event.Event(), gevent.event.Event()
        first_pick = scheduler.choose(a.hosts(), scheduler.Request(GiB, host="h2"))

        def slow_pick(figures):
            held.set()
            release.wait()
            return first_pick(figures)

        first = gevent.spawn(a.claim, "first.web", "img", GiB, {}, slow_pick)
        held.wait()
        x = gevent.spawn(pinned, a, "x.web", "h1")  # takes h1's one slot in the group, but its name is taken
        y = gevent.spawn(pinned, a, "y.web", "h1")  # refused in the group for x.web's slot: not for real
        gevent.sleep(0)
        release.set()
        gevent.joinall([first, x, y])
        assert first.get()["host"] == "h2" and y.get()["host"] == "h1"
        with pytest.raises(errors.ContainerExists):
            x.get()
        assert a.reserved_memory()["h1"] == (GiB, 1)
    finally:
        a.close(), b.close()


@pytest.mark.parametrize("group_bytes", [None, 1 << 30])
def test_claims_too_big_to_go_together_are_each_claimed_alone(group_etcd, group_bytes, monkeypatch):
    """Two creates whose specs (a careless operator's big environments, each
    well under etcd's 1.5 MiB request limit alone) land in one group with
    small ones: before, the group's one transaction was over the limit and
    etcd's refusal (StoreError) failed every claim of the group."""
    import gevent
    import gevent.event
    if group_bytes:  # no byte budget: etcd's own refusal of the group sends its claims alone
        monkeypatch.setattr("hub.store.etcd.CLAIM_GROUP_BYTES", group_bytes)
    store = _fleet(group_etcd)
    try:
        release, held = gevent.event.Event(), gevent.event.Event()
        first_pick = scheduler.choose(store.hosts(), scheduler.Request(GiB))

        def slow_pick(figures):  # holds the first transaction so the rest form one group behind it
            held.set()
            release.wait()
            return first_pick(figures)

        first = gevent.spawn(store.claim, "big.first", "img", GiB, {}, slow_pick)
        held.wait()
        big = {"options": {"env": {f"V{i}": "x" * 60000 for i in range(14)}}}  # about 0.8 MiB each
        claims = [gevent.spawn(store.claim, f"big.{i}", "img", GiB, big,
                               scheduler.choose(store.hosts(), scheduler.Request(GiB))) for i in range(2)]
        claims += [gevent.spawn(_claim, store, f"small.{i}") for i in range(3)]
        gevent.sleep(0)
        release.set()
        gevent.joinall([first, *claims])
        assert first.get()["name"] == "big.first"
        assert [g.get()["name"] for g in claims] == ["big.0", "big.1", "small.0", "small.1", "small.2"]
        assert store.container("big.1")["spec"] == big
        assert {h: v for h, v in store.reserved_memory().items() if v != (0, 0)} == _summed(store)
    finally:
        store.close()


def test_a_second_hub_with_a_running_hubs_name_is_refused_and_the_first_stays_a_member(tmp_path):
    """A fresh operator started a second hub with a live hub's --hub-name:
    it took the member key over, both said they led, and when it left the
    first vanished from ``members`` for good."""
    with running_etcd(str(tmp_path)) as server:
        prefix = f"/etc-{uuid.uuid4().hex[:8]}/"
        first = EtcdStore(server.url, prefix, lease_s=2, timeout_s=1.0)
        first.join("hub-a", "tcp://127.0.0.1:1")
        assert first.is_leader()
        second = EtcdStore(server.url, prefix, lease_s=2, timeout_s=1.0)
        started = time.monotonic()
        with pytest.raises(errors.Conflict, match="hub name 'hub-a' is held by a running hub.*127.0.0.1:1"):
            second.join("hub-a", "tcp://127.0.0.1:2")
        assert time.monotonic() - started >= 2  # it waited a lease for a killed hub's key to expire
        second.close()
        assert [m["endpoint"] for m in first.members()] == ["tcp://127.0.0.1:1"] and first.is_leader()
        assert first.leader() == "hub-a"
        # a hub killed (its lease not revoked) and started again gets its name back once the lease expires
        first._task.kill()  # as kill -9: no renewal, no revoke
        first._lease = None
        again = EtcdStore(server.url, prefix, lease_s=2, timeout_s=1.0)
        again.join("hub-a", "tcp://127.0.0.1:3")
        assert [m["endpoint"] for m in again.members()] == ["tcp://127.0.0.1:3"]
        assert _wait(again.is_leader)
        again.close()
        first.close()


def test_a_hub_past_1024_fds_keeps_one_connection_to_etcd(tmp_path):
    """A hub of 1,000 hosts holds 2,000 descriptors: its check that etcd
    did not close the kept connection must not use select(2), whose
    ValueError past FD_SETSIZE made every request open a new connection."""
    import psutil
    from hub.store.etcd import _KeptSession
    from tests.fdkit import fds_past_select_limit

    with running_etcd(str(tmp_path)) as server, fds_past_select_limit():
        port = int(server.url.rsplit(":", 1)[1])
        session = _KeptSession("127.0.0.1", port)

        def local_ports():
            return {c.laddr.port for c in psutil.Process().net_connections("tcp")
                    if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED}

        seen = []
        for _ in range(3):
            answer = session.post(f"{server.url}/v3/kv/range", json={"key": "eA=="}, timeout=5)
            assert answer.status_code == 200
            seen.append(local_ports())
        session._close()
        assert len(seen[0]) == 1 and seen[0] == seen[1] == seen[2]
