"""Host keys in the hub's store (real SQLite): a key is one host, a name is
one key, and a store from before bindings keeps its hosts' keys."""
from __future__ import annotations

import json
import sqlite3
import time

import pytest

from dcctl import errors
from hub.store import HubStore

KEY_A, KEY_B = "A" * 40, "B" * 40


@pytest.fixture
def store(tmp_path):
    s = HubStore(str(tmp_path / "hub"))
    yield s
    s.close()


def test_a_key_registers_only_the_name_bound_to_it(store):
    with pytest.raises(errors.Unauthorized, match="not bound"):
        store.upsert_host("h1", "tcp://10.0.0.1:7000", "", {}, {}, KEY_A)
    store.bind_key("h1", KEY_A)
    assert store.upsert_host("h1", "tcp://10.0.0.1:7000", "", {}, {}, KEY_A)["key"] == KEY_A
    with pytest.raises(errors.Unauthorized, match="h1"):
        store.upsert_host("evil", "tcp://10.0.0.1:7000", "", {}, {}, KEY_A)
    with pytest.raises(errors.Unauthorized, match="another key"):
        store.upsert_host("h1", "tcp://10.0.0.2:7000", "", {}, {}, KEY_B)
    with pytest.raises(errors.Unauthorized, match="another key"):
        store.upsert_host("h1", "ipc:///x", "", {}, {}, "")  # a local join cannot take a keyed name
    assert [h["name"] for h in store.hosts()] == ["h1"]


def test_bindings_are_one_to_one_and_go_with_the_host(store):
    assert store.bind_key("h1", KEY_A)["key"] == KEY_A
    assert store.bind_key("h1", KEY_A)["key"] == KEY_A  # idempotent
    with pytest.raises(errors.Conflict, match="h1"):
        store.bind_key("h2", KEY_A)
    with pytest.raises(errors.Conflict, match="another key"):
        store.bind_key("h1", KEY_B)
    store.upsert_host("h1", "tcp://10.0.0.1:7000", "", {}, {}, KEY_A)
    store.remove_host("h1")
    assert store.binding("h1") is None and store.name_of_key(KEY_A) is None
    assert store.bind_key("h2", KEY_A)["name"] == "h2"


def test_a_store_from_before_bindings_keeps_each_hosts_key(tmp_path):
    path = tmp_path / "hub"
    path.mkdir()
    db = sqlite3.connect(str(path / "hub.db"))
    db.execute("CREATE TABLE hosts (name TEXT PRIMARY KEY, endpoint TEXT NOT NULL, address TEXT NOT NULL DEFAULT '',"
               " key TEXT NOT NULL DEFAULT '', labels TEXT NOT NULL DEFAULT '{}', capacity TEXT NOT NULL DEFAULT '{}',"
               " summary TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL DEFAULT 'alive', registered_at REAL NOT NULL,"
               " last_heartbeat REAL NOT NULL)")
    now = time.time()
    for name, key in (("h1", KEY_A), ("local", "")):
        db.execute("INSERT INTO hosts (name, endpoint, key, capacity, registered_at, last_heartbeat)"
                   " VALUES (?, 'tcp://10.0.0.1:7000', ?, ?, ?, ?)", (name, key, json.dumps({}), now, now))
    db.commit()
    db.close()
    store = HubStore(str(path))
    try:
        assert store.name_of_key(KEY_A) == "h1" and store.binding("local") is None
        store.upsert_host("h1", "tcp://10.0.0.1:7000", "", {}, {}, KEY_A)
        with pytest.raises(errors.Unauthorized):
            store.upsert_host("h1", "tcp://10.0.0.1:7000", "", {}, {}, KEY_B)
    finally:
        store.close()
    HubStore(str(path)).close()  # opening again changes nothing
