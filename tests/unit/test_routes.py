"""Routes without a fleet: names, options, the store's route rows on real
SQLite, resolution, and the HAProxy config the router writes (checked by
the real ``haproxy -c`` when it is installed)."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import time

import pytest

from dcctl import errors
from hub import routes
from hub.store import HubStore
from router import follower
from router import haproxy as hx


@pytest.mark.parametrize("name", ["www.dcf.test", "a.b-c.d", "x", "*.dcf.test", "tcp:5432", "tcp:1",
                                  "a1.test", "x" * 63 + ".test"])
def test_good_route_names(name):
    parsed = routes.frontend(name)
    assert parsed["name"] == name
    assert parsed["kind"] == ("tcp" if name.startswith("tcp:") else "http")


@pytest.mark.parametrize("name", ["", "WWW.dcf.test", "a_b.test", "*", "*.", "a..b", ".a", "a.", "-a.test",
                                  "a-.test", "*.*.test", "a.*.test", "x" * 64 + ".test", "tcp:0", "tcp:65536",
                                  "tcp:", "tcp:x", "a b", "a/b", "a:80", "1.2.3.4", "*.42",
                                  ".".join(["a" * 63] * 4) + ".b", 5, None])
def test_bad_route_names(name):
    with pytest.raises(errors.InvalidArgument):
        routes.frontend(name)


def test_default_names():
    assert routes.default_name("demo.web", "dcf.test") == "demo.web.dcf.test"
    assert routes.default_name("My_App.Web", "dcf.test") == "my-app.web.dcf.test"
    assert routes.default_name("-x", "dcf.test") is None


def test_create_options():
    assert routes.take_options(None) == (None, {"routes": None, "no_route": False})
    rest, opts = routes.take_options({"memory_bytes": 1, "route": "a.test"})
    assert rest == {"memory_bytes": 1} and opts == {"routes": ["a.test"], "no_route": False}
    assert routes.take_options({"route": ["a.test", "*.b.test"]})[1]["routes"] == ["a.test", "*.b.test"]
    assert routes.take_options({"no_route": True})[1] == {"routes": None, "no_route": True}
    for bad in ({"route": "A"}, {"route": []}, {"route": 3}, {"no_route": "yes"},
                {"route": "a.test", "no_route": True}, {"route": ["a.test"] * 17}):
        with pytest.raises(errors.InvalidArgument):
            routes.take_options(bad)
    with pytest.raises(errors.InvalidArgument):
        routes.check_create({"name": "x", "exposed_ports": [{"proto": "tcp", "port": 5432}]},
                            {"routes": ["a.test"], "no_route": False})
    routes.check_create({"name": "x", "exposed_ports": []}, {"routes": None, "no_route": False})


@pytest.fixture
def store(tmp_path):
    s = HubStore(str(tmp_path / "hub"))
    yield s
    s.close()


def _place(store, name, host, ports=((80, 20080),)):
    store.claim(name, "img", 0, {}, lambda figures: host)
    store.set_placed(name, "img", [{"proto": "tcp", "container_port": c, "host_port": h} for c, h in ports])


def test_store_routes_follow_their_containers(store):
    store.upsert_host("h1", "tcp://10.0.0.11:7000", "10.0.0.11", {}, {})
    store.upsert_host("h2", "tcp://10.0.0.12:7000", "10.0.0.12", {}, {})
    _place(store, "web.0", "h1")
    _place(store, "web.1", "h2", ((80, 20081), (8080, 20082)))
    assert store.add_route("www.test", "web.0", 80)
    assert store.add_route("www.test", "web.1", 80)
    assert not store.add_route("www.test", "web.1", 80, exist_ok=True)
    with pytest.raises(errors.RouteExists):
        store.add_route("www.test", "web.1", 80)
    with pytest.raises(errors.NoSuchContainer):
        store.add_route("www.test", "nobody", 80)
    with pytest.raises(errors.NoSuchPortMapping):
        store.add_route("www.test", "web.0", 8080)
    table = routes.resolve(store)
    assert [(b["container"], b["address"], b["port"], b["healthy"]) for b in table[0]["backends"]] == [
        ("web.0", "10.0.0.11", 20080, True), ("web.1", "10.0.0.12", 20081, True)]
    v1 = routes.version_of(table)
    assert routes.version_of(routes.resolve(store)) == v1
    assert all(b["routed"] for b in table[0]["backends"])
    # the host is lost: the hub cannot vouch for its backends, and the version
    # changes; they stay routed (their containers may run on without their
    # agent): the routers' health checks decide
    store.mark_unreachable(time.time() + 1)
    table = routes.resolve(store)
    assert {(b["status"], b["healthy"], b["routed"]) for b in table[0]["backends"]} == {
        ("host_unreachable", False, True)}
    assert routes.version_of(table) != v1
    # a heartbeat (well after the placement) that says the container stopped
    store.db.execute("UPDATE containers SET updated_at=updated_at-10")
    store.heartbeat("h1", {"containers": [{"name": "web.0", "state": "stopped"}]})
    store.heartbeat("h2", {"containers": [{"name": "web.1", "state": "running"}]})
    statuses = {b["container"]: b["status"] for b in routes.resolve(store)[0]["backends"]}
    assert statuses == {"web.0": "not_running", "web.1": "up"}
    assert {b["container"]: b["routed"] for b in routes.resolve(store)[0]["backends"]} == {
        "web.0": False, "web.1": True}
    # moved by failover: the same route, the new host's address and port
    store.assign("web.0", "h2")
    store.set_placed("web.0", "img", [{"proto": "tcp", "container_port": 80, "host_port": 20099}])
    b = routes.resolve(store)[0]["backends"][0]
    assert (b["host"], b["address"], b["port"], b["healthy"]) == ("h2", "10.0.0.12", 20099, True)
    # forgotten (destroyed): its routes go with it
    store.forget("web.0")
    assert [r["container"] for r in store.routes()] == ["web.1"]
    store.remove_route("www.test", "web.1", 80)
    assert routes.resolve(store) == []
    with pytest.raises(errors.NoSuchRoute):
        store.remove_route("www.test", "web.1", 80)


def test_a_lost_hosts_backend_is_routed_only_if_it_last_ran(store):
    store.upsert_host("h1", "tcp://10.0.0.11:7000", "10.0.0.11", {}, {})
    _place(store, "up.0", "h1")
    _place(store, "down.0", "h1", ((80, 20081),))
    _place(store, "bare.0", "h1", ())
    for c in ("up.0", "down.0"):
        store.add_route("www.test", c, 80)
    store.db.execute("UPDATE containers SET updated_at=updated_at-10")
    store.heartbeat("h1", {"containers": [{"name": "up.0", "state": "running"},
                                          {"name": "down.0", "state": "stopped"}]})
    store.mark_unreachable(time.time() + 1)
    got = {b["container"]: (b["status"], b["healthy"], b["routed"]) for b in routes.resolve(store)[0]["backends"]}
    assert got == {"up.0": ("host_unreachable", False, True), "down.0": ("host_unreachable", False, False)}
    # the host removed (host_remove keeps no rows; a row left without its host): never routed
    store.db.execute("DELETE FROM hosts WHERE name='h1'")
    assert {(b["status"], b["routed"]) for b in routes.resolve(store)[0]["backends"]} == {("host_gone", False)}


def test_desired_keeps_routed_backends_the_hub_cannot_vouch_for():
    def table(**extra):
        return {"version": "v", "routes": [{"name": "a.test", "kind": "http", "listen_port": None, "backends": [
            {"container": "c1", "container_port": 80, "address": "10.0.0.1", "port": 20001, "healthy": False,
             "status": "host_unreachable", **extra}]}]}
    assert list(follower.desired(table(routed=True))[1]["h_a.test"]) == ["c1_80_10.0.0.1_20001"]
    assert follower.desired(table(routed=False))[1]["h_a.test"] == {}
    assert follower.desired(table())[1]["h_a.test"] == {}  # an older hub: healthy ones only


def test_desired_takes_healthy_backends_only():
    table = {"version": "v", "routes": [
        {"name": "a.test", "kind": "http", "listen_port": None, "backends": [
            {"container": "c1", "container_port": 80, "address": "10.0.0.1", "port": 20001, "healthy": True},
            {"container": "c2", "container_port": 80, "address": "10.0.0.2", "port": 20002, "healthy": False},
            {"container": "c3", "container_port": 80, "address": None, "port": None, "healthy": False}]},
        {"name": "*.w.test", "kind": "http", "listen_port": None, "backends": []},
        {"name": "tcp:5432", "kind": "tcp", "listen_port": 5432, "backends": [
            {"container": "db", "container_port": 5432, "address": "10.0.0.3", "port": 20003, "healthy": True}]}]}
    layout, wanted = follower.desired(table)
    assert layout == hx.Layout(("*.w.test", "a.test"), (5432,))
    assert layout.backends() == {"h_a.test", "w_w.test", "t_5432"}
    assert list(wanted["h_a.test"]) == ["c1_80_10.0.0.1_20001"] and wanted["w_w.test"] == {}
    assert list(wanted["t_5432"]) == ["db_5432_10.0.0.3_20003"]


@pytest.mark.skipif(not shutil.which("haproxy") and not os.path.exists(hx.HAPROXY), reason="needs haproxy")
def test_the_written_config_is_valid_and_read_back(tmp_path):
    proxy = hx.Haproxy(str(tmp_path), "127.0.0.1:18480", "127.0.0.1")
    layout = hx.Layout(("*.w.test", "a.test", "b.a.test"), (18490,))
    servers = {"h_a.test": [hx.Server("c1", 80, "10.0.0.1", 20001), hx.Server("c_2", 80, "10.0.0.2", 20002)],
               "t_18490": [hx.Server("db", 5432, "10.0.0.3", 20003)]}
    assert proxy.write(layout, servers)
    assert not proxy.write(layout, servers)  # the same text: not rewritten
    proxy.check_config()
    assert proxy.layout_of_config() == layout
    text = open(proxy.config).read()
    assert "server c1_80_10.0.0.1_20001 10.0.0.1:20001 check" in text and "mode 600" in text
    assert open(tmp_path / "hosts.map").read() == "a.test h_a.test\nb.a.test h_b.a.test\n"
    assert open(tmp_path / "wildcards.map").read() == ".w.test w_w.test\n"
    done = subprocess.run([hx.HAPROXY, "-c", "-f", proxy.config], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_route_ls_says_a_lost_hosts_backend_is_still_routed():
    from dcctl import output
    backend = {"container": "c1", "container_port": 80, "host": "h1", "address": "10.0.0.1", "port": 20001,
               "healthy": False, "status": "host_unreachable"}
    table = [{"name": "a.test", "kind": "http", "listen_port": None, "backends": [
        {**backend, "routed": True}, {**backend, "container": "c2", "routed": False}, {**backend, "container": "c3"}]}]
    out, err = io.StringIO(), io.StringIO()
    assert output.render(table, out, err, method="route_ls") == 0 and err.getvalue() == ""
    assert [line.split()[-2:] for line in out.getvalue().splitlines()[1:]] == [
        ["host_unreachable", "(routed)"], ["10.0.0.1:20001", "host_unreachable"],
        ["10.0.0.1:20001", "host_unreachable"]]
    assert [r["routed"] for r in output.route_rows(table)] == [True, False, False]
