"""The fleet store in etcd 3.4, shared by several hubs (hub/store/base.py
is the interface; docs/SCALING.md the design).

It speaks etcd's v3 JSON gateway through ``etcd3gw``'s HTTP client: no
grpc, and each request runs in its calling greenlet over a kept-alive
connection on gevent's own sockets (a pool of them, one per request in
flight), so a hub's loop keeps serving while etcd answers, with no
hand-off to a thread and back per request (a third less of the hub's CPU
per request, bench/placement.py).  Every request has a timeout
(``timeout_s``); a connection refused, a timeout or an etcd that has no
leader becomes a typed StoreUnavailable at once, and for ``BREAKER_SECONDS``
after one every call fails the same way without waiting again (fast
failure while etcd is down; the first call after that tries again).

Keys, under ``prefix`` (default ``/dcfleet/``), values JSON:

  hosts/<host>               a host's row without its beats (CAS on mod revision)
  beats/<host>               {at, summary, capacity}: written in batches
                             (<= 128 puts a transaction) by the hub the host beats to
  keys/<host>, keyidx/<key>  the host's CURVE key binding, both ways
  containers/<name>          a container's row; a name claim is a transaction on
                             create_revision == 0
  resv/<host>                the host's reservation record {names: {name: memory_bytes}};
                             every claim, move, adopt and forget compares its mod
                             revision (compare-and-swap), so two hubs never over-commit
  inflight/<name>            the claiming hub's name, on that hub's lease, while the
                             row is "reserved": a row whose key is gone is orphaned
  abandoned/<name>/<host>    {at}
  routes/<route>/<container>/<port>   {created_at}
  registry/<image id>        {manifest, sizes, source}: the image registry's index
                             (layers stay on each hub's disk, see hub/registry.py)
  events/<index, 12 digits>  a fleet event (hub/events.py); evseq: the last index given
                             (compare-and-swap); evmarks: what pruning dropped last;
                             evcursors/<host>: each host's agent event cursor
  members/<hub>              {name, endpoint, since}, on the hub's lease
  leader                     the leading hub's name, on its lease (election:
                             create_revision == 0, lost when the lease expires)

Host liveness is heartbeat records, not leases: agents talk to a hub, never
to etcd, so a lease per host would be kept alive by whichever hub hears it
anyway, at one request per host per beat.  Records let the hub batch every
host's beats in a few transactions and let the leader judge with the same
rule (and code) as SQLite.

Watched, not read: ``keyidx/`` (the hosts' CURVE keys, which ZAP and every
call consult through ``agent_key_name``), ``hosts/`` and ``beats/`` (what
``hosts``, ``host_state`` and the leader's ``mark_unreachable`` read) are
kept in memory by one etcd watch each (PrefixIndex: listed once, then
watched from the next revision; resumed from the last revision after a
dropped stream, listed again after a compaction), with this hub's own
writes applied at once.

While etcd is unavailable, the reads that route calls (``host``,
``host_state``, ``container``, and ``routes``, the route table) answer from
the last rows this hub read or watched, and the key index admits the
hosts it knew, so calls to existing containers still reach their hosts,
known hosts keep beating and routers keep their table; every write, and
every other listing (``hosts`` too), fails with StoreUnavailable.

The store never fills: etcd runs with auto-compaction and an explicit
backend quota (tests/etcdkit.py, ops/fleet), and the leader compacts the
history itself every ``COMPACT_EVERY_SECONDS`` (keeping the last
``KEEP_REVISIONS``), in case the server's own setting is off.
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import random
import select
import socket
import threading
import time
import urllib.parse

import gevent
import gevent.event
import gevent.socket
import gevent.lock
import requests

from dcctl import errors
from hub.store.base import Chooser, Store, event_source, retention_keeps

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/dcfleet/"
DEFAULT_TIMEOUT_SECONDS = 2.0
DEFAULT_LEASE_SECONDS = 5
BREAKER_SECONDS = 1.0
MAX_TXN_OPS = 128  # etcd's default --max-txn-ops
CAS_ATTEMPTS = 200
HOSTS_READ_SECONDS = 0.5  # claims read the reservation records at most this often (this hub's own: at once)
COMPACT_EVERY_SECONDS = 300.0
KEEP_REVISIONS = 10000

_UNAVAILABLE_WORDS = ("no leader", "request timed out", "leader changed", "too many requests",
                      "not capable", "stopped")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def _prefix_end(prefix: str) -> str:
    """The range_end that makes a range over every key starting with ``prefix``."""
    raw = prefix.encode()
    return base64.b64encode(raw[:-1] + bytes([raw[-1] + 1])).decode()


def _revision(answer: dict) -> int:
    """The store revision an etcd answer was made at (a write's: the revision it made)."""
    return int(answer["header"]["revision"])


def _own_rows(rows: list[dict]) -> list[dict]:
    """Copies of host rows for a caller: each row and its labels and
    capacity maps its own, the summary shared (see Store.hosts)."""
    return [{**r, "labels": dict(r.get("labels") or {}), "capacity": dict(r.get("capacity") or {})} for r in rows]


IDLE_RECONNECT_SECONDS = 5.0  # a kept connection idle longer is replaced before the next request


class _Response:
    """What etcd3gw reads of a requests.Response."""

    def __init__(self, status: int, reason: str, body: bytes):
        self.status_code, self.reason, self._body = status, reason, body

    @property
    def text(self) -> str:
        return self._body.decode(errors="replace")

    def json(self):
        return json.loads(self._body)


class _KeptSession:
    """``requests.Session.post`` as etcd3gw calls it, over one kept-alive
    connection on a gevent socket (a session serves one request at a time:
    EtcdClient pools them): the same requests, errors (requests' Timeout
    and ConnectionError, which etcd3gw maps to its own) and answers, at a
    fraction of requests' cost per call.  Each request goes in one send
    (http.client sends its headers and body in two, which wakes etcd
    twice); ``http.client.HTTPResponse`` reads the answer.  A request is
    never sent twice; a connection etcd closed (a restart), or idle for
    IDLE_RECONNECT_SECONDS, is replaced before use, so a stale one is not
    the cause of a failure."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self._host_header = f"{host}:{port}".encode()
        self._sock = None  # a gevent socket, or None
        self._used = 0.0

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _dropped(self) -> bool:
        """True when etcd closed the kept connection (it restarted): with no
        answer pending, a readable socket means its end of stream.  poll(2),
        not select(2): a hub of 1,000 hosts holds 2,000 file descriptors,
        and select() refuses one past FD_SETSIZE (1024) with ValueError,
        which made every request open a new connection."""
        poller = select.poll()
        poller.register(self._sock.fileno(), select.POLLIN)
        try:
            return bool(poller.poll(0))
        except OSError:
            return True

    def post(self, url: str, json=None, data=None, timeout=None) -> _Response:
        body = data if data is not None else _json_dumps(json)
        if isinstance(body, str):
            body = body.encode()
        path = urllib.parse.urlsplit(url).path.encode()
        if self._sock is not None and (time.monotonic() - self._used > IDLE_RECONNECT_SECONDS
                                       or self._dropped()):
            self._close()
        try:
            if self._sock is None:
                self._sock = gevent.socket.create_connection((self.host, self.port), timeout)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                self._sock.settimeout(timeout)
            self._sock.sendall(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (path, self._host_header, len(body), body))
            answer = http.client.HTTPResponse(self._sock, method="POST")
            answer.begin()
            out = _Response(answer.status, answer.reason, answer.read())
            if answer.will_close:
                self._close()
            self._used = time.monotonic()
            return out
        except socket.timeout as exc:
            self._close()
            raise requests.exceptions.Timeout(str(exc)) from exc
        except (OSError, http.client.HTTPException) as exc:
            self._close()
            raise requests.exceptions.ConnectionError(str(exc)) from exc


def _json_dumps(value) -> str:
    return json.dumps(value)


class EtcdClient:
    """The few v3 gateway calls the store needs, typed at this boundary.

    Args:
        url: ``http://HOST:PORT`` of an etcd client endpoint.
        timeout_s: seconds each request may take.

    Raises (every call): StoreUnavailable, StoreError (etcd refused the
    request, e.g. "database space exceeded").
    """

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise errors.InvalidArgument(f"etcd endpoint {url!r} must be http://HOST:PORT")
        self.url = f"http://{parts.hostname}:{parts.port}"
        self.host, self.port, self.timeout_s = parts.hostname, parts.port, timeout_s
        self._local = threading.local()  # .idle: this thread's idle clients (sessions), see _post
        self._down_until = 0.0
        self.requests = 0  # requests sent (figures for bench and docs)

    #: idle clients kept per thread; more requests in flight at once open more connections
    IDLE_CLIENTS = 16

    def _take_client(self):
        """An idle etcd3gw client of this thread (each with its own kept
        connection), or a new one."""
        idle = getattr(self._local, "idle", None)
        if idle is None:
            idle = self._local.idle = []
        if idle:
            return idle.pop()
        import etcd3gw  # imported here: a SQLite hub never needs it
        return etcd3gw.Etcd3Client(self.host, self.port, timeout=self.timeout_s, api_path="/v3/",
                                   session=_KeptSession(self.host, self.port))

    def _give_back(self, client) -> None:
        idle = self._local.idle
        if len(idle) < self.IDLE_CLIENTS:
            idle.append(client)
        else:
            client.session._close()

    def check_answering(self) -> None:
        """Raises StoreUnavailable while the breaker is open (a request
        failed so within BREAKER_SECONDS), as every request would."""
        if time.monotonic() < self._down_until:
            raise errors.StoreUnavailable(f"etcd at {self.url} did not answer just now",
                                          hint="start etcd (or fix its endpoint); nothing was changed")

    def post(self, path: str, body: dict) -> dict:
        """POST ``body`` to /v3/``path``; returns the decoded answer."""
        self.check_answering()
        self.requests += 1
        try:
            return self._post(path, body)
        except errors.StoreUnavailable:
            self._down_until = time.monotonic() + BREAKER_SECONDS
            raise

    def _post(self, path: str, body: dict) -> dict:
        client = self._take_client()
        try:
            return self._request(client, path, body)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted mid-request (a kill, a gevent Timeout):
                client.session._close()  # its connection may hold half an answer
            raise
        finally:
            self._give_back(client)

    def _request(self, client, path: str, body: dict) -> dict:
        from etcd3gw import exceptions as ex
        try:
            return client.post(client.get_url(path), json=body)
        except ex.ConnectionTimeoutError as exc:  # sent, no answer: a write may still be applied
            raise errors.StoreUnavailable(
                f"etcd at {self.url} did not answer within {self.timeout_s:g} s",
                hint="a write may still be applied: a claim left \"reserved\" is decided by the leader's "
                     "journal once etcd answers") from exc
        except (ex.ConnectionFailedError, requests.RequestException) as exc:
            raise errors.StoreUnavailable(f"etcd at {self.url} is unreachable ({type(exc).__name__})",
                                          hint="start etcd (or fix its endpoint); nothing was changed") from exc
        except ex.Etcd3Exception as exc:
            text = str(exc.detail_text or exc)
            if any(w in text.lower() for w in _UNAVAILABLE_WORDS):
                raise errors.StoreUnavailable(f"etcd at {self.url} cannot serve: {text[:200]}") from exc
            hint = ("compact and defragment etcd, then disarm its alarm" if "space exceeded" in text
                    else None)
            raise errors.StoreError(f"etcd refused the request: {text[:200]}", hint=hint) from exc

    # -------------------------------------------------------------- kv
    def get(self, key: str) -> tuple[dict, int] | None:
        """(value, mod_revision) of ``key``, or None."""
        kvs = self.post("kv/range", {"key": _b64(key)}).get("kvs") or []
        if not kvs:
            return None
        return json.loads(_unb64(kvs[0].get("value"))), int(kvs[0]["mod_revision"])

    def range(self, prefix: str) -> list[tuple[str, dict, int]]:
        """[(key, value, mod_revision)] of every key under ``prefix``, by key."""
        out = self.post("kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix)})
        return [(_unb64(kv["key"]), json.loads(_unb64(kv.get("value"))), int(kv["mod_revision"]))
                for kv in out.get("kvs") or []]

    def ranges(self, *prefixes: str) -> list[list[tuple[str, dict, int]]]:
        """``range`` of each prefix (a prefix ending in "/"; any other
        string is one key), all read at one revision in one request."""
        ops = [{"request_range": {"key": _b64(p), **({"range_end": _prefix_end(p)} if p.endswith("/") else {})}}
               for p in prefixes]
        _, out = self.txn([], ops)
        return [[(_unb64(kv["key"]), json.loads(_unb64(kv.get("value"))), int(kv["mod_revision"]))
                 for kv in (r.get("response_range") or {}).get("kvs") or []] for r in out.get("responses") or []]

    def count(self, prefix: str) -> int:
        """How many keys are under ``prefix``."""
        out = self.post("kv/range", {"key": _b64(prefix), "range_end": _prefix_end(prefix), "count_only": True})
        return int(out.get("count") or 0)

    def txn(self, compare: list[dict], success: list[dict], failure: list[dict] = ()) -> tuple[bool, dict]:
        """One transaction; returns (succeeded, the answer)."""
        out = self.post("kv/txn", {"compare": compare, "success": success, "failure": list(failure)})
        return bool(out.get("succeeded")), out

    def revision(self) -> int:
        """The store's current revision."""
        return int(self.post("kv/range", {"key": _b64("\0"), "count_only": True})["header"]["revision"])

    @staticmethod
    def put(key: str, value, lease: int | None = None) -> dict:
        req = {"key": _b64(key), "value": _b64(json.dumps(value, sort_keys=True))}
        if lease:
            req["lease"] = str(lease)
        return {"request_put": req}

    @staticmethod
    def delete(key: str, prefix: bool = False) -> dict:
        req = {"key": _b64(key)}
        if prefix:
            req["range_end"] = _prefix_end(key)
        return {"request_delete_range": req}

    @staticmethod
    def read(key: str) -> dict:
        return {"request_range": {"key": _b64(key)}}

    @staticmethod
    def at(key: str, mod_revision: int) -> dict:
        """Compare: ``key`` is at ``mod_revision`` (0: ``key`` is absent)."""
        if not mod_revision:
            return {"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
        return {"key": _b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(mod_revision)}


WATCH_RETRY_SECONDS = (0.1, 2.0)  # a dropped watch connects again after this, doubling up to the second


class PrefixIndex:
    """Every key under ``prefix`` with its value and mod revision, in
    memory, kept up to date by one etcd watch (``POST /v3/watch``, a
    streamed HTTP answer of one JSON message per line), so that readers
    never ask etcd: the CURVE key index ZAP consults on every handshake
    and call, and the hosts and beats a hub reads for each placement and
    heartbeat (EtcdStore).

    The first listing is made at construction (a range read at one
    revision), then a greenlet watches from the revision after it.  A
    dropped stream (etcd restarted, a connection lost) is watched again
    from the revision after the last one applied, so no change is missed;
    when etcd has compacted that revision away (its answer names a
    compact_revision), the index lists the prefix again and watches from
    there.  An etcd found behind the index's revision (a new one, its data
    lost) is listed again from scratch.  While etcd is away the index keeps
    what it knew last.

    This hub's own writes are applied at once with ``apply`` (their
    revision comes with the write's answer), so they are visible before
    the watch brings them back; each key keeps its mod revision and a
    deletion its revision until the watch has passed it, so an older event
    never undoes a newer change, whichever comes first.

    Args:
        etcd: the store's client (its url and timeout).
        prefix: the key prefix watched, ending in "/".

    Attributes:
        revision: every change up to this revision is applied.
        live: True while the watch stream is open (False: changes of
            other hubs may be missing until it is open again).
        changes: a count bumped at every applied change.

    Raises (at construction): StoreUnavailable, StoreError.
    """

    def __init__(self, etcd: "EtcdClient", prefix: str):
        self.etcd, self.prefix = etcd, prefix
        self._items: dict[str, tuple[object, int]] = {}  # name (key without prefix) -> (value, mod revision)
        self._gone: dict[str, int] = {}  # name -> revision of its deletion, until the watch passes it
        self.revision = 0
        self.live = False
        self.changes = 0
        self.lists = 0  # full listings made (the first, and one after each compaction)
        self._sock = None
        self._task: gevent.Greenlet | None = None
        self._list()
        self.start()

    def start(self) -> None:
        """Watch (again, after close()) from the revision after ``revision``."""
        if self._task is None:
            self._task = gevent.spawn(self._run)

    def get(self, name: str) -> tuple[object, int] | None:
        """(value, mod revision) of key PREFIX+``name``, or None."""
        return self._items.get(name)

    def items(self) -> dict[str, tuple[object, int]]:
        """{name: (value, mod revision)} of every key (a copy)."""
        return dict(self._items)

    def apply(self, name: str, value, revision: int) -> None:
        """Take a change of key PREFIX+``name`` at ``revision`` (``value``
        None: deleted), unless the index already holds a later one."""
        held = self._items.get(name)
        if (held is not None and held[1] >= revision) or self._gone.get(name, 0) >= revision:
            return
        if value is None:
            self._items.pop(name, None)
            self._gone[name] = revision
        else:
            self._items[name] = (value, revision)
            self._gone.pop(name, None)
        self.changes += 1

    def close(self) -> None:
        """Stop watching (what the index holds stays; start() resumes)."""
        if self._task is not None:
            self._task.kill()
            self._task = None
        self.live = False
        self._close_sock()

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _list(self) -> None:
        """Read every key under the prefix at one revision, keeping the
        changes this index holds of later revisions."""
        out = self.etcd.post("kv/range", {"key": _b64(self.prefix), "range_end": _prefix_end(self.prefix)})
        rev = int(out["header"]["revision"])
        items = {_unb64(kv["key"])[len(self.prefix):]: (json.loads(_unb64(kv.get("value"))), int(kv["mod_revision"]))
                 for kv in out.get("kvs") or []}
        for name, held in self._items.items():
            if held[1] > rev:
                items[name] = held
        self._gone = {n: r for n, r in self._gone.items() if r > rev}
        for name in self._gone:
            items.pop(name, None)
        self._items, self.revision = items, max(self.revision, rev)
        self.lists += 1
        self.changes += 1

    def _run(self) -> None:
        delay = WATCH_RETRY_SECONDS[0]
        relist = False
        while True:
            try:
                if relist:
                    self._list()
                    relist = False
                relist = self._watch()
                delay = WATCH_RETRY_SECONDS[0]
            except (OSError, http.client.HTTPException, ValueError, KeyError, errors.StoreError) as exc:
                if self.live:
                    log.warning("etcd: the watch of %s dropped (%s); watching again from revision %d",
                                self.prefix, exc, self.revision + 1)
            except Exception:  # never leave the index unwatched for good
                log.exception("etcd: the watch of %s failed; watching again", self.prefix)
            self.live = False
            self._close_sock()
            if not relist:
                gevent.sleep(delay)
                delay = min(WATCH_RETRY_SECONDS[1], delay * 2)

    def _watch(self) -> bool:
        """Watch from the revision after ``revision`` until the stream ends
        (raises) or etcd cancels it; True when it was cancelled because
        that revision is compacted (list again)."""
        self._sock = sock = gevent.socket.create_connection((self.etcd.host, self.etcd.port), self.etcd.timeout_s)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        body = json.dumps({"create_request": {"key": _b64(self.prefix), "range_end": _prefix_end(self.prefix),
                                              "start_revision": str(self.revision + 1),
                                              "progress_notify": True}}).encode()
        sock.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (self.etcd.host.encode(), self.etcd.port, len(body), body))
        answer = http.client.HTTPResponse(sock, method="POST")
        answer.begin()
        if answer.status != 200:
            raise http.client.HTTPException(f"etcd answered the watch with {answer.status} {answer.reason}")
        sock.settimeout(None)  # the stream waits for changes as long as they take; a closed one ends it
        while True:
            line = answer.readline()
            if not line:
                raise ConnectionError("etcd closed the watch stream")
            msg = json.loads(line)
            if "error" in msg:
                raise ConnectionError(f"etcd ended the watch: {str(msg['error'])[:200]}")
            result = msg.get("result") or {}
            if int(result.get("compact_revision") or 0) > 0:
                log.warning("etcd: revision %d of %s is compacted (now %s): listing it again",
                            self.revision + 1, self.prefix, result["compact_revision"])
                return True
            if result.get("canceled"):
                raise ConnectionError(f"etcd cancelled the watch: {result.get('cancel_reason', '')}")
            if result.get("created"):
                if int(result["header"]["revision"]) < self.revision:  # a new, empty etcd (its data lost)
                    log.warning("etcd: %s is at revision %s, behind this index (%d): listing %s again",
                                self.etcd.url, result["header"]["revision"], self.revision, self.prefix)
                    self._items, self._gone, self.revision = {}, {}, 0
                    return True
                self.live = True
                continue
            events = result.get("events") or []
            for ev in events:
                kv = ev["kv"]
                name = _unb64(kv["key"])[len(self.prefix):]
                value = None if ev.get("type") == "DELETE" else json.loads(_unb64(kv.get("value")))
                self.apply(name, value, int(kv["mod_revision"]))
            # every change up to the last event's revision (a progress notice: the header's) is in
            top = int(events[-1]["kv"]["mod_revision"]) if events else int(result["header"]["revision"])
            self.revision = max(self.revision, top)
            if self._gone:
                self._gone = {n: r for n, r in self._gone.items() if r > self.revision}


#: claims of one group commit (EtcdStore.claim): with its row, in-flight key,
#: two compares each and one record per host, within etcd's 128 operations
CLAIM_GROUP_MAX = 32
#: the rows one group commit may carry, bytes of JSON: well under etcd's
#: 1.5 MiB per request (--max-request-bytes), so big specs (a create's
#: environment may reach MiBs) never make a group's request too large
CLAIM_GROUP_BYTES = 512 * 1024
_ALONE = object()  # a grouped claim's outcome: run it alone


class _Claim:
    """One claim waiting in a group (EtcdStore.claim): its arguments, and
    ``result`` (its row, its error, or _ALONE)."""

    __slots__ = ("name", "image", "memory_bytes", "spec", "choose", "result", "cancelled")

    def __init__(self, name: str, image: str, memory_bytes: int, spec: dict, choose: Chooser):
        self.name, self.image, self.memory_bytes, self.spec, self.choose = name, image, memory_bytes, spec, choose
        self.result = gevent.event.AsyncResult()
        self.cancelled = False


class EtcdStore(Store):
    """The fleet store in etcd (see the module doc).

    Args:
        url: ``http://HOST:PORT`` of etcd.
        prefix: the key prefix of this fleet (hub groups use one each).
        lease_s: seconds of the hubs' leases: a hub killed loses its
            membership, its leadership and its in-flight claims within
            that time.
        timeout_s: seconds each etcd request may take.

    Raises: InvalidArgument (a bad url or prefix), StoreUnavailable (etcd
    does not answer at open).
    """

    kind = "etcd"

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, *, lease_s: int = DEFAULT_LEASE_SECONDS,
                 timeout_s: float = DEFAULT_TIMEOUT_SECONDS):
        if not prefix.startswith("/") or not prefix.endswith("/"):
            raise errors.InvalidArgument(f"etcd prefix {prefix!r} must start and end with '/'")
        self.etcd = EtcdClient(url, timeout_s)
        self.prefix = prefix
        self.lease_s = max(2, int(lease_s))
        self.hub_name: str | None = None
        self._member: dict | None = None
        self._lease: int | None = None
        self._renewed = 0.0  # monotonic time of the last renewal of the lease
        self._leading = False
        self._task: gevent.Greenlet | None = None
        self._compacted = time.monotonic()
        #: the last host and container rows read: routing reads while etcd is away
        self._seen_hosts: dict[str, dict] = {}
        self._seen_containers: dict[str, tuple[dict, int]] = {}  # name -> (row, mod revision) last read
        self._seen_routes: list[dict] | None = None
        #: (revision, {key: (record, mod rev)}, {host: (beat, mod rev)}) of the last read: see _read_hosts
        self._hosts_inc: tuple[int, dict, dict] | None = None
        self._resv_cache: dict[str, tuple[dict, int]] = {}  # reservation records last seen (claim)
        self._figures_memo: dict[str, tuple[dict, tuple[int, int]]] = {}  # host -> (names, their sums)
        self._resv_read_at: float | None = None
        self._claiming: dict[str, dict[str, int]] = {}  # host -> {name: memory_bytes} claims in flight here
        self._claims_in_flight = 0  # claim transactions of this hub under way (see claim)
        self._claims_idle = gevent.event.Event()
        self._claims_idle.set()
        self._group: list[_Claim] | None = None  # the claims waiting to go as one transaction
        self._alone_lock = gevent.lock.Semaphore()  # claims a group sent back run alone, one at a time
        self._beats_written: dict[str, float] = {}  # host -> the last beat this hub wrote (record_beats)
        self.etcd.revision()  # StoreUnavailable now rather than at the first call
        #: watched in memory (PrefixIndex): the CURVE key index (ZAP), the host records and their beats
        self._keyidx = PrefixIndex(self.etcd, self._k("keyidx", ""))
        self._hostidx = PrefixIndex(self.etcd, self._k("hosts", ""))
        self._beatidx = PrefixIndex(self.etcd, self._k("beats", ""))
        #: and the container rows, read only while etcd does not answer: so
        #: that calls to existing containers still reach their hosts through
        #: any hub, one started just before the outage or one that never
        #: read that container (reads otherwise go to etcd: a row's state
        #: decides placement and destroy steps, and must not lag)
        self._ctridx = PrefixIndex(self.etcd, self._k("containers", ""))
        self._routeidx = PrefixIndex(self.etcd, self._k("routes", ""))  # the same, for routes (container_inspect)
        self._rows_memo: dict[str, tuple[tuple[int, int], dict]] = {}  # host -> ((record rev, beat rev), row)

    def _k(self, *parts: str) -> str:
        return self.prefix + "/".join(parts)

    def close(self) -> None:
        for index in (self._keyidx, self._hostidx, self._beatidx, self._ctridx, self._routeidx):
            index.close()
        if self._task is not None:
            self._task.kill()
            self._task = None
        if self._lease:
            try:
                self.etcd.post("lease/revoke", {"ID": str(self._lease)})  # leadership moves at once
            except errors.StoreError:
                pass
        self._lease, self._leading = None, False

    # ------------------------------------------------------------ hubs
    def join(self, name: str, endpoint: str) -> None:
        """See Store.join; keeps the lease alive and campaigns every
        lease_s/4 seconds in a greenlet until close().

        The member key ``members/<name>`` is taken only when absent (a
        transaction on create revision 0): a name another running hub
        holds (its lease renewed) is refused, so two hubs never share a
        name (before, the second took the key over and removed it when it
        left, and the first vanished from ``members``).  A hub started again
        right after a kill finds its old key until that lease expires, so
        join waits up to lease_s + 1 seconds for it to go.

        Raises: Conflict (the name is still held after that wait)."""
        self.hub_name = name
        self._member = {"name": name, "endpoint": endpoint, "since": time.time()}
        deadline = time.monotonic() + self.lease_s + 1
        while True:
            try:
                self._renew()
                break
            except errors.Conflict:
                if time.monotonic() > deadline:
                    raise
                gevent.sleep(0.25)
            except errors.StoreError as exc:
                log.warning("etcd: cannot join yet (%s); trying again", exc)
                break
        if self._task is None:
            self._task = gevent.spawn(self._keep)

    def _keep(self) -> None:
        while True:
            gevent.sleep(self.lease_s / 4)
            try:
                self._renew()
                if self._leading and time.monotonic() - self._compacted > COMPACT_EVERY_SECONDS:
                    self.compact()
            except errors.StoreError as exc:
                log.warning("etcd: lease renewal failed (%s)", exc)

    def _renew(self) -> None:
        """Keep (or get) this hub's lease and member key; take the
        leadership when nobody holds it."""
        if self._lease is not None:
            out = self.etcd.post("lease/keepalive", {"ID": str(self._lease)})
            if int((out.get("result") or {}).get("TTL") or 0) <= 0:
                log.warning("etcd: this hub's lease expired: joining again")
                self._lease, self._leading = None, False
        member = self._k("members", self.hub_name)
        if self._lease is None:
            lease = int(self.etcd.post("lease/grant", {"TTL": str(self.lease_s)})["ID"])
            ok, out = self.etcd.txn([self.etcd.at(member, 0)], [self.etcd.put(member, self._member, lease)],
                                    [self.etcd.read(member)])
            if not ok:
                kvs = out["responses"][0]["response_range"].get("kvs") or []
                held = json.loads(_unb64(kvs[0].get("value"))) if kvs else {}
                try:
                    self.etcd.post("lease/revoke", {"ID": str(lease)})
                except errors.StoreError:
                    pass  # it expires by itself
                raise errors.Conflict(
                    f"hub name {self.hub_name!r} is held by a running hub (endpoint "
                    f"{held.get('endpoint', '?')}, since {held.get('since', '?')})",
                    hint="give this hub another --hub-name, or stop the other one")
            self._lease = lease  # the key goes with the lease only: no other hub can take it meanwhile
        self._renewed = time.monotonic()
        key = self._k("leader")
        ok, out = self.etcd.txn([self.etcd.at(key, 0)], [self.etcd.put(key, self.hub_name, self._lease)],
                                [self.etcd.read(key)])
        if ok:
            log.info("etcd: hub %s leads", self.hub_name)
            self._leading = True
            return
        kvs = out["responses"][0]["response_range"].get("kvs") or []
        self._leading = bool(kvs) and int(kvs[0].get("lease") or 0) == self._lease

    def is_leader(self) -> bool:
        # a lease not renewed for a whole TTL may have expired: never act as leader on it
        return self._leading and time.monotonic() - self._renewed < self.lease_s

    def leader(self) -> str | None:
        got = self.etcd.get(self._k("leader"))
        return got[0] if got else None

    def members(self) -> list[dict]:
        return sorted((v for _, v, _ in self.etcd.range(self._k("members", ""))), key=lambda m: m["name"])

    def orphaned_reservations(self) -> list[str]:
        inflight = {k.rsplit("/", 1)[1] for k, _, _ in self.etcd.range(self._k("inflight", ""))}
        return [r["name"] for r in self.containers() if r["state"] == "reserved" and r["name"] not in inflight]

    def compact(self) -> int:
        """Compact etcd's history to KEEP_REVISIONS back; returns the
        revision compacted to (0: nothing to do)."""
        self._compacted = time.monotonic()
        rev = self.etcd.revision() - KEEP_REVISIONS
        if rev <= 0:
            return 0
        try:
            self.etcd.post("kv/compaction", {"revision": str(rev)})
        except errors.StoreError as exc:
            if "compacted" not in str(exc):
                raise
        return rev

    def _cas(self, fn):
        """Run ``fn()`` until it returns something other than None (its
        transaction's compares held), with a short random pause between
        attempts.  Raises: StoreUnavailable after CAS_ATTEMPTS lost races."""
        for attempt in range(CAS_ATTEMPTS):
            out = fn()
            if out is not None:
                return out
            gevent.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))
        raise errors.StoreUnavailable("the fleet store is too busy: a write lost every race", hint="try again")

    # ------------------------------------------------------------ host keys
    def bind_key(self, name: str, key: str) -> dict:
        kname, kkey = self._k("keys", name), self._k("keyidx", key)
        while True:
            mine, theirs = self.etcd.get(kname), self.etcd.get(kkey)
            if mine is not None and mine[0]["key"] != key:
                raise errors.Conflict(f"host {name!r} is bound to another key",
                                      hint="host_remove it first to give it a new key")
            if theirs is not None and theirs[0] != name:
                raise errors.Conflict(f"this key is bound to host {theirs[0]!r}: a key is one host",
                                      hint="give each host its own key pair")
            if mine is not None and theirs is not None:
                return mine[0]
            row = {"name": name, "key": key, "added_at": time.time()}
            ok, out = self.etcd.txn([self.etcd.at(kname, 0), self.etcd.at(kkey, 0)],
                                    [self.etcd.put(kname, row), self.etcd.put(kkey, name)])
            if ok:
                self._keyidx.apply(key, name, _revision(out))  # admitted here at once, elsewhere by the watch
                return row

    def binding(self, name: str) -> dict | None:
        got = self.etcd.get(self._k("keys", name))
        return got[0] if got else None

    def name_of_key(self, key: str) -> str | None:
        got = self.etcd.get(self._k("keyidx", key))
        return got[0] if got else None

    def agent_key_name(self, key: str) -> str | None:
        """The host name bound to CURVE public ``key`` (Z85), from this
        hub's watched index of ``keyidx/`` (no etcd request: ZAP asks it at
        every handshake and every call checks it).  A binding made or
        removed by any hub shows here within the watch's delay (a few ms;
        this hub's own at once); while etcd is away, the bindings known
        last answer."""
        got = self._keyidx.get(key)
        return got[0] if got is not None else None

    # ------------------------------------------------------------ hosts
    def _host_row(self, rec: dict, beat: dict | None) -> dict:
        row = dict(rec)
        if beat is not None:
            row["summary"] = json.loads(beat["summary"]) if isinstance(beat.get("summary"), str) else beat["summary"]
            if beat.get("capacity") is not None:
                row["capacity"] = beat["capacity"]
            row["last_heartbeat"] = max(row["last_heartbeat"], beat["at"])
        return row

    def upsert_host(self, name: str, endpoint: str, address: str, labels: dict, capacity: dict,
                    key: str = "") -> dict:
        hkey = self._k("hosts", name)

        def once():
            got, bound = self.etcd.get(hkey), self.binding(name)
            row = got[0] if got else None
            if (bound is not None and bound["key"] != key) or (row is not None and row["key"] and row["key"] != key):
                raise errors.Unauthorized(f"host name {name!r} belongs to another key",
                                          hint="a host's identity is its key; remove the old host first")
            if key and bound is None:
                other = self.name_of_key(key)
                if other is not None:
                    raise errors.Unauthorized(f"this key is {other}'s: it may register only that host name",
                                              hint="a host's key is one host; give each host its own key pair")
                raise errors.Unauthorized(f"host name {name!r} is not bound to this key",
                                          hint=f"an operator adds the host first: dcctl host_add {name} PUBLIC_KEY")
            now = time.time()
            new = {"name": name, "endpoint": endpoint, "address": address, "key": key, "labels": labels,
                   "capacity": capacity, "summary": row["summary"] if row else {}, "state": "alive",
                   "registered_at": now, "last_heartbeat": now}
            ok, out = self.etcd.txn([self.etcd.at(hkey, got[1] if got else 0)],
                                    [self.etcd.put(hkey, new), self.etcd.delete(self._k("beats", name))])
            if not ok:
                return None
            self._hostidx.apply(name, new, _revision(out))
            self._beatidx.apply(name, None, _revision(out))
            return {**new, "previous_state": row["state"] if row else None}

        return self._cas(once)

    def heartbeat(self, name: str, summary: dict, key: str = "", at: float | None = None) -> str | None:
        hkey = self._k("hosts", name)
        at = time.time() if at is None else at

        def once():
            got = self.etcd.get(hkey)
            if got is None:
                return (None,)
            row, rev = got
            if row["key"] and row["key"] != key:
                raise errors.Unauthorized(f"host {name!r} belongs to another key")
            beat = {"at": at, "summary": summary, "capacity": summary.get("capacity")}
            ops = [self.etcd.put(self._k("beats", name), beat)]
            back = {**row, "state": "alive", "last_heartbeat": max(row["last_heartbeat"], at)}
            if row["state"] != "alive":
                ops.append(self.etcd.put(hkey, back))
            ok, out = self.etcd.txn([self.etcd.at(hkey, rev)], ops)
            if not ok:
                return None
            self._beatidx.apply(name, beat, _revision(out))
            if row["state"] != "alive":
                self._hostidx.apply(name, back, _revision(out))
            return (row["state"],)

        return self._cas(once)[0]

    def host_state(self, name: str, key: str = "") -> str | None:
        """See Store.host_state: every heartbeat asks it, so it answers from
        the watched host records (no etcd request; while etcd is away, the
        records known last).  A name the index lacks while its watch is
        down is asked of etcd."""
        got = self._hostidx.get(name)
        if got is None and not self._hostidx.live:
            try:
                got = self.etcd.get(self._k("hosts", name))
            except errors.StoreUnavailable:
                if name not in self._seen_hosts:
                    raise
                got = (self._seen_hosts[name], 0)
        if got is None:
            return None
        if got[0]["key"] and got[0]["key"] != key:
            raise errors.Unauthorized(f"host {name!r} belongs to another key")
        return got[0]["state"]

    def record_beats(self, beats: dict[str, tuple[float, str, str | None]]) -> None:
        """See Store.record_beats: puts of beats/<host>, MAX_TXN_OPS a
        transaction, no read: the hub takes beats only from hosts it found
        registered (Heartbeats.beat), and a host beats to one hub at a time,
        so this hub's own last write per host keeps each one from going
        back in time (a beat of a host removed meanwhile is dropped by the
        next registration or removal, and hosts() ignores it)."""
        ops, written = [], {}
        for name, (at, summary, capacity) in sorted(beats.items()):
            if at <= self._beats_written.get(name, 0.0):
                continue
            beat = {"at": at, "summary": json.loads(summary),
                    "capacity": json.loads(capacity) if capacity is not None else None}
            ops.append((name, beat, self.etcd.put(self._k("beats", name), beat)))
            written[name] = at
        for i in range(0, len(ops), MAX_TXN_OPS):
            part = ops[i:i + MAX_TXN_OPS]
            _, out = self.etcd.txn([], [op for _, _, op in part])
            for name, beat, _ in part:
                self._beatidx.apply(name, beat, _revision(out))
        self._beats_written.update(written)

    def mark_unreachable(self, deadline: float, fresh: set[str] | frozenset = frozenset()) -> list[str]:
        """See Store.mark_unreachable: judged on the watched records and
        beats (no read of them all at each pass); each judgement is a
        transaction that compares the record's and the beat's mod
        revisions, so one the index had not seen yet is judged next round."""
        if self._hostidx.live and self._beatidx.live:
            beats, records = self._beatidx.items(), self._hostidx.items()
        else:  # a watch is down (etcd restarting?): read them
            beats = {k.rsplit("/", 1)[1]: (v, rev) for k, v, rev in self.etcd.range(self._k("beats", ""))}
            records = {row["name"]: (row, rev) for _, row, rev in self.etcd.range(self._k("hosts", ""))}
        out = []
        for name, (row, rev) in sorted(records.items()):
            beat, brev = beats.get(name, (None, 0))
            last = max(row["last_heartbeat"], beat["at"] if beat else 0.0)
            if row["state"] != "alive" or last >= deadline or name in fresh:
                continue
            key, lost = self._k("hosts", name), {**row, "state": "unreachable"}
            ok, answer = self.etcd.txn([self.etcd.at(key, rev), self.etcd.at(self._k("beats", name), brev)],
                                       [self.etcd.put(key, lost)])
            if ok:  # else it changed meanwhile (a beat, a registration): judged next round
                self._hostidx.apply(name, lost, _revision(answer))
                out.append(name)
        return out

    def host(self, name: str) -> dict:
        """See Store.host: from the watched records and beats while their
        watches are open (every forwarded call asks it), else (or for a
        name they lack) read from etcd."""
        if self._hostidx.live and self._beatidx.live:
            row = self._watched_row(name)
            if row is not None:
                self._seen_hosts[name] = row
                return dict(row)
        try:
            got = self.etcd.get(self._k("hosts", name))
            beat = self.etcd.get(self._k("beats", name)) if got is not None else None
        except errors.StoreUnavailable:
            # what the watches last knew (a hub started just before the
            # outage has read no host yet), else what this hub last read
            row = self._watched_row(name) or self._seen_hosts.get(name)
            if row is not None:
                return dict(row)
            raise
        if got is None:
            self._seen_hosts.pop(name, None)
            raise errors.NoSuchHost(f"no host {name!r} in the fleet")
        row = self._seen_hosts[name] = self._host_row(got[0], beat[0] if beat else None)
        return dict(row)

    def hosts(self) -> list[dict]:
        """See Store.hosts: from the watched host records and beats (no
        etcd request; this hub's own changes at once, other hubs' within
        the watch's delay).  While etcd does not answer (the request
        breaker is open, or a watch is down and a direct read fails), it
        raises StoreUnavailable, as every listing does.  Rows are rebuilt
        only for hosts whose record or beat changed."""
        self.etcd.check_answering()
        if self._hostidx.live and self._beatidx.live:
            records = self._hostidx.items()
            beats = self._beatidx.items()
        else:  # a watch is down (etcd restarting?): read them, or fail as a listing does
            hosts, beats = self._read_hosts()
            records = {v["name"]: (v, rev) for v, rev in hosts.values()}
        memo = self._rows_memo
        rows = [self._memo_row(name, rec, rev, *beats.get(name, (None, 0)))
                for name, (rec, rev) in sorted(records.items())]
        if len(memo) > len(records):
            for name in set(memo) - set(records):
                del memo[name]
        self._seen_hosts = {r["name"]: r for r in rows}
        return _own_rows(rows)

    def _memo_row(self, name: str, rec: dict, rev: int, beat: dict | None, brev: int) -> dict:
        """The host row of record ``rec`` (at ``rev``) and ``beat`` (at
        ``brev``), built once per pair of revisions (shared: callers copy)."""
        got = self._rows_memo.get(name)
        if got is None or got[0] != (rev, brev):
            got = self._rows_memo[name] = ((rev, brev), self._host_row(rec, beat))
        return got[1]

    def _watched_row(self, name: str) -> dict | None:
        """Host ``name``'s row from the watched indexes, or None."""
        got = self._hostidx.get(name)
        if got is None:
            return None
        beat = self._beatidx.get(name)
        return self._memo_row(name, got[0], got[1], *(beat if beat is not None else (None, 0)))

    def _read_hosts(self) -> tuple[dict[str, tuple[dict, int]], dict[str, tuple[dict, int]]]:
        """({key: (host record, mod revision)}, {host: (beat, mod revision)}),
        all at one revision.  The first read takes every value; later ones
        take the host keys with their mod revisions (no values) and only the
        beats changed since the last read's revision (min_mod_revision),
        in one transaction, and keep the rest from the last read
        (bench/placement.py --store etcd measures the bytes).  A beat goes
        only with its host's record (upsert_host, remove_host), so when any
        host record changed, came or went, everything is read again."""
        last = self._hosts_inc
        hp, bp = self._k("hosts", ""), self._k("beats", "")

        def rng(prefix: str, **extra) -> dict:
            return {"request_range": {"key": _b64(prefix), "range_end": _prefix_end(prefix), **extra}}

        def kvs(answer: dict) -> list[list[dict]]:
            return [(r.get("response_range") or {}).get("kvs") or [] for r in answer.get("responses") or []]

        def values(found: list[dict]) -> dict[str, tuple[dict, int]]:
            return {_unb64(kv["key"]): (json.loads(_unb64(kv.get("value"))), int(kv["mod_revision"]))
                    for kv in found}

        if last is None:
            _, out = self.etcd.txn([], [rng(hp), rng(bp)])
            hosts, beats = kvs(out)
            hmap = values(hosts)
            bmap = {k.rsplit("/", 1)[1]: v for k, v in values(beats).items()}
            self._hosts_inc = (int(out["header"]["revision"]), hmap, bmap)
            return hmap, bmap
        rev, hold, bold = last

        _, out = self.etcd.txn([], [rng(hp, keys_only=True), rng(hp, min_mod_revision=str(rev + 1)),
                                    rng(bp, min_mod_revision=str(rev + 1))])
        hkeys, hnew, bnew = kvs(out)
        now = {_unb64(kv["key"]): int(kv["mod_revision"]) for kv in hkeys}
        if hnew or now != {k: r for k, (_, r) in hold.items()}:
            self._hosts_inc = None  # a host registered, changed or left (a beat may be gone with it): read all
            return self._read_hosts()
        bmap = {**bold, **{k.rsplit("/", 1)[1]: v for k, v in values(bnew).items()}}
        self._hosts_inc = (int(out["header"]["revision"]), hold, bmap)
        return hold, bmap

    def remove_host(self, name: str) -> None:
        """See Store.remove_host: its key binding goes in the same
        transaction as its record, so every hub's watched key index refuses
        its key within the watch's delay (this hub's at once)."""
        binding = self.binding(name)
        ops = [self.etcd.delete(self._k(p, name)) for p in ("hosts", "beats", "keys", "resv")]
        if binding is not None:
            ops.append(self.etcd.delete(self._k("keyidx", binding["key"])))
        ops += [self.etcd.delete(self._k("abandoned", r["name"], name)) for r in self.abandoned(name)]
        for i in range(0, len(ops), MAX_TXN_OPS):
            _, out = self.etcd.txn([], ops[i:i + MAX_TXN_OPS])
            if i == 0:
                rev = _revision(out)
                self._hostidx.apply(name, None, rev)
                self._beatidx.apply(name, None, rev)
                if binding is not None:
                    self._keyidx.apply(binding["key"], None, rev)

    # ------------------------------------------------------------ containers
    def _row(self, name: str) -> tuple[dict, int] | None:
        return self.etcd.get(self._k("containers", name))

    def container(self, name: str) -> dict:
        """See Store.container; while etcd does not answer, the newer of the
        row this hub read last and the one the watched index last knew
        (StoreUnavailable if neither knows it)."""
        try:
            got = self._row(name)
        except errors.StoreUnavailable:
            known = [k for k in (self._seen_containers.get(name), self._ctridx.get(name)) if k is not None]
            if known:
                return dict(max(known, key=lambda k: k[1])[0])  # (row, mod revision): the newer
            raise
        if got is None:
            self._seen_containers.pop(name, None)
            raise errors.NoSuchContainer(f"no container {name!r} in the fleet")
        self._seen_containers[name] = got
        return dict(got[0])

    def containers(self, host: str | None = None) -> list[dict]:
        """See Store.containers: always read from etcd (StoreUnavailable
        while it does not answer): the healer and the journal decide on
        these rows, and must not decide on what a watch last knew."""
        found = self.etcd.range(self._k("containers", ""))
        rows = [v for _, v, _ in found]
        if host is None:
            self._seen_containers = {v["name"]: (v, rev) for _, v, rev in found}
            return rows
        return [r for r in rows if r["host"] == host]

    def _reservations(self) -> dict[str, tuple[dict, int]]:
        """{host: (its reservation record's names {name: memory_bytes}, mod revision)}."""
        return {k.rsplit("/", 1)[1]: (v["names"], rev) for k, v, rev in self.etcd.range(self._k("resv", ""))}

    def _figures(self, resv: dict[str, tuple[dict, int]]) -> dict[str, tuple[int, int]]:
        """{host: (memory_bytes, count)} of reservation records: each record's
        sum is kept with the names map it was taken of (maps are replaced,
        never changed in place), so a decision sums only the records that
        changed since the last one."""
        memo, out = self._figures_memo, {}
        for h, (names, _) in resv.items():
            got = memo.get(h)
            if got is None or got[0] is not names:
                got = memo[h] = (names, (sum(names.values()), len(names)))
            out[h] = got[1]
        return out

    def reserved_memory(self, db=None) -> dict[str, tuple[int, int]]:
        return self._figures(self._reservations())

    def _resv_ops(self, resv: dict, host: str, add: dict | None = None, drop: str | None = None):
        """(compare, put) of the reservation record of ``host`` with
        ``add`` {name: memory_bytes} added and ``drop`` taken out."""
        names, rev = resv.get(host, ({}, 0))
        names = dict(names)
        if drop is not None:
            names.pop(drop, None)
        names.update(add or {})
        key = self._k("resv", host)
        self._resv_read_at = None  # this hub changes a record: claims read them all again
        return self.etcd.at(key, rev), self.etcd.put(key, {"names": names})

    def _claim_figures(self) -> dict[str, tuple[dict, int]]:
        """The reservation records a claim decides on: read at most every
        HOSTS_READ_SECONDS (a stale one only costs a lost compare, then a
        fresh read of that record), with this hub's claims in flight added."""
        if self._resv_read_at is None or time.monotonic() - self._resv_read_at >= HOSTS_READ_SECONDS:
            self._resv_cache = self._reservations()
            self._resv_read_at = time.monotonic()
        resv = dict(self._resv_cache)
        for host, names in self._claiming.items():
            if names:
                old, rev = resv.get(host, ({}, 0))
                resv[host] = ({**old, **names}, rev)
        return resv

    def claim(self, name: str, image: str, memory_bytes: int, spec: dict, choose: Chooser) -> dict:
        """See Store.claim.  Claims go in groups (group commit): the claims
        made while one of this hub's claim transactions is in flight wait
        for it together, then go as one transaction for up to
        CLAIM_GROUP_MAX of them (``_send_group``), with the compares of a
        claim for each (its name's create_revision 0, no abandoned copy of
        it, the mod revision of each host record written), so a group
        commits whole or not at all; when it does not, its claims run
        alone (``_claim_one``), one after the other, as do the claims of a
        group etcd refuses whole (StoreError, e.g. a request too large) and
        a claim whose row would take its group past CLAIM_GROUP_BYTES.  A claim refused
        (NoCapacity) for the capacity its group's earlier claims take is
        refused only once they commit, else it is tried alone too.  A claim made while none is in flight
        goes at once, a group of one.  Under concurrency one etcd request
        carries several decisions."""
        if self._lease is None and self._member is not None:
            self._renew()
        group = self._group
        if group is not None and len(group) >= CLAIM_GROUP_MAX:  # full: go alone, beside it
            return self._claim_alone(name, image, memory_bytes, spec, choose)
        entry = _Claim(name, image, memory_bytes, spec, choose)
        if group is None:
            group = self._group = [entry]
            self._send_group(group)
        else:
            group.append(entry)
        try:
            outcome = entry.result.get()
        except BaseException as exc:
            if not isinstance(exc, errors.DcError):  # killed while waiting: out of a group not sent yet
                entry.cancelled = True
            raise
        if outcome is _ALONE:  # one after the other: none is refused for another's claim that then fails
            with self._alone_lock:
                return self._claim_alone(name, image, memory_bytes, spec, choose)
        return outcome

    def _claim_alone(self, name: str, image: str, memory_bytes: int, spec: dict, choose: Chooser) -> dict:
        self._claims_in_flight += 1
        try:
            return self._claim_one(name, image, memory_bytes, spec, choose)
        finally:
            self._claim_done()

    def _claim_done(self) -> None:
        self._claims_in_flight -= 1
        if not self._claims_in_flight:
            self._claims_idle.set()

    def _send_group(self, group: list["_Claim"]) -> None:
        """Wait until no claim of this hub is in flight, then send
        ``group`` (claims joining meanwhile are in it) as one transaction
        and give each claim its outcome: its row, its error (NoCapacity
        from its chooser; StoreUnavailable / StoreError of the request, to
        all), or _ALONE (the group's compares did not all hold, or the
        name is twice in it: the claim runs alone).  Never returns before
        every claim of the group has its outcome."""
        sent = False
        try:
            while True:
                while self._claims_in_flight:
                    self._claims_idle.clear()
                    self._claims_idle.wait()
                gevent.sleep(0)  # the claims ready to run (e.g. woken by the last answer) join first
                if not self._claims_in_flight:
                    break
            if self._group is group:
                self._group = None
            self._claims_in_flight += 1
            try:
                sent = True
                self._commit_group([e for e in group if not e.cancelled])
            finally:
                self._claim_done()
        except BaseException as exc:
            for e in group:
                if not e.result.ready():
                    if sent and isinstance(exc, errors.DcError):
                        e.result.set_exception(exc)
                    elif sent:  # interrupted mid-request: the group may be written
                        e.result.set_exception(errors.StoreUnavailable(
                            "the claim's request to etcd was interrupted",
                            hint="a write may still be applied: a claim left \"reserved\" is decided by the "
                                 "leader's journal"))
                    else:
                        e.result.set(_ALONE)
            if self._group is group:
                self._group = None
            if not isinstance(exc, errors.DcError):
                raise

    def _commit_group(self, group: list["_Claim"]) -> None:
        """_send_group's transaction: each claim chooses its host on the
        records last seen plus the group's claims before it."""
        resv = self._claim_figures()
        figures = self._figures(resv)
        chosen, names_seen, refused, group_bytes = [], set(), [], 0
        for e in group:
            if e.name in names_seen:
                e.result.set(_ALONE)  # decided once the first of the name is
                continue
            size = len(json.dumps(e.spec)) + len(e.name) + len(e.image)
            if chosen and group_bytes + size > CLAIM_GROUP_BYTES:
                e.result.set(_ALONE)  # too big to go with the others: its own request
                continue
            group_bytes += size
            names_seen.add(e.name)
            try:
                host = e.choose(figures)
            except errors.DcError as exc:
                if chosen:  # the group's claims before it may be why: true only if they commit
                    refused.append((e, exc))
                else:
                    e.result.set_exception(exc)
                continue
            mem, count = figures.get(host, (0, 0))
            figures[host] = (mem + e.memory_bytes, count + 1)
            chosen.append((e, host))
        if not chosen:
            return
        now = time.time()
        compares, ops, records, rows = [], [], {}, []
        for e, host in chosen:
            ckey, akey = self._k("containers", e.name), self._k("abandoned", e.name, "")
            row = {"name": e.name, "host": host, "image": e.image, "memory_bytes": e.memory_bytes,
                   "state": "reserved", "spec": e.spec, "ports": [], "created_at": now, "updated_at": now}
            rows.append(row)
            compares += [self.etcd.at(ckey, 0), {"key": _b64(akey), "range_end": _prefix_end(akey),
                                                 "target": "CREATE", "result": "EQUAL", "create_revision": "0"}]
            ops.append(self.etcd.put(ckey, row))
            if self._lease:
                ops.append(self.etcd.put(self._k("inflight", e.name), self.hub_name, self._lease))
            records.setdefault(host, {})[e.name] = e.memory_bytes
        merged = {}
        for host, add in records.items():
            names, rev = self._resv_cache.get(host, ({}, 0))
            merged[host] = {**names, **add}
            compares.append(self.etcd.at(self._k("resv", host), rev))
            ops.append(self.etcd.put(self._k("resv", host), {"names": merged[host]}))
        try:
            ok, out = self.etcd.txn(compares, ops, [self.etcd.read(self._k("resv", h)) for h in records])
        except errors.StoreUnavailable:
            raise
        except errors.StoreError as exc:  # refused whole, nothing written: each claim alone gets its own answer
            if len(chosen) + len(refused) == 1:
                raise
            log.warning("a group of %d claims was refused (%s): each goes alone", len(chosen) + len(refused), exc)
            for e in [e for e, _ in chosen] + [e for e, _ in refused]:
                e.result.set(_ALONE)
            return
        if ok:
            revision = int(out["header"]["revision"])
            for host, names in merged.items():
                self._resv_cache[host] = (names, revision)
            for (e, _), row in zip(chosen, rows):
                e.result.set(row)
            for e, exc in refused:
                e.result.set_exception(exc)
            return
        for host, r in zip(records, out.get("responses") or []):  # the records as they are: alone, each wins
            found = (r.get("response_range") or {}).get("kvs") or []
            if found:
                self._resv_cache[host] = (json.loads(_unb64(found[0].get("value")))["names"],
                                          int(found[0]["mod_revision"]))
            else:
                self._resv_cache.pop(host, None)
        for e in [e for e, _ in chosen] + [e for e, _ in refused]:
            e.result.set(_ALONE)

    def _claim_one(self, name: str, image: str, memory_bytes: int, spec: dict, choose: Chooser) -> dict:
        """One claim, one transaction: it compares the name's
        create_revision (0), that no abandoned copy holds the name, and the
        chosen host's reservation record's mod revision, and writes the row,
        the record and the in-flight key (on this hub's lease).  A lost race
        reads that record again and chooses again.  Decisions read the
        records this hub last saw (see _claim_figures), so a claim is
        usually one request; claims in flight on this hub count, so
        concurrent ones pick different hosts instead of racing for one."""
        ckey, akey = self._k("containers", name), self._k("abandoned", name, "")

        def once():
            resv = self._claim_figures()
            host = choose(self._figures(resv))
            now = time.time()
            row = {"name": name, "host": host, "image": image, "memory_bytes": memory_bytes, "state": "reserved",
                   "spec": spec, "ports": [], "created_at": now, "updated_at": now}
            names, rev = self._resv_cache.get(host, ({}, 0))
            names = {**names, name: memory_bytes}
            rkey = self._k("resv", host)
            ops = [self.etcd.put(ckey, row), self.etcd.put(rkey, {"names": names})]
            if self._lease:
                ops.append(self.etcd.put(self._k("inflight", name), self.hub_name, self._lease))
            no_copy = {"key": _b64(akey), "range_end": _prefix_end(akey), "target": "CREATE", "result": "EQUAL",
                       "create_revision": "0"}
            self._claiming.setdefault(host, {})[name] = memory_bytes
            try:
                ok, out = self.etcd.txn([self.etcd.at(ckey, 0), no_copy, self.etcd.at(rkey, rev)], ops,
                                        [self.etcd.read(ckey), {"request_range": {"key": _b64(akey),
                                                                                  "range_end": _prefix_end(akey)}},
                                         self.etcd.read(rkey)])
            finally:
                self._claiming[host].pop(name, None)
            if ok:
                self._resv_cache[host] = (names, int(out["header"]["revision"]))
                return row
            found = [r["response_range"].get("kvs") or [] for r in out["responses"]]
            if found[0]:
                raise errors.ContainerExists(f"container {name!r} already exists in the fleet")
            if found[1]:
                left = sorted(_unb64(kv["key"]).rsplit("/", 1)[1] for kv in found[1])
                raise errors.ContainerExists(
                    f"container {name!r} is still claimed: a failed create may have left a copy on"
                    f" {', '.join(left)}",
                    hint=f"the hub destroys that copy once {', '.join(left)} answers; create it again then")
            if found[2]:  # the record changed: take the one read, choose again
                self._resv_cache[host] = (json.loads(_unb64(found[2][0].get("value")))["names"],
                                          int(found[2][0]["mod_revision"]))
            else:
                self._resv_cache.pop(host, None)
            return None

        return self._cas(once)

    def _rehost(self, name: str, pick) -> str:
        """Move ``name``'s row and reservation to ``pick(resv, row)``'s host."""
        ckey = self._k("containers", name)

        def once():
            got = self._row(name)
            if got is None:
                raise errors.NoSuchContainer(f"no container {name!r} in the fleet")
            row, rev = got
            resv = self._reservations()
            host = pick(resv, row)
            cmps, ops = [self.etcd.at(ckey, rev)], [self.etcd.put(ckey, {**row, "host": host, "updated_at": time.time()})]
            if host == row["host"]:
                cmp, put = self._resv_ops(resv, host, add={name: row["memory_bytes"]})
                cmps.append(cmp), ops.append(put)
            else:
                for h, kw in ((row["host"], {"drop": name}), (host, {"add": {name: row["memory_bytes"]}})):
                    cmp, put = self._resv_ops(resv, h, **kw)
                    cmps.append(cmp), ops.append(put)
            ok, _ = self.etcd.txn(cmps, ops)
            return host if ok else None

        return self._cas(once)

    def move(self, name: str, choose: Chooser) -> str:
        def pick(resv, row):
            figures = self._figures(resv)
            mem, count = figures.get(row["host"], (0, 0))
            if name in resv.get(row["host"], ({}, 0))[0]:
                figures[row["host"]] = (mem - (row["memory_bytes"] or 0), count - 1)
            return choose(figures)

        return self._rehost(name, pick)

    def assign(self, name: str, host: str) -> None:
        try:
            self._rehost(name, lambda resv, row: host)
        except errors.NoSuchContainer:
            pass

    def _update(self, name: str, change) -> bool:
        """CAS ``change(row) -> new row | None (leave it)`` on ``name``'s
        row; returns True when written.  A row in state "placed" loses its
        in-flight key."""
        ckey = self._k("containers", name)

        def once():
            got = self._row(name)
            if got is None:
                return (False,)
            new = change(dict(got[0]))
            if new is None:
                return (False,)
            new["updated_at"] = time.time()
            ops = [self.etcd.put(ckey, new)]
            if new["state"] != "reserved":
                ops.append(self.etcd.delete(self._k("inflight", name)))
            ok, _ = self.etcd.txn([self.etcd.at(ckey, got[1])], ops)
            return (True,) if ok else None

        return self._cas(once)[0]

    def set_placed(self, name: str, image: str, ports: list[dict], host: str | None = None) -> bool:
        return self._update(name, lambda r: None if host is not None and r.get("host") != host
                            else {**r, "state": "placed", "image": image, "ports": ports})

    def set_state(self, name: str, state: str, was: str) -> bool:
        return self._update(name, lambda r: {**r, "state": state} if r["state"] == was else None)

    def destroying(self, host: str) -> list[str]:
        return sorted(r["name"] for r in self.containers(host) if r["state"] == "destroying")

    def set_ports(self, name: str, ports: list[dict]) -> None:
        self._update(name, lambda r: {**r, "ports": ports})

    def adopt(self, name: str, host: str, image: str, ports: list[dict], memory_bytes: int = 0) -> None:
        ckey = self._k("containers", name)

        def once():
            if self._row(name) is not None:
                return (False,)
            resv = self._reservations()
            now = time.time()
            row = {"name": name, "host": host, "image": image, "memory_bytes": memory_bytes, "state": "placed",
                   "spec": {}, "ports": ports, "created_at": now, "updated_at": now}
            cmp, put = self._resv_ops(resv, host, add={name: memory_bytes})
            ok, _ = self.etcd.txn([self.etcd.at(ckey, 0), cmp], [self.etcd.put(ckey, row), put])
            return (True,) if ok else None

        self._cas(once)

    def abandon(self, name: str, host: str) -> None:
        self.etcd.txn([], [self.etcd.put(self._k("abandoned", name, host), {"at": time.time()})])

    def abandoned(self, host: str | None = None) -> list[dict]:
        rows = []
        for key, value, _ in self.etcd.range(self._k("abandoned", "")):
            name, h = key[len(self._k("abandoned", "")):].split("/", 1)
            if host is None or h == host:
                rows.append({"name": name, "host": h, "at": value["at"]})
        return sorted(rows, key=lambda r: (r["name"], r["host"]))

    def is_abandoned(self, name: str, host: str) -> bool:
        return self.etcd.get(self._k("abandoned", name, host)) is not None

    def unabandon(self, name: str, host: str) -> None:
        self.etcd.txn([], [self.etcd.delete(self._k("abandoned", name, host))])

    def forget(self, name: str) -> None:
        """See Store.forget: the row, its reservation (compare-and-swap),
        its in-flight key and its routes, in one transaction."""
        ckey = self._k("containers", name)

        def once():
            got, resv, routes = self.etcd.ranges(ckey, self._k("resv", ""), self._k("routes", ""))
            if not got:
                return (False,)
            _, row, rev = got[0]
            resv = {k.rsplit("/", 1)[1]: (v["names"], r) for k, v, r in resv}
            cmps, ops = [self.etcd.at(ckey, rev)], [self.etcd.delete(ckey), self.etcd.delete(self._k("inflight", name))]
            if name in resv.get(row["host"], ({}, 0))[0]:
                cmp, put = self._resv_ops(resv, row["host"], drop=name)
                cmps.append(cmp), ops.append(put)
            ops += [self.etcd.delete(k) for k, _, _ in routes if k.split("/")[-2] == name]
            ok, _ = self.etcd.txn(cmps, ops[:MAX_TXN_OPS])
            if ok and len(ops) > MAX_TXN_OPS:
                for i in range(MAX_TXN_OPS, len(ops), MAX_TXN_OPS):
                    self.etcd.txn([], ops[i:i + MAX_TXN_OPS])
            return (True,) if ok else None

        self._cas(once)

    # ------------------------------------------------------------ routes
    def _route_key(self, name: str, container: str, port: int) -> str:
        return self._k("routes", name, container, str(port))

    def add_route(self, name: str, container: str, port: int, exist_ok: bool = False) -> bool:
        rkey, ckey = self._route_key(name, container, port), self._k("containers", container)
        while True:
            got = self._row(container)
            if got is None:
                raise errors.NoSuchContainer(f"no container {container!r} in the fleet")
            mapped = sorted(p.get("container_port") for p in got[0].get("ports") or []
                            if isinstance(p, dict) and p.get("proto") == "tcp")
            if port not in mapped:
                raise errors.NoSuchPortMapping(
                    f"container {container!r} maps no tcp port {port} (mapped: {', '.join(map(str, mapped)) or 'none'})",
                    hint=f"map it first: container_connection_add {container} tcp {port}")
            ok, out = self.etcd.txn([self.etcd.at(rkey, 0), self.etcd.at(ckey, got[1])],
                                    [self.etcd.put(rkey, {"created_at": time.time()})], [self.etcd.read(rkey)])
            if ok:
                return True
            if out["responses"][0]["response_range"].get("kvs"):
                if exist_ok:
                    return False
                raise errors.RouteExists(f"route {name} already has backend {container}:{port}")

    def remove_route(self, name: str, container: str, port: int) -> None:
        out = self.etcd.post("kv/deleterange", {"key": _b64(self._route_key(name, container, port))})
        if not int(out.get("deleted") or 0):
            raise errors.NoSuchRoute(f"route {name} has no backend {container}:{port}")

    def routes(self) -> list[dict]:
        """See Store.routes; while etcd does not answer, the rows this hub
        read last, else those of the watched index."""
        rows = []
        base = self._k("routes", "")
        try:
            found = self.etcd.range(base)
        except errors.StoreUnavailable:
            if self._seen_routes is None:
                found = [(base + name, value, rev) for name, (value, rev) in self._routeidx.items().items()]
            else:
                return [dict(r) for r in self._seen_routes]
        for key, value, _ in found:
            name, container, port = key[len(base):].split("/")
            rows.append({"name": name, "container": container, "port": int(port), "created_at": value["created_at"]})
        self._seen_routes = sorted(rows, key=lambda r: (r["name"], r["container"], r["port"]))
        return [dict(r) for r in self._seen_routes]

    # ------------------------------------------------------------ the registry's index
    def registry_put(self, manifest: dict, sizes: dict[str, int], source: str | None) -> None:
        """Index image ``manifest`` with its layers' ``sizes`` (bytes) and
        the host it came from (None: an upload to one hub)."""
        self.etcd.txn([], [self.etcd.put(self._k("registry", manifest["id"]),
                                          {"manifest": manifest, "sizes": sizes, "source": source})])

    def registry_manifests(self) -> list[dict]:
        """Every indexed manifest."""
        return [v["manifest"] for _, v, _ in self.etcd.range(self._k("registry", ""))]

    def registry_entry(self, image_id: str) -> dict | None:
        """{manifest, sizes, source} of ``image_id``, or None."""
        got = self.etcd.get(self._k("registry", image_id))
        return got[0] if got else None

    def registry_remove(self, image_id: str) -> None:
        """Drop ``image_id`` from the index."""
        self.etcd.txn([], [self.etcd.delete(self._k("registry", image_id))])

    # ------------------------------------------------------------ deploy: apps, releases, journal
    # (see Store: JSON documents by key, under PREFIX/deploy/)
    def deploy_doc_get(self, key: str) -> dict | None:
        got = self.etcd.get(self._k("deploy", key))
        return got[0] if got else None

    def deploy_doc_put(self, key: str, doc: dict, create_only: bool = False) -> bool:
        k = self._k("deploy", key)
        ok, _ = self.etcd.txn([self.etcd.at(k, 0)] if create_only else [], [self.etcd.put(k, doc)])
        return ok

    def deploy_doc_delete(self, key: str) -> bool:
        out = self.etcd.post("kv/deleterange", {"key": _b64(self._k("deploy", key))})
        return bool(int(out.get("deleted") or 0))

    def deploy_docs(self, prefix: str) -> list[tuple[str, dict]]:
        base = self._k("deploy", "")
        return [(key[len(base):], value) for key, value, _ in self.etcd.range(self._k("deploy", prefix))]

    # ------------------------------------------------------------ fleet events (hub/events.py)
    def _event_key(self, index: int) -> str:
        return self._k("events", f"{index:012d}")

    def events_append(self, docs: list[dict], host: str | None = None,
                      agent_index: int | None = None) -> list[dict]:
        """See Store.events_append: a compare-and-swap on ``evseq`` for each
        MAX_TXN_OPS - 2 events; the cursor goes with the last of them."""
        out: list[dict] = []
        chunk, seq_key = MAX_TXN_OPS - 2, self._k("evseq")
        for start in range(0, max(1, len(docs)), chunk):
            part, last_part = docs[start:start + chunk], start + chunk >= len(docs)

            def once(part=part, last_part=last_part):
                got = self.etcd.get(seq_key)
                last = got[0] if got else 0
                full = [{**doc, "index": last + i + 1} for i, doc in enumerate(part)]
                ops = [self.etcd.put(self._event_key(d["index"]), d) for d in full]
                ops.append(self.etcd.put(seq_key, last + len(full)))
                if last_part and host is not None and agent_index is not None:
                    ops.append(self.etcd.put(self._k("evcursors", host), agent_index))
                ok, _ = self.etcd.txn([self.etcd.at(seq_key, got[1] if got else 0)], ops)
                return full if ok else None

            out += self._cas(once)
        return out

    def _events_from(self, start: int, limit: int = 0) -> list[dict]:
        body = {"key": _b64(self._event_key(start)), "range_end": _prefix_end(self._k("events", ""))}
        if limit:
            body["limit"] = str(limit)
        return [json.loads(_unb64(kv.get("value"))) for kv in self.etcd.post("kv/range", body).get("kvs") or []]

    def events_after(self, index: int, limit: int) -> list[dict]:
        return self._events_from(max(0, index) + 1, limit) if limit > 0 else []

    def _event_marks(self) -> dict:
        got = self.etcd.get(self._k("evmarks"))
        return got[0] if got else {"pruned_index": 0, "pruned_at": 0.0}

    def events_index_at(self, at: float) -> int:
        later = [d["index"] for d in self._events_from(0) if d["at"] > at]
        return min(later) - 1 if later else int(self.events_bounds()["last"])

    def events_bounds(self) -> dict:
        first, seq = self._events_from(0, 1), self.etcd.get(self._k("evseq"))
        last, marks = (seq[0] if seq else 0), self._event_marks()
        return {"first": first[0]["index"] if first else last + 1, "last": last,
                "pruned_index": int(marks["pruned_index"]), "pruned_at": marks["pruned_at"]}

    def events_prune(self, max_count: int, max_age_s: float, now: float | None = None,
                     max_per_host: int | None = None, max_agent_events: int | None = None) -> int:
        """See Store.events_prune: per source, its events at or below its cut
        go (one delete per run of consecutive indexes, MAX_TXN_OPS - 1 a
        transaction); the marks (``evmarks``: pruned_index, pruned_at and
        ``sources``) with the first."""
        now = time.time() if now is None else now
        per_host = max_count if max_per_host is None else max_per_host
        kept = self._events_from(0)
        by_source: dict[str, list[dict]] = {}
        for d in kept:
            by_source.setdefault(event_source(d), []).append(d)
        cuts: dict[str, int] = {}
        fleet_cuts: dict[str, int] = {}  # the part that moves the fleet marks: not a host's own count
        keeps = retention_keeps({src: len(docs) for src, docs in by_source.items()}, max_count, per_host,
                                max_agent_events)
        for src, docs in by_source.items():
            cap = keeps[src]
            cut = docs[-cap - 1]["index"] if len(docs) > cap else 0
            old = max([d["index"] for d in docs if d["at"] < now - max_age_s], default=0)
            cut = max(cut, old)
            if cut:
                cuts[src] = cut
                fleet_cuts[src] = cut if src == "hub" else old
        gone = [d for d in kept if cuts.get(event_source(d), 0) >= d["index"]]
        if not gone:
            return 0
        marks = self._event_marks()
        sources = dict(marks.get("sources") or {})
        for src, cut in cuts.items():
            sources[src] = max(int(sources.get(src, 0)), cut)
        fleet_gone = [d for d in gone if fleet_cuts.get(event_source(d), 0) >= d["index"]]
        marks = {"pruned_index": max([int(marks["pruned_index"])] + [d["index"] for d in fleet_gone]),
                 "pruned_at": max([marks["pruned_at"]] + [d["at"] for d in fleet_gone]), "sources": sources}
        runs: list[list[int]] = []
        for d in gone:
            if runs and runs[-1][1] + 1 == d["index"]:
                runs[-1][1] = d["index"]
            else:
                runs.append([d["index"], d["index"]])
        ops = [{"request_delete_range": {"key": _b64(self._event_key(a)), "range_end": _b64(self._event_key(b + 1))}}
               for a, b in runs]
        chunk = MAX_TXN_OPS - 1
        for start in range(0, len(ops), chunk):
            part = ops[start:start + chunk]
            if start == 0:  # the marks first: a cut pass leaves them ahead, never behind
                part = part + [self.etcd.put(self._k("evmarks"), marks)]
            self.etcd.txn([], part)
        return len(gone)

    def events_source_marks(self) -> dict[str, int]:
        return {src: int(i) for src, i in (self._event_marks().get("sources") or {}).items()}

    def event_cursor(self, host: str) -> int:
        got = self.etcd.get(self._k("evcursors", host))
        return got[0] if got else 0

    def set_event_cursor(self, host: str, agent_index: int) -> None:
        self.etcd.txn([], [self.etcd.put(self._k("evcursors", host), agent_index)])
