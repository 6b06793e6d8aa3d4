"""The routing layer on real parts: a local fleet (hosts as namespaces, real
LXC containers running busybox httpd), the hub's route table, dc-router and
Debian's HAProxy 2.6 in the router's own namespace."""
from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import threading
import time

import pytest

from dcctl import auth, errors, procs, wire
from tests.router.conftest import (domain, ensure_router, get, haproxy_pids, router_alive, router_status,
                                   served_by, start_router, wait_converged, wait_for, wait_page)

pytestmark = pytest.mark.lxc


def replicas(hub, prefix: str, n: int, route: str) -> list[dict]:
    return [hub.call("create_container", "busybox", f"{prefix}.{i}", {"route": route}) for i in range(n)]


def test_get_through_the_router_for_a_placed_container(hub, fleet):
    made = hub.call("create_container", "busybox", "rt.web")
    name = f"rt.web.{domain(fleet)}"
    assert made["routes"] == [name]
    assert served_by(wait_page(fleet, name)) == "rt.web"
    assert hub.call("container_inspect", "rt.web")["routes"] == [name]
    listed = {r["name"]: r for r in hub.call("route_ls")}
    (backend,) = listed[name]["backends"]
    assert backend == {"container": "rt.web", "container_port": 80, "host": made["host"],
                       "address": made["address"], "port": made["ports"][0]["host_port"], "healthy": True,
                       "status": "up", "routed": True}
    # an unknown name: 404 from the router itself; a name of no host: 404 too
    status, body = get(fleet, f"nothing.{domain(fleet)}")
    assert status == 404 and "no route" in body
    # upper case and a port in the Host header still route
    status, body = get(fleet, f"RT.WEB.{domain(fleet).upper()}:80")
    assert status == 200 and served_by(body) == "rt.web"
    # no_route: no route made
    assert hub.call("create_container", "busybox", "rt.quiet", {"no_route": True})["routes"] == []
    assert not [r for r in hub.call("route_ls") if r["name"].startswith("rt.quiet")]


def test_three_replicas_behind_one_name_each_answer(hub, fleet):
    name = f"www.{domain(fleet)}"
    made = replicas(hub, "rep", 3, name)
    assert {m["host"] for m in made} == {"host-1", "host-2", "host-3"}
    wait_converged(fleet, hub)
    seen = set()
    for _ in range(30):
        status, body = get(fleet, name)
        assert status == 200
        seen.add(served_by(body))
    assert seen == {"rep.0", "rep.1", "rep.2"}
    # a wildcard name routes every name under it that has no exact route
    hub.call("route_add", f"*.apps.{domain(fleet)}", "rep.1", 80)
    wait_converged(fleet, hub)
    status, body = get(fleet, f"anything.apps.{domain(fleet)}")
    assert status == 200 and served_by(body) == "rep.1"


def test_a_destroyed_replica_is_never_reached_again(hub, fleet):
    name = f"gone.{domain(fleet)}"
    replicas(hub, "gone", 3, name)
    wait_converged(fleet, hub)
    hub.call("container_destroy", "gone.1", True)
    for _ in range(40):
        status, body = get(fleet, name)
        assert status == 200 and served_by(body) in ("gone.0", "gone.2")
    wait_converged(fleet, hub)
    assert [b["container"] for r in hub.call("route_ls") if r["name"] == name
            for b in r["backends"]] == ["gone.0", "gone.2"]


def test_no_healthy_backend_is_a_clear_503(hub, fleet):
    name = f"down.{domain(fleet)}"
    hub.call("create_container", "busybox", "down.0", {"route": name})
    wait_page(fleet, name)
    hub.call("container_stop", "down.0", 2)
    wait_for("the hub to see it stopped",
             lambda: [b for r in hub.call("route_ls") if r["name"] == name for b in r["backends"]
                      if b["status"] == "not_running"])
    wait_converged(fleet, hub)
    status, body = get(fleet, name)
    assert status == 503 and "no healthy backend" in body
    hub.call("container_start", "down.0")
    assert served_by(wait_page(fleet, name)) == "down.0"


def test_load_while_backends_come_and_go_loses_no_request(hub, fleet):
    """4 clients for at most 20 s while 20 backend changes (route_add /
    route_rm of two containers) and 4 new names (4 reloads) go through the
    router: no request fails."""
    name = f"load.{domain(fleet)}"
    replicas(hub, "load", 2, name)
    for i in (2, 3):
        hub.call("create_container", "busybox", f"load.{i}", {"no_route": True})
    wait_converged(fleet, hub)
    stop = threading.Event()
    counts = {"ok": 0, "failed": 0}
    failures: list[str] = []
    lock = threading.Lock()

    def client():
        while not stop.is_set():
            try:
                status, body = get(fleet, name, timeout_s=10)
                good = status == 200 and served_by(body) is not None
                why = f"status {status}"
            except OSError as exc:
                good, why = False, f"{type(exc).__name__}: {exc}"
            with lock:
                counts["ok" if good else "failed"] += 1
                if not good:
                    failures.append(why)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        changes = reloads = 0
        pids = set(haproxy_pids(fleet))
        while changes < 20 and time.monotonic() - started < 18:
            c = f"load.{2 + changes // 2 % 2}"
            if changes % 2 == 0:
                hub.call("route_add", name, c, 80)
            else:
                hub.call("route_rm", name, c, 80)
            changes += 1
            if changes % 5 == 0:  # and a new name: HAProxy reloads under the load
                hub.call("route_add", f"load{changes}.{domain(fleet)}", c, 80)
                reloads += 1
            time.sleep(0.4)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=15)
    assert changes == 20 and reloads == 4
    assert counts["failed"] == 0, failures[:5]
    assert set(haproxy_pids(fleet)) != pids  # it did reload
    assert counts["ok"] > 40, counts
    wait_converged(fleet, hub)


def test_router_killed_haproxy_serves_and_a_restart_converges(hub, fleet):
    name = f"kill.{domain(fleet)}"
    hub.call("create_container", "busybox", "kill.0", {"route": name})
    wait_page(fleet, name)
    os.kill(fleet["router"]["pid"], signal.SIGKILL)
    wait_for("the router to die", lambda: not router_alive(fleet))
    for _ in range(10):
        assert get(fleet, name)[0] == 200
    # changes while the router is down: a new name, a new backend
    later = f"later.{domain(fleet)}"
    hub.call("create_container", "busybox", "kill.1", {"route": [name, later]})
    assert get(fleet, later)[0] == 404
    start_router(fleet)
    assert served_by(wait_page(fleet, later)) == "kill.1"
    wait_converged(fleet, hub)
    assert {served_by(get(fleet, name)[1]) for _ in range(10)} == {"kill.0", "kill.1"}


def test_haproxy_restarted_brings_every_route_back(hub, fleet):
    name = f"again.{domain(fleet)}"
    replicas(hub, "again", 2, name)
    wait_converged(fleet, hub)
    # killed under the router: the router starts it again from its config
    old = set(haproxy_pids(fleet))
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    wait_for("a new haproxy", lambda: set(haproxy_pids(fleet)) and not set(haproxy_pids(fleet)) & old)
    assert served_by(wait_page(fleet, name)) in ("again.0", "again.1")
    wait_converged(fleet, hub)
    assert {served_by(get(fleet, name)[1]) for _ in range(10)} == {"again.0", "again.1"}
    # with the router gone too, HAProxy started by hand from the router's
    # config serves every route at once (the config is kept current)
    os.kill(fleet["router"]["pid"], signal.SIGKILL)
    wait_for("the router to die", lambda: not router_alive(fleet))
    for pid in haproxy_pids(fleet):
        os.kill(pid, signal.SIGKILL)
    wait_for("haproxy to be gone", lambda: not haproxy_pids(fleet))
    cfg = os.path.join(fleet["router"]["state_dir"], "haproxy.cfg")
    subprocess.run(["nsenter", f"--net=/run/netns/{fleet['router']['netns']}", "--", "/usr/sbin/haproxy",
                    "-D", "-f", cfg, "-p", os.path.join(fleet["router"]["state_dir"], "haproxy.pid")],
                   check=True, timeout=30)
    assert served_by(wait_page(fleet, name, timeout_s=10)) in ("again.0", "again.1")
    assert {served_by(wait_page(fleet, name)) for _ in range(10)} == {"again.0", "again.1"}
    ensure_router(fleet)
    wait_converged(fleet, hub)


def test_bad_input_gets_typed_errors_and_changes_nothing(hub, fleet):
    hub.call("create_container", "busybox", "bad.0", {"route": f"bad.{domain(fleet)}"})
    before = hub.call("route_ls")
    cases = [
        (("Upper.Case.test", "bad.0", 80), errors.InvalidArgument),
        (("under_score.test", "bad.0", 80), errors.InvalidArgument),
        (("*", "bad.0", 80), errors.InvalidArgument),
        (("a..b", "bad.0", 80), errors.InvalidArgument),
        (("tcp:70000", "bad.0", 80), errors.InvalidArgument),
        (("x" * 64 + ".test", "bad.0", 80), errors.InvalidArgument),
        (("ok.test", "bad..0", 80), errors.InvalidArgument),
        (("ok.test", "bad.0", 0), errors.InvalidArgument),
        (("ok.test", "nobody.here", 80), errors.NoSuchContainer),
        (("ok.test", "bad.0", 81), errors.NoSuchPortMapping),
        ((f"bad.{domain(fleet)}", "bad.0", 80), errors.RouteExists),
    ]
    for args, exc in cases:
        with pytest.raises(exc):
            hub.call("route_add", *args)
    with pytest.raises(errors.NoSuchRoute):
        hub.call("route_rm", "ok.test", "bad.0", 80)
    with pytest.raises(errors.InvalidArgument):
        hub.call("route_add", "ok.test", "bad.0", "80")
    for opts in ({"route": "Not A Name"}, {"route": f"a.{domain(fleet)}", "no_route": True},
                 {"route": []}, {"no_route": "yes"}):
        with pytest.raises(errors.InvalidArgument):
            hub.call("create_container", "busybox", "bad.1", opts)
    assert "bad.1" not in {c["name"] for c in hub.call("container_ls")}
    with pytest.raises(errors.InvalidArgument):
        hub.call("route_table", "", 99)
    assert hub.call("route_ls") == before


def test_the_router_role_reads_routes_and_nothing_else(hub, fleet):
    r = fleet["router"]
    keys = auth.ClientKeys.from_files(r["key"], fleet["hub"]["public_key"])
    with wire.connect(fleet["hub"]["tcp"], timeout_s=20, keys=keys) as c:
        table = c.call("route_table", "", 0)
        assert set(table) == {"version", "routes", "domain"} and table["domain"] == domain(fleet)
        assert c.call("route_ls") == table["routes"]
        for method, args in (("container_ls", ()), ("hosts", ()), ("route_add", ("x.test", "a", 80)),
                             ("create_container", ("busybox", "evil")), ("host_heartbeat", ("host-1", {}))):
            with pytest.raises(errors.PermissionDenied):
                c.call(method, *args)


def test_several_routers_converge_on_the_table(hub, fleet, tmp_path):
    """A second router (its own state dir, loopback of the router's
    namespace, the hub over ipc) serves the same names."""
    name = f"two.{domain(fleet)}"
    hub.call("create_container", "busybox", "two.0", {"route": name})
    wait_page(fleet, name)
    state = str(tmp_path / "router2")
    ns = fleet["router"]["netns"]
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "--", "python3", "-m", "router.main",
                             "--hub", fleet["hub"]["ipc"], "--state-dir", state, "--listen", "127.0.0.1:8081",
                             "--stop-haproxy"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def page():
            out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", "--", "curl", "-s", "-m", "2",
                                  "-H", f"Host: {name}", "http://127.0.0.1:8081/"], capture_output=True, text=True)
            return served_by(out.stdout)
        assert wait_for("the second router to serve", page) == "two.0"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        left = procs.pids_with(state)
        for p in left:
            os.kill(int(p), signal.SIGKILL)
        assert not left, "the second router's haproxy outlived --stop-haproxy"


def test_router_status_names_the_haproxy_it_runs(hub, fleet):
    st = wait_for("a status", lambda: router_status(fleet).get("haproxy_pid") and router_status(fleet))
    assert st["haproxy_pid"] in haproxy_pids(fleet) and st["hub_ok"]
    mode = os.stat(os.path.join(fleet["router"]["state_dir"], "admin.sock")).st_mode & 0o777
    assert mode == 0o600


def test_a_tcp_route_listens_on_its_port(hub, fleet):
    hub.call("create_container", "busybox", "tcpr.0", {"no_route": True})
    hub.call("route_add", "tcp:8500", "tcpr.0", 80)
    wait_converged(fleet, hub)
    addr = fleet["router"]["listen"].rsplit(":", 1)[0]
    conn = http.client.HTTPConnection(addr, 8500, timeout=5)
    conn.request("GET", "/", headers={"Host": "anything"})
    assert served_by(conn.getresponse().read().decode()) == "tcpr.0"
    conn.close()
    hub.call("route_rm", "tcp:8500", "tcpr.0", 80)
    wait_converged(fleet, hub)
    with pytest.raises(OSError):
        socket.create_connection((addr, 8500), timeout=2).close()


def test_a_backend_is_added_only_once_it_answers(hub, fleet):
    """A container that does not serve yet (created, not started) is not
    put behind the name: the name answers 503, never a failed connect,
    until it serves."""
    name = f"late.{domain(fleet)}"
    hub.call("create_container", "busybox", "late.0", {"route": name, "no_start": True})
    seen = set()

    def served_503():
        status, body = get(fleet, name)
        seen.add(status)
        return status == 503 and "no healthy backend" in body
    wait_for("the name to answer 503", served_503)
    wait_for("the router to know it", lambda: router_status(fleet).get("hub_version")
             == hub.call("route_table", "", 0)["version"])
    for _ in range(10):
        assert served_503()
    assert seen <= {404, 503}  # unknown for a moment, then known without a backend
    hub.call("container_start", "late.0")
    assert served_by(wait_page(fleet, name)) == "late.0"
