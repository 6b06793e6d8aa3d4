"""The SQLite store's rows (hub/store/sqlite.py): flat JSON maps (labels,
capacity) are parsed once per distinct text, yet every row handed out is
the caller's own: changing one never changes the store or another row.
A decision's reservation figures come from a trigger-kept tally, one row
per host, also in a store made before the tally existed."""
from __future__ import annotations

from hub.store import HubStore

CAP = {"memory_reservable_bytes": 1 << 30, "container_slots": 10}


def test_rows_are_fresh_copies_whatever_was_parsed_before(tmp_path):
    store = HubStore(str(tmp_path))
    try:
        for name in ("h1", "h2"):
            store.upsert_host(name, f"ipc:///nowhere/{name}", "", {"zone": "a"}, dict(CAP))
        first = store.hosts()
        first[0]["labels"]["zone"] = "changed"
        first[0]["capacity"]["container_slots"] = 0
        again = store.hosts()
        assert [h["labels"] for h in again] == [{"zone": "a"}, {"zone": "a"}]
        assert [h["capacity"] for h in again] == [CAP, CAP]
        assert again[0]["labels"] is not again[1]["labels"]
        assert store.host("h1")["capacity"] == CAP
        # a nested value (a heartbeat's summary) is parsed anew each time too
        store.heartbeat("h1", {"capacity": CAP, "containers": [{"name": "c", "state": "running"}]})
        row = store.host("h1")
        row["summary"]["containers"].append({"name": "x"})
        assert store.host("h1")["summary"]["containers"] == [{"name": "c", "state": "running"}]
    finally:
        store.close()


def test_a_changed_map_is_read_back_changed(tmp_path):
    store = HubStore(str(tmp_path))
    try:
        store.upsert_host("h1", "ipc:///nowhere/h1", "", {"zone": "a"}, dict(CAP))
        assert store.host("h1")["labels"] == {"zone": "a"}
        store.upsert_host("h1", "ipc:///nowhere/h1", "", {"zone": "b", "rack": "1"}, {**CAP, "container_slots": 3})
        row = store.host("h1")
        assert row["labels"] == {"zone": "b", "rack": "1"} and row["capacity"]["container_slots"] == 3
    finally:
        store.close()


def _decide(store, name):
    from hub import scheduler
    return store.claim(name, "img", 1 << 20, {}, scheduler.choose(store.hosts(), scheduler.Request(1 << 20)))


def test_a_decision_reads_one_row_per_host_not_every_container(tmp_path):
    # the figures come from the trigger-kept tally (host_reserved), and an
    # unchanged hosts table is not read again: nothing a decision runs
    # grows with the containers already placed
    store = HubStore(str(tmp_path))
    try:
        for name in ("h1", "h2"):
            store.upsert_host(name, f"ipc:///nowhere/{name}", "", {}, {**CAP, "container_slots": 1000})
        for i in range(50):
            _decide(store, f"c{i}")
        seen: list[str] = []
        store.db.set_trace_callback(seen.append)
        try:
            _decide(store, "last")
        finally:
            store.db.set_trace_callback(None)
        assert seen and not [s for s in seen if "GROUP BY" in s or "FROM hosts " in s or s.endswith("FROM hosts")]
        assert store.reserved_memory() == {"h1": (26 << 20, 26), "h2": (25 << 20, 25)}
    finally:
        store.close()


def test_a_store_from_before_the_tally_gets_its_figures_summed_once(tmp_path):
    import sqlite3
    store = HubStore(str(tmp_path))
    for name in ("h1", "h2"):
        store.upsert_host(name, f"ipc:///nowhere/{name}", "", {}, {**CAP, "container_slots": 1000})
    for i in range(5):
        _decide(store, f"c{i}")
    store.close()
    db = sqlite3.connect(str(tmp_path / "hub.db"), isolation_level=None)  # as an older hub left it
    for kind, name in db.execute("SELECT type, name FROM sqlite_master WHERE name LIKE 'host_reserved%'"
                                 " OR name LIKE 'hosts_version%' ORDER BY type = 'table'").fetchall():
        db.execute(f"DROP {kind.upper()} {name}")
    db.execute("INSERT INTO containers (name, host, image, memory_bytes, state, created_at, updated_at)"
               " VALUES ('old', 'h1', 'img', 7, 'placed', 0, 0)")
    db.close()
    store = HubStore(str(tmp_path))
    try:
        assert store.reserved_memory() == {"h1": ((3 << 20) + 7, 4), "h2": (2 << 20, 2)}
        store.forget("old")
        _decide(store, "new")
        assert store.reserved_memory() == {"h1": (3 << 20, 3), "h2": (3 << 20, 3)}
        assert [h["name"] for h in store.hosts()] == ["h1", "h2"]
    finally:
        store.close()
