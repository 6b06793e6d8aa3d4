"""The router's follower on a real HAProxy and real HTTP servers on
loopback, fed route tables directly (no fleet): layout changes, runtime
server changes, a TCP port HAProxy cannot bind, and a restart from the
config alone."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from router import haproxy as hx
from router.follower import Follower
from tests.ports import free_port

pytestmark = pytest.mark.skipif(not os.path.exists(hx.HAPROXY), reason="needs haproxy (ops/setup)")


@pytest.fixture
def backends(tmp_path):
    """Two HTTP servers on loopback, each serving a page with its name."""
    procs, ports = [], []
    for name in ("one", "two"):
        root = tmp_path / name
        root.mkdir()
        (root / "index.html").write_text(f"<title>{name}</title>\n")
        port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                                       "--directory", str(root)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        ports.append(port)
    for port in ports:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    yield dict(zip(("one", "two"), ports))
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def follower(tmp_path):
    port = free_port()
    proxy = hx.Haproxy(str(tmp_path / "router"), f"127.0.0.1:{port}", "127.0.0.1")
    f = Follower(proxy, connect=None, state_dir=str(tmp_path / "router"))
    f.port = port
    yield f
    proxy.stop()
    assert not proxy.all_pids()


def table(version: str, routes: dict[str, list[tuple[str, int]]]) -> dict:
    out = []
    for name, bs in sorted(routes.items()):
        tcp = name.startswith("tcp:")
        out.append({"name": name, "kind": "tcp" if tcp else "http", "listen_port": int(name[4:]) if tcp else None,
                    "backends": [{"container": c, "container_port": 80, "host": "h", "address": "127.0.0.1",
                                  "port": p, "healthy": True, "status": "up"} for c, p in bs]})
    return {"version": version, "routes": out, "domain": "test"}


def get(port: int, host: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": host})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def converge(f: Follower, t: dict, passes: int = 20) -> None:
    f.table = t
    for _ in range(passes):
        f.apply()
        if f.pending == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"not converged: {f.pending} pending")


def test_names_and_servers_follow_the_table(follower, backends):
    f, one, two = follower, backends["one"], backends["two"]
    converge(f, table("1", {"a.test": [("one", one)]}))
    assert get(f.port, "a.test") == (200, "<title>one</title>\n")
    assert get(f.port, "b.test")[0] == 404
    pid = f.proxy.pid()
    # a second server: at runtime, no reload
    converge(f, table("2", {"a.test": [("one", one), ("two", two)]}))
    assert f.proxy.pid() == pid
    assert {get(f.port, "a.test")[1] for _ in range(6)} == {"<title>one</title>\n", "<title>two</title>\n"}
    # one goes: drained and deleted, no reload
    converge(f, table("3", {"a.test": [("two", two)]}))
    assert f.proxy.pid() == pid
    _, _, stats = f.proxy.runtime.stats()
    assert [s.name for s in stats if s.backend == "h_a.test"] == [f"two_80_127.0.0.1_{two}"]
    # a new name: one reload
    converge(f, table("4", {"a.test": [("two", two)], "b.test": [("one", one)]}))
    assert f.proxy.pid() != pid
    assert get(f.port, "b.test") == (200, "<title>one</title>\n")
    assert get(f.port, "a.test") == (200, "<title>two</title>\n")
    # HAProxy restarted from the files alone: every route is back
    f.proxy.stop()
    f.proxy.start()
    assert get(f.port, "b.test")[0] == 200 and get(f.port, "a.test")[0] == 200


def test_a_tcp_port_haproxy_cannot_bind_blocks_nothing_else(follower, backends):
    f, one = follower, backends["one"]
    converge(f, table("1", {"a.test": [("one", one)]}))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        f.table = table("2", {"a.test": [("one", one)], "b.test": [("one", one)], f"tcp:{port}": [("one", one)]})
        for _ in range(3):
            f.apply()
        assert get(f.port, "a.test")[0] == 200
        assert get(f.port, "b.test")[0] == 200  # the new name made it without the bad port
        frontends, backends_now, _ = f.proxy.runtime.stats()
        assert f"tcp_{port}" not in frontends and "h_b.test" in backends_now
        with open(f.status_file) as fh:
            assert not json.load(fh)["converged"]
        f.proxy.check_config()  # the config on disk still starts
    finally:
        taken.close()
    f.apply()  # the port is free now: tried again only after the back-off, so nothing breaks meanwhile
    assert get(f.port, "a.test")[0] == 200


def test_a_killed_haproxy_comes_back_in_one_pass(follower, backends):
    f, one = follower, backends["one"]
    converge(f, table("1", {"a.test": [("one", one)]}))
    for pid in f.proxy.all_pids():
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while f.proxy.all_pids():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    f.apply()
    assert get(f.port, "a.test")[0] == 200
    mode = os.stat(f.proxy.socket).st_mode & 0o777
    assert mode == 0o600


def test_kept_client_connections_survive_reloads(follower, backends):
    """Clients that keep their connection open see no error while HAProxy
    reloads 6 times (the old process answers their next request with
    Connection: close rather than closing under them)."""
    f, one = follower, backends["one"]
    converge(f, table("0", {"a.test": [("one", one)]}))
    stop, lock = threading.Event(), threading.Lock()
    counts, why = {"ok": 0, "bad": 0}, []

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", f.port, timeout=5)
        while not stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": "a.test"})
                r = conn.getresponse()
                r.read()
                good, reason = r.status == 200, r.status
            except (OSError, http.client.HTTPException) as exc:
                good, reason = False, repr(exc)
                conn.close()
            with lock:
                counts["ok" if good else "bad"] += 1
                if not good:
                    why.append(reason)
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        pids = set()
        for i in range(1, 7):
            time.sleep(0.5)
            names = {"a.test": [("one", one)], **{f"n{j}.test": [("one", one)] for j in range(i)}}
            converge(f, table(str(i), names))
            pids.add(f.proxy.pid())
    finally:
        time.sleep(0.5)
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert len(pids) == 6  # six reloads
    assert counts["bad"] == 0, why[:5]
    assert counts["ok"] > 100
