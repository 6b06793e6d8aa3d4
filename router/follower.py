"""Follow the hub's route table and converge HAProxy on it.

Two greenlets:

* the **poller** long-polls the hub's ``route_table(since, wait_s)``; every
  answer is the full table, so a reconnect (a hub restart, a router restart)
  is a full resync;
* the **applier** converges HAProxy on the last table, at once after each
  answer and every ``PASS_SECONDS`` anyway (a server to probe again, a drain
  to finish, HAProxy to restart).

A pass:

1. HAProxy not running (killed, or never started): start it from the config
   on disk, which always holds the routes' backends with their servers, so
   every route comes back before the hub is even asked.
2. The set of frontends/backends differs from the table's: write the config
   with the new layout (kept servers, plus new ones that answer) and reload
   seamlessly (``-x`` takes the listeners, ``-sf`` lets the old process
   finish its requests).  Nothing else ever reloads.
3. Otherwise, through the runtime API: a new backend is probed first (an
   HTTP answer, or a TCP connect) and only then added (``add server``,
   ``enable health``, ``enable server``): a server counts as up as soon as
   it is enabled, so one that does not answer yet would fail requests.  A
   backend that left the table (or that the hub no longer routes) is
   drained, and deleted once it has no connection.  A backend the hub
   routes without vouching for it (``host_unreachable``: its agent is
   gone, the container may run on) is kept, and HAProxy's own health
   check decides whether it gets traffic (hx.CHECK_DOWN_BOUND_SECONDS).  At most ``MAX_CHANGES_PER_PASS``
   server changes per pass (heavy churn has crashed 2.6).
4. The config and the server-state file are rewritten to match, and
   ``STATE/status.json`` says what was applied.
"""
from __future__ import annotations

import json
import logging
import os
import time

import gevent
import gevent.event
import gevent.pool
import gevent.socket

from dcctl import errors, files, wire
from router import haproxy as hx

log = logging.getLogger(__name__)

PASS_SECONDS = 0.5
#: The pass interval while something is pending (a probe to retry, a drain).
BUSY_PASS_SECONDS = 0.1
WAIT_SECONDS = 20.0
PROBE_TIMEOUT_SECONDS = 1.0
#: Before a reload, new servers get this long to answer; the others are
#: added at runtime once they do, so a new name never waits on a slow one.
RELOAD_PROBE_TIMEOUT_SECONDS = 0.3
PROBE_BACKOFF_MAX_SECONDS = 5.0
MAX_CHANGES_PER_PASS = 16
#: A drained server still holding connections after this long has them
#: shut (a stuck keep-alive client must not keep a dead backend forever).
DRAIN_TIMEOUT_SECONDS = 30.0
HUB_RETRY_SECONDS = 1.0
#: A layout HAProxy refused (a TCP port it cannot bind...) is tried again
#: after this long; meanwhile the names it has keep being served and changed.
BAD_LAYOUT_RETRY_SECONDS = 10.0
MANAGED_PREFIXES = ("h_", "w_", "t_")


def desired(table: dict) -> tuple[hx.Layout, dict[str, dict[str, hx.Server]]]:
    """(layout, {backend: {server name: Server}}) for a hub route table:
    every route, and its routed backends with an address (``routed``; a
    hub that does not send it: its healthy ones)."""
    http, tcp, servers = [], [], {}
    for r in table.get("routes") or []:
        name = r["name"]
        if r.get("kind") == "tcp":
            tcp.append(int(r["listen_port"]))
        else:
            http.append(name)
        wanted = servers.setdefault(hx.backend_name(name), {})
        for b in r.get("backends") or []:
            if b.get("routed", b.get("healthy")) and b.get("address") and b.get("port"):
                s = hx.Server(b["container"], int(b["container_port"]), b["address"], int(b["port"]))
                wanted[s.name] = s
    return hx.Layout(tuple(sorted(http)), tuple(sorted(set(tcp)))), servers


def probe(server: hx.Server, http: bool, timeout_s: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """Whether ``server`` answers: an HTTP status line for ``GET /``, or a
    TCP connect."""
    try:
        sock = gevent.socket.create_connection((server.address, server.port), timeout=timeout_s)
    except OSError:
        return False
    try:
        if not http:
            return True
        sock.sendall(b"GET / HTTP/1.0\r\nHost: dcfleet-probe\r\nUser-Agent: dc-router-probe\r\n\r\n")
        return sock.recv(16).startswith(b"HTTP/")
    except OSError:
        return False
    finally:
        sock.close()


class Follower:
    """Keeps ``proxy`` (a router.haproxy.Haproxy) on the route table of the
    hub that ``connect()`` returns a client for (a wire.RpcClient)."""

    def __init__(self, proxy: hx.Haproxy, connect, state_dir: str):
        self.proxy = proxy
        self.connect = connect
        self.status_file = os.path.join(state_dir, "status.json")
        self.table: dict | None = None
        self.applied: str | None = None
        self.pending = -1  # wanted servers not serving + unwanted ones not gone yet
        self.hub_ok = False
        self.hub_error = ""
        self._wake = gevent.event.Event()
        self._next_probe: dict[str, tuple[float, float]] = {}  # server name -> (when, backoff)
        self._drain_started: dict[tuple[str, str], float] = {}
        self._bad_layout: tuple[hx.Layout, float] | None = None  # (refused layout, retry after)
        self._tasks: list[gevent.Greenlet] = []

    def start(self) -> None:
        self._tasks = [gevent.spawn(self._poll), gevent.spawn(self._apply_loop)]

    def stop(self) -> None:
        gevent.killall(self._tasks)

    def join(self) -> None:
        gevent.joinall(self._tasks)

    # -- the hub
    def _poll(self) -> None:
        client, version = None, ""
        while True:
            try:
                if client is None:
                    client = self.connect()
                    version = ""  # a new connection: a full resync
                answer = client.call("route_table", version, WAIT_SECONDS, timeout_s=WAIT_SECONDS + 10)
                if not self.hub_ok:
                    log.info("following the hub's route table")
                self.hub_ok, self.hub_error = True, ""
                if answer["version"] != version or self.table is None:
                    self.table, version = answer, answer["version"]
                    self._wake.set()
            except errors.DcError as exc:
                if self.hub_ok or not self.hub_error:
                    log.warning("hub: %s: %s (HAProxy keeps serving the last table)", type(exc).__name__, exc)
                self.hub_ok, self.hub_error = False, f"{type(exc).__name__}: {exc}"
                if client is not None:
                    client.close()
                    client = None
                self._write_status()
                gevent.sleep(HUB_RETRY_SECONDS)

    # -- HAProxy
    def _apply_loop(self) -> None:
        while True:
            self._wake.clear()
            try:
                self.apply()
            except hx.HaproxyError as exc:
                log.warning("haproxy: %s", exc)
            except Exception:  # a bug must not stop the router: log, retry next pass
                log.exception("apply failed")
            self._wake.wait(timeout=BUSY_PASS_SECONDS if self.pending > 0 else PASS_SECONDS)

    def apply(self) -> None:
        """One pass (see the module docstring)."""
        proxy = self.proxy
        if not proxy.running():
            if not os.path.exists(proxy.config):
                proxy.write(hx.Layout(), {})
            log.info("starting haproxy from %s", proxy.config)
            proxy.start()
        if self.table is None:
            self._write_status()
            return
        table = self.table
        layout, wanted = desired(table)
        http_port = int(proxy.http_bind.rsplit(":", 1)[1])
        if http_port in layout.tcp:
            log.warning("route tcp:%d is the HTTP frontend's port: not listened on", http_port)
            layout = hx.Layout(layout.http, tuple(p for p in layout.tcp if p != http_port))
            wanted.pop(hx.backend_name(f"tcp:{http_port}"), None)
        frontends, backends, stats = proxy.runtime.stats()
        current: dict[str, dict[str, hx.ServerStat]] = {}
        for s in stats:
            current.setdefault(s.backend, {})[s.name] = s
        managed = {b for b in backends if b.startswith(MANAGED_PREFIXES)}
        tcp_now = {f for f in frontends if f.startswith("tcp_")}
        if managed != layout.backends() or tcp_now != {f"tcp_{p}" for p in layout.tcp}:
            bad = self._bad_layout
            if bad is None or bad[0] != layout or time.monotonic() >= bad[1]:
                try:
                    self._relayout(layout, wanted, current)
                    self._bad_layout = None
                except hx.HaproxyError as exc:
                    log.warning("haproxy refused the new routes (%s); retrying in %g s",
                                exc, BAD_LAYOUT_RETRY_SECONDS)
                    self._bad_layout = (layout, time.monotonic() + BAD_LAYOUT_RETRY_SECONDS)
                    # most likely a new TCP port it cannot bind: the rest without the new ports
                    fallback = hx.Layout(layout.http, tuple(p for p in layout.tcp if f"tcp_{p}" in tcp_now))
                    if fallback != layout:
                        try:
                            self._relayout(fallback, wanted, current)
                        except hx.HaproxyError as again:
                            log.warning("haproxy refused the new names too: %s", again)
                    return
            else:  # the names HAProxy has go on changing at runtime
                old = proxy.layout_of_config() or hx.Layout()
                self._runtime_changes(old, {b: v for b, v in wanted.items() if b in managed}, current)
                self.pending = self._count_pending(wanted)
                self._write_status()
                return
        else:
            self._runtime_changes(layout, wanted, current)
        self.applied = table["version"]
        self.pending = self._count_pending(wanted)
        self._write_status()

    def _count_pending(self, wanted) -> int:
        _, _, stats = self.proxy.runtime.stats()
        serving = {(s.backend, s.name) for s in stats if not s.draining and not s.maint}
        present = {(s.backend, s.name) for s in stats if s.backend.startswith(MANAGED_PREFIXES)}
        want = {(b, n) for b, servers in wanted.items() for n in servers}
        return len(want - serving) + len(present - want)

    def _keep_and_probe(self, layout, wanted, current) -> dict[str, list[hx.Server]]:
        """Servers for the config: those running and wanted, plus wanted ones
        that answer a probe now."""
        out: dict[str, list[hx.Server]] = {}
        http_backends = {hx.backend_name(n) for n in layout.http}
        todo = []
        for backend, servers in wanted.items():
            out[backend] = []
            for name, server in servers.items():
                stat = current.get(backend, {}).get(name)
                if stat is not None and not stat.draining and not stat.maint:
                    out[backend].append(server)
                elif self._probe_due(name):
                    todo.append((backend, server))
        for (backend, server), ok in zip(todo, self._probe_all(todo, http_backends, RELOAD_PROBE_TIMEOUT_SECONDS)):
            if ok:
                out[backend].append(server)
        return out

    def _relayout(self, layout, wanted, current) -> None:
        """Write the new layout and reload; on a refusal the previous files
        are put back (so a restart still brings up what ran) and
        HaproxyError is raised."""
        servers = self._keep_and_probe(layout, wanted, current)
        previous = self.proxy.snapshot()
        self.proxy.write(layout, servers)
        log.info("routes changed (%d http, %d tcp): reloading haproxy", len(layout.http), len(layout.tcp))
        try:
            self.proxy.reload()
        except hx.HaproxyError:
            self.proxy.restore(previous)
            raise
        self._drain_started.clear()
        self.proxy.save_state()

    def _runtime_changes(self, layout, wanted, current) -> None:
        proxy, rt = self.proxy, self.proxy.runtime
        changes = 0
        http_backends = {hx.backend_name(n) for n in layout.http}
        # new servers: probe, then add
        todo = [(b, s) for b, servers in wanted.items() for n, s in servers.items()
                if n not in current.get(b, {}) and self._probe_due(n)][:MAX_CHANGES_PER_PASS]
        for (backend, server), ok in zip(todo, self._probe_all(todo, http_backends)):
            if ok:
                try:
                    rt.add_server(backend, server)
                    log.info("added %s/%s", backend, server.name)
                    self._next_probe.pop(server.name, None)
                    changes += 1
                except hx.RuntimeRefused as exc:
                    log.warning("%s", exc)
        # wanted servers someone put in maintenance or drain: back to ready
        for backend, servers in wanted.items():
            for name in servers:
                stat = current.get(backend, {}).get(name)
                if stat is not None and (stat.maint or stat.draining) and changes < MAX_CHANGES_PER_PASS:
                    rt.ready(backend, name)
                    rt.checked(f"enable health {backend}/{name}")
                    self._drain_started.pop((backend, name), None)
                    changes += 1
        # unwanted servers: drain, then delete when idle
        now = time.monotonic()
        for backend, servers in current.items():
            if not backend.startswith(MANAGED_PREFIXES):
                continue
            for name, stat in servers.items():
                if name in wanted.get(backend, {}) or changes >= MAX_CHANGES_PER_PASS:
                    continue
                key = (backend, name)
                # a server that is DOWN shows DOWN, not DRAIN, once drained: remember
                if key not in self._drain_started and not stat.draining and not stat.maint:
                    rt.drain(backend, name)
                    self._drain_started[key] = now
                    log.info("draining %s/%s", backend, name)
                    changes += 1
                    continue
                started = self._drain_started.setdefault(key, now)
                if stat.sessions or stat.queued:
                    if now - started < DRAIN_TIMEOUT_SECONDS:
                        continue
                    rt.command(f"shutdown sessions server {backend}/{name}")
                if rt.delete(backend, name):
                    log.info("deleted %s/%s", backend, name)
                    self._drain_started.pop(key, None)
                    changes += 1
        # the files, as the servers now stand (drained ones left out)
        kept: dict[str, list[hx.Server]] = {}
        _, _, stats = rt.stats()
        for s in stats:
            server = wanted.get(s.backend, {}).get(s.name)
            if server is not None and not s.draining and not s.maint:
                kept.setdefault(s.backend, []).append(server)
        if proxy.write(layout, kept) or changes:
            proxy.save_state()

    def _probe_due(self, name: str) -> bool:
        when, _ = self._next_probe.get(name, (0.0, 0.0))
        return time.monotonic() >= when

    def _probe_all(self, todo, http_backends, timeout_s: float = PROBE_TIMEOUT_SECONDS) -> list[bool]:
        if not todo:
            return []
        pool = gevent.pool.Pool(8)
        results = pool.map(lambda item: probe(item[1], item[0] in http_backends, timeout_s), todo)
        now = time.monotonic()
        for (_, server), ok in zip(todo, results):
            if not ok:
                _, backoff = self._next_probe.get(server.name, (0.0, 0.0))
                backoff = min(PROBE_BACKOFF_MAX_SECONDS, max(0.05, backoff * 2))
                self._next_probe[server.name] = (now + backoff, backoff)
        return results

    def _write_status(self) -> None:
        """STATE/status.json: {version (last applied), hub_version, pending
        (server changes not done yet: a probe failing, a drain), converged,
        hub_ok, hub_error, haproxy_pid, at}."""
        hub_version = (self.table or {}).get("version")
        status = {"version": self.applied, "hub_version": hub_version, "pending": self.pending,
                  "converged": bool(hub_version) and self.applied == hub_version and self.pending == 0,
                  "hub_ok": self.hub_ok, "hub_error": self.hub_error, "haproxy_pid": self.proxy.pid(),
                  "at": time.time()}
        files.atomic_write(self.status_file, json.dumps(status), mode=0o644)


def hub_connector(endpoint: str, keys=None, timeout_s: float = 30.0):
    """A ``connect()`` for Follower: a new wire client to the hub; for
    ``A,B,...`` (several hubs of one fleet, one key) a
    dcctl.wire.failover.FailoverClient that moves to the next hub when one
    does not answer (route_table is a read)."""
    if "," in endpoint:
        from dcctl.wire.failover import FailoverClient, split_endpoints
        endpoints = split_endpoints(endpoint)
        return lambda: FailoverClient(endpoints, lambda ep: wire.RpcClient(ep, timeout_s=timeout_s, keys=keys))

    def connect() -> wire.RpcClient:
        return wire.RpcClient(endpoint, timeout_s=timeout_s, keys=keys)
    return connect
