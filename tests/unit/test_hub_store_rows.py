"""The SQLite store's rows (hub/store/sqlite.py): flat JSON maps (labels,
capacity) are parsed once per distinct text, yet every row handed out is
the caller's own: changing one never changes the store or another row."""
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
