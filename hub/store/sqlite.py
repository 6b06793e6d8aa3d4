"""The hub's durable fleet state in SQLite: hosts, containers, reservations,
routes.

WAL mode; every read-modify-write (a name claim, a capacity reservation)
runs in ``BEGIN IMMEDIATE`` so two writers never interleave a read and a
write (python/cpython#124510).  The hub is one process on one thread; its
greenlets never yield inside a transaction (no I/O but SQLite's), so one
connection serves them all.

Every SQLite error of the disk (full, I/O, unwritable) reaches callers as a
typed StoreError (``_Connection``, the one place that maps them).

An exclusive ``flock`` on ``STATE_DIR/hub.lock`` keeps a second hub off the
same store (HubBusy).

Host keys: ``host_keys`` binds each host name to one CURVE public key and
each key to one name (Salt's accepted keys).  An operator makes a binding
(``bind_key``, the hub's host_add); a key registers only the name bound to
it, and a name bound to a key is registered by that key only.  Hosts that
join over the hub's local ipc endpoint have no key (``key`` "").

Container rows carry ``state``: "reserved" while a placement is in flight
(a journal: a hub restart rolls these back or adopts them), then "placed";
"destroying" while a destroy is forwarded, and after one whose outcome the
hub did not learn (its host went away): a heartbeat of that host that no
longer lists it (confirmed with the host) forgets the row.

``abandoned`` rows (name, host) record a copy a failed create may have left
on a host the hub could not reach to undo it: that copy is destroyed once
the host answers (never adopted), and while such a row exists the name
stays claimed.

Route rows are (name, container, container port): a frontend (an HTTP host
name or ``tcp:PORT``, see hub/routes.py) and one backend each.  They name
containers, not addresses, so they follow a container wherever it runs;
forgetting a container drops its routes.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import time
from typing import Iterator

from dcctl import errors
from hub.store.base import Store
from hub.store.base import event_source as _event_source
from hub.store.base import retention_keeps

SCHEMA = """
CREATE TABLE IF NOT EXISTS hosts (
    name TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    address TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL DEFAULT '',
    labels TEXT NOT NULL DEFAULT '{}',
    capacity TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'alive',
    registered_at REAL NOT NULL,
    last_heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    name TEXT PRIMARY KEY,
    host TEXT NOT NULL,
    image TEXT NOT NULL,
    memory_bytes INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    spec TEXT NOT NULL DEFAULT '{}',
    ports TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS containers_host ON containers(host);
CREATE TABLE IF NOT EXISTS routes (
    name TEXT NOT NULL,
    container TEXT NOT NULL,
    port INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (name, container, port)
);
CREATE INDEX IF NOT EXISTS routes_container ON routes(container);
CREATE TABLE IF NOT EXISTS abandoned (
    name TEXT NOT NULL,
    host TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (name, host)
);
"""
KEYS_SCHEMA = """
CREATE TABLE host_keys (
    name TEXT PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    added_at REAL NOT NULL
);
"""

#: Per-host reservation figures and a version of the hosts table, kept by
#: triggers in the same transaction as every write to ``containers`` and
#: ``hosts`` (whatever the statement, also one of an older hub version):
#: a placement reads one row per host instead of summing every container
#: (bench/placement.py), and hosts() re-reads the hosts table only when its
#: version moved.  ``host_reserved`` has a row per host with at least one
#: container row, as ``SUM ... GROUP BY host`` over ``containers`` gives.
TALLY_SCHEMA = """
CREATE TABLE host_reserved (
    host TEXT PRIMARY KEY,
    memory_bytes INTEGER NOT NULL,
    containers INTEGER NOT NULL
);
CREATE TRIGGER host_reserved_insert AFTER INSERT ON containers BEGIN
    INSERT INTO host_reserved (host, memory_bytes, containers) VALUES (NEW.host, NEW.memory_bytes, 1)
        ON CONFLICT(host) DO UPDATE SET memory_bytes = memory_bytes + excluded.memory_bytes,
                                        containers = containers + 1;
END;
CREATE TRIGGER host_reserved_delete AFTER DELETE ON containers BEGIN
    UPDATE host_reserved SET memory_bytes = memory_bytes - OLD.memory_bytes, containers = containers - 1
        WHERE host = OLD.host;
    DELETE FROM host_reserved WHERE host = OLD.host AND containers <= 0;
END;
CREATE TRIGGER host_reserved_update AFTER UPDATE OF host, memory_bytes ON containers BEGIN
    UPDATE host_reserved SET memory_bytes = memory_bytes - OLD.memory_bytes, containers = containers - 1
        WHERE host = OLD.host;
    DELETE FROM host_reserved WHERE host = OLD.host AND containers <= 0;
    INSERT INTO host_reserved (host, memory_bytes, containers) VALUES (NEW.host, NEW.memory_bytes, 1)
        ON CONFLICT(host) DO UPDATE SET memory_bytes = memory_bytes + excluded.memory_bytes,
                                        containers = containers + 1;
END;
INSERT INTO host_reserved (host, memory_bytes, containers)
    SELECT host, SUM(memory_bytes), COUNT(*) FROM containers WHERE true GROUP BY host;
CREATE TABLE hosts_version (id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER NOT NULL);
INSERT INTO hosts_version (id, version) VALUES (0, 0);
CREATE TRIGGER hosts_version_insert AFTER INSERT ON hosts BEGIN
    UPDATE hosts_version SET version = version + 1;
END;
CREATE TRIGGER hosts_version_update AFTER UPDATE ON hosts BEGIN
    UPDATE hosts_version SET version = version + 1;
END;
CREATE TRIGGER hosts_version_delete AFTER DELETE ON hosts BEGIN
    UPDATE hosts_version SET version = version + 1;
END;
"""

_JSON_COLS = ("labels", "capacity", "summary", "spec", "ports")
#: SQLite primary result codes that mean the store's disk failed us: SQLITE_READONLY,
#: SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB.
_DISK_CODES = frozenset({8, 10, 11, 13, 14, 26})
_DISK_WORDS = ("disk is full", "disk i/o error", "unable to open database file", "readonly database",
               "malformed", "not a database")


def _store_error(exc: sqlite3.Error) -> errors.DcError | None:
    """The typed StoreError for a SQLite error of the disk (full, I/O,
    unwritable), or None for any other."""
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc)
    if (code is not None and code & 0xFF in _DISK_CODES) or any(w in text.lower() for w in _DISK_WORDS):
        return errors.StoreError(f"the hub's store cannot be written: {text}",
                                 hint="free space (or fix the disk) of the hub's --state-dir; nothing was changed")
    return None


class _Connection:
    """The store's one SQLite connection, seen through the store boundary:
    a disk error (full, I/O, unwritable) of any statement becomes a typed
    StoreError; everything else is the connection's own."""

    def __init__(self, conn: sqlite3.Connection):
        self._conn = conn

    def _run(self, fn, *args):
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            typed = _store_error(exc)
            if typed is None:
                raise
            raise typed from exc

    def execute(self, sql: str, args=()):
        return self._run(self._conn.execute, sql, args)

    def executemany(self, sql: str, rows):
        return self._run(self._conn.executemany, sql, rows)

    def executescript(self, script: str):
        return self._run(self._conn.executescript, script)

    def __getattr__(self, name: str):
        return getattr(self._conn, name)


#: JSON text -> the flat map parsed from it (labels, capacity: scalar values);
#: a placement reads every host row, and these rarely change between two reads
_FLAT_MAPS: dict[str, dict] = {}
_FLAT_MAPS_MAX = 8192
_SCALARS = (str, int, float, bool, type(None))


def _json(text: str):
    """``json.loads(text)``, a fresh value each call; a flat map (scalar
    values only) is parsed once per distinct text and handed out as a copy."""
    flat = _FLAT_MAPS.get(text)
    if flat is not None:
        return dict(flat)
    if text == "[]":
        return []
    value = json.loads(text)
    if type(value) is dict and all(type(v) in _SCALARS for v in value.values()):
        if len(_FLAT_MAPS) >= _FLAT_MAPS_MAX:
            _FLAT_MAPS.clear()
        _FLAT_MAPS[text] = value
        return dict(value)
    return value


def _copy(value):
    """A copy of a flat map (labels, capacity), anything else as it is."""
    return dict(value) if type(value) is dict else value


def _statements(script: str) -> list[str]:
    """The statements of ``script`` (one ``;`` ends each, outside a trigger body)."""
    out, part = [], ""
    for line in script.strip().splitlines(keepends=True):
        part += line
        if sqlite3.complete_statement(part):
            out.append(part.strip())
            part = ""
    return out


def _rows(cur: sqlite3.Cursor, rows: list[tuple]) -> list[dict]:
    """Rows as dicts by column name, JSON columns parsed (the column names
    looked up once per query, not per row)."""
    names = [d[0] for d in cur.description]
    parsed = [(i, n) for i, n in enumerate(names) if n in _JSON_COLS]
    out = []
    for row in rows:
        d = dict(zip(names, row))
        for i, n in parsed:
            d[n] = _json(row[i])
        out.append(d)
    return out


class HubStore(Store):
    """Open (creating if needed) the store under ``state_dir``.

    Raises:
        HubBusy: another process holds the store's lock.
    """

    kind = "sqlite"

    def __init__(self, state_dir: str):
        self._hub: dict | None = None  # {name, endpoint, since}: the one hub (join)
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(state_dir, "hub.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip()
            os.close(self._lock_fd)
            raise errors.HubBusy(f"another hub (pid {holder or '?'}) uses the store in {state_dir}",
                                 hint="stop it first, or give this hub another --state-dir") from exc
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, str(os.getpid()).encode(), 0)
        self.db = _Connection(sqlite3.connect(os.path.join(state_dir, "hub.db"), isolation_level=None, timeout=10))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(hosts)")}
        if "key" not in columns:  # a store from before host keys
            self.db.execute("ALTER TABLE hosts ADD COLUMN key TEXT NOT NULL DEFAULT ''")
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='host_keys'").fetchone():
            with self.write() as db:  # a store from before bindings: hosts keep the key they registered with
                db.execute(KEYS_SCHEMA)
                db.execute("INSERT OR IGNORE INTO host_keys (name, key, added_at)"
                           " SELECT name, key, registered_at FROM hosts WHERE key != '' ORDER BY registered_at")
        if not self.db.execute("SELECT 1 FROM sqlite_master WHERE name='host_reserved'").fetchone():
            with self.write() as db:  # a new store, or one from before the tally: summed once here
                for statement in _statements(TALLY_SCHEMA):
                    db.execute(statement)
        self._hosts_cache: tuple[int, list[dict]] | None = None  # (hosts_version, rows): see hosts()
        self._orphans: set[str] = set()  # rows reserved when the hub joined (orphaned_reservations)

    def close(self) -> None:
        self.db.close()
        os.close(self._lock_fd)

    # ------------------------------------------------------------ hubs (one: its lock says so)
    def join(self, name: str, endpoint: str) -> None:
        """The one hub starts: every row still "reserved" is a placement its
        previous run left undecided (orphaned_reservations)."""
        self._hub = {"name": name, "endpoint": endpoint, "since": time.time()}
        self._orphans = {n for (n,) in self.db.execute("SELECT name FROM containers WHERE state='reserved'")}

    def is_leader(self) -> bool:
        return True

    def leader(self) -> str | None:
        return self._hub["name"] if self._hub else None

    def members(self) -> list[dict]:
        return [dict(self._hub)] if self._hub else []

    def orphaned_reservations(self) -> list[str]:
        """The rows "reserved" when the hub joined (one hub: the run that
        made them is gone), handed out once; rows reserved since are this
        process's own placements in flight."""
        out, self._orphans = sorted(self._orphans), set()
        return out

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A BEGIN IMMEDIATE transaction (committed unless an error escapes;
        a COMMIT that fails, e.g. StoreError on a full disk, rolls back).

        Raises: StoreError (the disk failed: nothing was written)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back already (SQLITE_FULL)
                try:
                    self.db.execute("ROLLBACK")
                except errors.StoreError:
                    pass
            raise

    def _all(self, sql: str, args: tuple = ()) -> list[dict]:
        cur = self.db.execute(sql, args)
        return _rows(cur, cur.fetchall())

    # ------------------------------------------------------------ host keys
    def bind_key(self, name: str, key: str) -> dict:
        """Bind host ``name`` to the CURVE public ``key`` (Z85); idempotent.

        Returns: {name, key, added_at}.
        Raises: Conflict (the name is bound to another key, or the key to
        another name)."""
        with self.write() as db:
            for row in db.execute("SELECT name, key FROM host_keys WHERE name=? OR key=?", (name, key)):
                if row == (name, key):
                    continue
                if row[0] == name:
                    raise errors.Conflict(f"host {name!r} is bound to another key",
                                          hint="host_remove it first to give it a new key")
                raise errors.Conflict(f"this key is bound to host {row[0]!r}: a key is one host",
                                      hint="give each host its own key pair")
            db.execute("INSERT OR IGNORE INTO host_keys (name, key, added_at) VALUES (?, ?, ?)",
                       (name, key, time.time()))
        return self.binding(name)

    def binding(self, name: str) -> dict | None:
        """{name, key, added_at} of host ``name``, or None when unbound."""
        rows = self._all("SELECT * FROM host_keys WHERE name=?", (name,))
        return rows[0] if rows else None

    def name_of_key(self, key: str) -> str | None:
        """The host name bound to ``key``, or None."""
        row = self.db.execute("SELECT name FROM host_keys WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    # ------------------------------------------------------------ hosts
    def upsert_host(self, name: str, endpoint: str, address: str, labels: dict, capacity: dict,
                    key: str = "") -> dict:
        """Register or re-register a host.  A host's identity is its CURVE
        key: a key registers only the name bound to it (bind_key), and a
        name bound to a key is registered only with it.  ``key`` "" is a
        host joining locally (ipc), allowed for an unbound name only.

        Returns: the host's row plus ``previous_state`` (its state before,
        None for a new host).
        Raises: Unauthorized (the key is another host's, or unbound; the
        name belongs to another key)."""
        now = time.time()
        with self.write() as db:
            row = db.execute("SELECT key, state FROM hosts WHERE name=?", (name,)).fetchone()
            bound = db.execute("SELECT key FROM host_keys WHERE name=?", (name,)).fetchone()
            if (bound is not None and bound[0] != key) or (row is not None and row[0] and row[0] != key):
                raise errors.Unauthorized(f"host name {name!r} belongs to another key",
                                          hint="a host's identity is its key; remove the old host first")
            if key and bound is None:
                other = db.execute("SELECT name FROM host_keys WHERE key=?", (key,)).fetchone()
                if other is not None:
                    raise errors.Unauthorized(f"this key is {other[0]}'s: it may register only that host name",
                                              hint="a host's key is one host; give each host its own key pair")
                raise errors.Unauthorized(f"host name {name!r} is not bound to this key",
                                          hint=f"an operator adds the host first: dcctl host_add {name} PUBLIC_KEY")
            db.execute(
                "INSERT INTO hosts (name, endpoint, address, key, labels, capacity, state, registered_at,"
                " last_heartbeat) VALUES (?, ?, ?, ?, ?, ?, 'alive', ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " endpoint=excluded.endpoint, address=excluded.address, key=excluded.key, labels=excluded.labels,"
                " capacity=excluded.capacity, state='alive', registered_at=excluded.registered_at,"
                " last_heartbeat=excluded.last_heartbeat",
                (name, endpoint, address, key, json.dumps(labels), json.dumps(capacity), now, now))
        return {**self.host(name), "previous_state": row[1] if row is not None else None}

    def heartbeat(self, name: str, summary: dict, key: str = "", at: float | None = None) -> str | None:
        """Record a heartbeat (received at ``at``, Unix s; None: now) and mark
        the host alive; returns the host's previous state, or None when the
        host is unknown (it must register again).

        Raises: Unauthorized (the host is bound to another key)."""
        with self.write() as db:
            row = db.execute("SELECT state, key FROM hosts WHERE name=?", (name,)).fetchone()
            if row is None:
                return None
            if row[1] and row[1] != key:
                raise errors.Unauthorized(f"host {name!r} belongs to another key")
            capacity, at = summary.get("capacity"), time.time() if at is None else at
            if capacity is not None:
                db.execute("UPDATE hosts SET summary=?, capacity=?, state='alive', last_heartbeat=? WHERE name=?",
                           (json.dumps(summary), json.dumps(capacity), at, name))
            else:
                db.execute("UPDATE hosts SET summary=?, state='alive', last_heartbeat=? WHERE name=?",
                           (json.dumps(summary), at, name))
            return row[0]

    def host_state(self, name: str, key: str = "") -> str | None:
        """The state of host ``name`` (a read, no transaction), or None when
        the host is unknown.

        Raises: Unauthorized (the host is bound to another key)."""
        row = self.db.execute("SELECT state, key FROM hosts WHERE name=?", (name,)).fetchone()
        if row is None:
            return None
        if row[1] and row[1] != key:
            raise errors.Unauthorized(f"host {name!r} belongs to another key")
        return row[0]

    def record_beats(self, beats: dict[str, tuple[float, str, str | None]]) -> None:
        """Write many hosts' heartbeats in one transaction: ``beats`` is
        {host: (at (Unix s), summary as JSON text, capacity as JSON text or
        None)}; each row gets the summary, its capacity (unless None) and
        ``at`` as its last heartbeat.  The state is not touched (a host
        coming back is written at once, by heartbeat); unknown hosts are
        skipped."""
        if not beats:
            return
        rows = [(summary, capacity, at, name) for name, (at, summary, capacity) in beats.items()]
        with self.write() as db:
            db.executemany("UPDATE hosts SET summary=?, capacity=COALESCE(?, capacity),"
                           " last_heartbeat=MAX(last_heartbeat, ?) WHERE name=?", rows)

    def mark_unreachable(self, deadline: float, fresh: set[str] | frozenset = frozenset()) -> list[str]:
        """Mark alive hosts whose last heartbeat is older than ``deadline``
        (Unix s) unreachable, except those in ``fresh`` (heartbeats newer
        than the deadline that are not written yet); returns their names."""
        with self.write() as db:
            names = [r[0] for r in db.execute(
                "SELECT name FROM hosts WHERE state='alive' AND last_heartbeat < ?", (deadline,))
                if r[0] not in fresh]
            db.executemany("UPDATE hosts SET state='unreachable' WHERE name=?", [(n,) for n in names])
        return names

    def host(self, name: str) -> dict:
        rows = self._all("SELECT * FROM hosts WHERE name=?", (name,))
        if not rows:
            raise errors.NoSuchHost(f"no host {name!r} in the fleet")
        return rows[0]

    def hosts(self) -> list[dict]:
        """Every host row, by name: read again only when the hosts table
        changed (its version, kept by triggers, moved); otherwise copies of
        the rows last read, each with its own labels and capacity maps (a
        row's ``summary`` is shared with later reads, as EtcdStore's rows'
        are: read it, do not change it)."""
        version = self.db.execute("SELECT version FROM hosts_version").fetchone()[0]
        cached = self._hosts_cache
        if cached is None or cached[0] != version:
            cached = self._hosts_cache = (version, self._all("SELECT * FROM hosts ORDER BY name"))
        return [{**r, "labels": _copy(r["labels"]), "capacity": _copy(r["capacity"])} for r in cached[1]]

    def remove_host(self, name: str) -> None:
        """Forget host ``name``: its row and its key binding."""
        with self.write() as db:
            db.execute("DELETE FROM hosts WHERE name=?", (name,))
            db.execute("DELETE FROM host_keys WHERE name=?", (name,))
            db.execute("DELETE FROM abandoned WHERE host=?", (name,))

    # ------------------------------------------------------------ containers
    def container(self, name: str) -> dict:
        rows = self._all("SELECT * FROM containers WHERE name=?", (name,))
        if not rows:
            raise errors.NoSuchContainer(f"no container {name!r} in the fleet")
        return rows[0]

    def containers(self, host: str | None = None) -> list[dict]:
        if host is None:
            return self._all("SELECT * FROM containers ORDER BY name")
        return self._all("SELECT * FROM containers WHERE host=? ORDER BY name", (host,))

    def reserved_memory(self, db: sqlite3.Connection | None = None) -> dict[str, tuple[int, int]]:
        """{host: (memory_bytes reserved, container count)} from the rows
        (read in transaction ``db``, or outside one)."""
        return {h: (m or 0, n) for h, m, n in (db or self.db).execute(
            "SELECT host, memory_bytes, containers FROM host_reserved")}

    def claim(self, name: str, image: str, memory_bytes: int, spec: dict, choose) -> dict:
        """Atomically claim ``name`` and reserve capacity on the host that
        ``choose(db_reservations) -> host`` picks (it raises NoCapacity when
        none fits).

        Raises: ContainerExists, NoCapacity.
        """
        now = time.time()
        with self.write() as db:
            if db.execute("SELECT 1 FROM containers WHERE name=?", (name,)).fetchone():
                raise errors.ContainerExists(f"container {name!r} already exists in the fleet")
            left = [h for (h,) in db.execute("SELECT host FROM abandoned WHERE name=? ORDER BY host", (name,))]
            if left:
                raise errors.ContainerExists(
                    f"container {name!r} is still claimed: a failed create may have left a copy on"
                    f" {', '.join(left)}",
                    hint=f"the hub destroys that copy once {', '.join(left)} answers; create it again then")
            host = choose(self.reserved_memory(db))
            spec_text = json.dumps(spec)
            db.execute("INSERT INTO containers (name, host, image, memory_bytes, state, spec, created_at, updated_at)"
                       " VALUES (?, ?, ?, ?, 'reserved', ?, ?, ?)",
                       (name, host, image, memory_bytes, spec_text, now, now))
        # the row as written (container() would read it back the same)
        return {"name": name, "host": host, "image": image, "memory_bytes": memory_bytes, "state": "reserved",
                "spec": json.loads(spec_text), "ports": [], "created_at": now, "updated_at": now}

    def move(self, name: str, choose) -> str:
        """Move a reservation to the host ``choose(db_reservations)`` picks
        (its current row is left out of the figures).

        Raises: NoSuchContainer (no row: nothing moved), NoCapacity."""
        with self.write() as db:
            row = db.execute("SELECT host, memory_bytes FROM containers WHERE name=?", (name,)).fetchone()
            if row is None:  # forgotten meanwhile (e.g. its host removed mid-create)
                raise errors.NoSuchContainer(f"no container {name!r} in the fleet")
            figures = self.reserved_memory(db)
            mem, count = figures.get(row[0], (0, 0))
            figures[row[0]] = (mem - (row[1] or 0), count - 1)
            host = choose(figures)
            db.execute("UPDATE containers SET host=?, updated_at=? WHERE name=?", (host, time.time(), name))
        return host

    def assign(self, name: str, host: str) -> None:
        """Point a container's row at ``host`` (a failed move, undone)."""
        with self.write() as db:
            db.execute("UPDATE containers SET host=?, updated_at=? WHERE name=?", (host, time.time(), name))

    def set_placed(self, name: str, image: str, ports: list[dict], host: str | None = None) -> bool:
        """See Store.set_placed (False: no such row, or on another host)."""
        with self.write() as db:
            cur = db.execute("UPDATE containers SET state='placed', image=?, ports=?, updated_at=? WHERE name=?"
                             " AND (? IS NULL OR host=?)", (image, json.dumps(ports), time.time(), name, host, host))
        return cur.rowcount > 0

    def set_state(self, name: str, state: str, was: str) -> bool:
        """Set a container row's state to ``state`` if it is ``was``;
        returns True when it was (and is changed)."""
        with self.write() as db:
            cur = db.execute("UPDATE containers SET state=?, updated_at=? WHERE name=? AND state=?",
                             (state, time.time(), name, was))
        return cur.rowcount > 0

    def destroying(self, host: str) -> list[str]:
        """Names of ``host``'s rows in state "destroying" (a destroy whose
        outcome the hub did not learn)."""
        return [n for (n,) in self.db.execute(
            "SELECT name FROM containers WHERE host=? AND state='destroying' ORDER BY name", (host,))]

    def set_ports(self, name: str, ports: list[dict]) -> None:
        with self.write() as db:
            db.execute("UPDATE containers SET ports=?, updated_at=? WHERE name=?",
                       (json.dumps(ports), time.time(), name))

    def adopt(self, name: str, host: str, image: str, ports: list[dict], memory_bytes: int = 0) -> None:
        """Record a container found on a host that the store lacks."""
        now = time.time()
        with self.write() as db:
            db.execute("INSERT OR IGNORE INTO containers (name, host, image, memory_bytes, state, ports, created_at,"
                       " updated_at) VALUES (?, ?, ?, ?, 'placed', ?, ?, ?)",
                       (name, host, image, memory_bytes, json.dumps(ports), now, now))

    def abandon(self, name: str, host: str) -> None:
        """Record that a failed create may have left ``name`` on ``host``."""
        with self.write() as db:
            db.execute("INSERT OR REPLACE INTO abandoned (name, host, at) VALUES (?, ?, ?)", (name, host, time.time()))

    def abandoned(self, host: str | None = None) -> list[dict]:
        """The abandoned copies [{name, host, at}], all or ``host``'s."""
        if host is None:
            return self._all("SELECT * FROM abandoned ORDER BY name, host")
        return self._all("SELECT * FROM abandoned WHERE host=? ORDER BY name", (host,))

    def is_abandoned(self, name: str, host: str) -> bool:
        """True when a failed create may have left ``name`` on ``host``."""
        return self.db.execute("SELECT 1 FROM abandoned WHERE name=? AND host=?", (name, host)).fetchone() is not None

    def unabandon(self, name: str, host: str) -> None:
        """Forget the record of ``name``'s copy on ``host`` (it is gone)."""
        with self.write() as db:
            db.execute("DELETE FROM abandoned WHERE name=? AND host=?", (name, host))

    def forget(self, name: str) -> None:
        """Drop a container's record and its routes."""
        with self.write() as db:
            db.execute("DELETE FROM containers WHERE name=?", (name,))
            db.execute("DELETE FROM routes WHERE container=?", (name,))

    # ------------------------------------------------------------ routes
    def add_route(self, name: str, container: str, port: int, exist_ok: bool = False) -> bool:
        """Add backend (container, container ``port``) to route ``name``
        (validated by the caller); True when a row was added.

        The container must be placed and map ``port`` (tcp).
        Raises: NoSuchContainer, NoSuchPortMapping, RouteExists (unless
        ``exist_ok``)."""
        with self.write() as db:
            row = db.execute("SELECT ports FROM containers WHERE name=?", (container,)).fetchone()
            if row is None:
                raise errors.NoSuchContainer(f"no container {container!r} in the fleet")
            mapped = sorted(p.get("container_port") for p in json.loads(row[0] or "[]")
                            if isinstance(p, dict) and p.get("proto") == "tcp")
            if port not in mapped:
                raise errors.NoSuchPortMapping(
                    f"container {container!r} maps no tcp port {port} (mapped: {', '.join(map(str, mapped)) or 'none'})",
                    hint=f"map it first: container_connection_add {container} tcp {port}")
            if db.execute("SELECT 1 FROM routes WHERE name=? AND container=? AND port=?",
                          (name, container, port)).fetchone():
                if exist_ok:
                    return False
                raise errors.RouteExists(f"route {name} already has backend {container}:{port}")
            db.execute("INSERT INTO routes (name, container, port, created_at) VALUES (?, ?, ?, ?)",
                       (name, container, port, time.time()))
        return True

    def remove_route(self, name: str, container: str, port: int) -> None:
        """Remove one backend of route ``name``.  Raises: NoSuchRoute."""
        with self.write() as db:
            if not db.execute("DELETE FROM routes WHERE name=? AND container=? AND port=?",
                              (name, container, port)).rowcount:
                raise errors.NoSuchRoute(f"route {name} has no backend {container}:{port}")

    def routes(self) -> list[dict]:
        """Every route row: [{name, container, port, created_at}], by name."""
        return self._all("SELECT * FROM routes ORDER BY name, container, port")

    # ------------------------------------------------------------ deploy: apps, releases, journal
    # (owned by the deploy work, hub/apps.py and hub/deploy.py)  JSON
    # documents by key, so that a key-value store (etcd) keeps them as is:
    #   apps/APP                  {name, created, next_release, current}
    #   releases/APP/NNNNNN       {app, release, image, config, state, ...}
    #   deploys/APP               the journal of the deploy under way
    _deploy_ready = False

    def _deploy_docs(self) -> _Connection:
        if not self._deploy_ready:
            self.db.execute("CREATE TABLE IF NOT EXISTS deploy_docs (key TEXT PRIMARY KEY, doc TEXT NOT NULL,"
                            " updated_at REAL NOT NULL)")
            self._deploy_ready = True
        return self.db

    def deploy_doc_get(self, key: str) -> dict | None:
        """The document at ``key``, or None."""
        row = self._deploy_docs().execute("SELECT doc FROM deploy_docs WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def deploy_doc_put(self, key: str, doc: dict, create_only: bool = False) -> bool:
        """Write ``doc`` at ``key``; with ``create_only``, only if there is
        none (then False when one exists).  Returns whether it was written.
        Raises: StoreError (the disk failed: nothing was written)."""
        self._deploy_docs()
        with self.write() as db:
            if create_only and db.execute("SELECT 1 FROM deploy_docs WHERE key=?", (key,)).fetchone():
                return False
            db.execute("INSERT OR REPLACE INTO deploy_docs (key, doc, updated_at) VALUES (?, ?, ?)",
                       (key, json.dumps(doc, sort_keys=True), time.time()))
        return True

    def deploy_doc_delete(self, key: str) -> bool:
        """Remove the document at ``key``; whether there was one."""
        self._deploy_docs()
        with self.write() as db:
            return bool(db.execute("DELETE FROM deploy_docs WHERE key=?", (key,)).rowcount)

    def deploy_docs(self, prefix: str) -> list[tuple[str, dict]]:
        """Every (key, document) whose key starts with ``prefix``, by key."""
        rows = self._deploy_docs().execute(
            "SELECT key, doc FROM deploy_docs WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix)).fetchall()
        return [(k, json.loads(d)) for k, d in rows]
    # ------------------------------------------------------------ fleet events (section of `events`)
    # Fleet events (hub/events.py) as JSON documents by fleet index; the
    # index is AUTOINCREMENT, never reused, also once old events are
    # pruned.  ``event_cursors``: per host, the last agent event index
    # taken in (written in the same transaction as those events, so each
    # agent event is taken exactly once).  ``event_marks``: what pruning
    # dropped last (pruned_index, pruned_at), to tell a resume from before
    # retention; per source too, as ``pruned_index/<source>``).  ``src``:
    # the event's retention source (hub.store.base.event_source: "hub", or
    # "agent:<host>"), each pruned apart.
    _EVENTS_SCHEMA = """
    CREATE TABLE IF NOT EXISTS fleet_events (
        idx INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        doc TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS fleet_events_at ON fleet_events(at);
    CREATE TABLE IF NOT EXISTS event_cursors (host TEXT PRIMARY KEY, agent_index INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS event_marks (name TEXT PRIMARY KEY, value REAL NOT NULL);
    """

    def _events_ready(self) -> None:
        if not getattr(self, "_events_schema_done", False):
            self.db.executescript(self._EVENTS_SCHEMA)
            columns = [r[1] for r in self.db.execute("PRAGMA table_info(fleet_events)").fetchall()]
            if "src" not in columns:  # a store written before retention went per source
                with self.write() as db:
                    db.execute("ALTER TABLE fleet_events ADD COLUMN src TEXT NOT NULL DEFAULT 'hub'")
                    db.execute("UPDATE fleet_events SET src = 'agent:' || json_extract(doc, '$.host')"
                               " WHERE json_extract(doc, '$.source') = 'agent'")
            self.db.execute("CREATE INDEX IF NOT EXISTS fleet_events_src ON fleet_events(src, idx)")
            self._events_schema_done = True

    def events_append(self, docs: list[dict], host: str | None = None,
                      agent_index: int | None = None) -> list[dict]:
        """Append fleet events in one transaction, each ``{at, ...}`` given
        the next fleet ``index``; with ``host`` and ``agent_index``, that
        host's event cursor becomes ``agent_index`` in the same transaction.

        Returns: the documents with their ``index``.
        Raises: StoreError (nothing was written)."""
        self._events_ready()
        out = []
        with self.write() as db:
            seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='fleet_events'").fetchone()
            index = seq[0] if seq else 0
            rows = []
            for doc in docs:
                index += 1
                out.append({**doc, "index": index})
                rows.append((index, float(doc["at"]), json.dumps(out[-1]), _event_source(doc)))
            db.executemany("INSERT INTO fleet_events (idx, at, doc, src) VALUES (?, ?, ?, ?)", rows)
            if host is not None and agent_index is not None:
                db.execute("INSERT INTO event_cursors (host, agent_index) VALUES (?, ?) ON CONFLICT(host)"
                           " DO UPDATE SET agent_index=excluded.agent_index", (host, agent_index))
        return out

    def events_after(self, index: int, limit: int) -> list[dict]:
        """Events with a fleet index above ``index``, oldest first, at most ``limit``."""
        self._events_ready()
        rows = self.db.execute("SELECT doc FROM fleet_events WHERE idx > ? ORDER BY idx LIMIT ?",
                               (index, limit)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def events_index_at(self, at: float) -> int:
        """The index just before the first kept event after ``at`` (Unix s):
        reading after it gives every event later than ``at`` even where
        ``at`` does not rise with the index; the newest index when none is
        later."""
        self._events_ready()
        row = self.db.execute("SELECT MIN(idx) FROM fleet_events WHERE at > ?", (at,)).fetchone()
        return row[0] - 1 if row and row[0] is not None else int(self.events_bounds()["last"])

    def events_bounds(self) -> dict:
        """{first (oldest kept index, or last + 1), last (newest index
        given, 0 before any), pruned_index, pruned_at (0 before any pruning)}."""
        self._events_ready()
        first = self.db.execute("SELECT MIN(idx) FROM fleet_events").fetchone()[0]
        seq = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name='fleet_events'").fetchone()
        last = seq[0] if seq else 0
        marks = dict(self.db.execute("SELECT name, value FROM event_marks").fetchall())
        return {"first": first if first is not None else last + 1, "last": last,
                "pruned_index": int(marks.get("pruned_index", 0)), "pruned_at": marks.get("pruned_at", 0.0)}

    def events_prune(self, max_count: int, max_age_s: float, now: float | None = None,
                     max_per_host: int | None = None, max_agent_events: int | None = None) -> int:
        """Drop, per retention source, the oldest events beyond its count
        (the hub's own: ``max_count``; each host's agent events:
        ``max_per_host``, default ``max_count``) and every event older than
        ``max_age_s``; returns how many went."""
        self._events_ready()
        now = time.time() if now is None else now
        per_host = max_count if max_per_host is None else max_per_host
        with self.write() as db:
            cuts: dict[str, tuple[int, int]] = {}  # src -> (its cut, the part of it that moves the fleet marks)
            counts = dict(db.execute("SELECT src, COUNT(*) FROM fleet_events GROUP BY src").fetchall())
            keeps = retention_keeps(counts, max_count, per_host, max_agent_events)
            for src in counts:
                row = db.execute("SELECT idx FROM fleet_events WHERE src=? ORDER BY idx DESC LIMIT 1 OFFSET ?",
                                 (src, keeps[src])).fetchone()
                old = db.execute("SELECT MAX(idx) FROM fleet_events WHERE src=? AND at < ?",
                                 (src, now - max_age_s)).fetchone()[0] or 0
                cut = max(row[0] if row else 0, old)
                if cut:
                    cuts[src] = (cut, cut if src == "hub" else old)  # a host's own count: not the fleet's marks
            gone = 0
            for src, (cut, fleet_cut) in cuts.items():
                marks = [(f"pruned_index/{src}", cut)]
                if fleet_cut:
                    at = db.execute("SELECT MAX(at) FROM fleet_events WHERE src=? AND idx <= ?",
                                    (src, fleet_cut)).fetchone()[0]
                    marks += [("pruned_index", fleet_cut), ("pruned_at", at or 0.0)]
                gone += db.execute("DELETE FROM fleet_events WHERE src=? AND idx <= ?", (src, cut)).rowcount
                for name, value in marks:
                    db.execute("INSERT INTO event_marks (name, value) VALUES (?, ?) ON CONFLICT(name)"
                               " DO UPDATE SET value=MAX(value, excluded.value)", (name, value))
        return gone

    def events_source_marks(self) -> dict[str, int]:
        """{retention source: the newest index its pruning dropped} (sources
        never pruned are absent)."""
        self._events_ready()
        rows = self.db.execute("SELECT name, value FROM event_marks WHERE name LIKE 'pruned_index/%'").fetchall()
        return {name.split("/", 1)[1]: int(value) for name, value in rows}

    def event_cursor(self, host: str) -> int:
        """The last agent event index taken in from ``host`` (0: none)."""
        self._events_ready()
        row = self.db.execute("SELECT agent_index FROM event_cursors WHERE host=?", (host,)).fetchone()
        return row[0] if row else 0

    def set_event_cursor(self, host: str, agent_index: int) -> None:
        """Set ``host``'s event cursor (0 when its agent's journal started over)."""
        self._events_ready()
        with self.write() as db:
            db.execute("INSERT INTO event_cursors (host, agent_index) VALUES (?, ?) ON CONFLICT(host)"
                       " DO UPDATE SET agent_index=excluded.agent_index", (host, agent_index))
    # ------------------------------------------------------------ end of the `events` section
