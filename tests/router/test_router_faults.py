"""Routes through host faults: a lost agent's running containers keep
serving (HAProxy's checks decide) until they stop or move, and a container
moved by failover is routed at its new host."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dcctl import wire
from ops import fleet as fleetmod
from router import follower
from router import haproxy as hx
from tests.router.conftest import (HEARTBEAT_S, domain, get, router_status, served_by, wait_converged, wait_for,
                                   wait_page)

pytestmark = pytest.mark.lxc


def backends(hub, name: str) -> list[dict]:
    return [b for r in hub.call("route_ls") if r["name"] == name for b in r["backends"]]


def restart_agent(fleet, host: dict) -> None:
    proc = fleetmod._spawn(fleetmod.agent_argv(fleet, host, []), host["log"], host["pid_file"])
    host["pid"] = proc.pid
    wait_for("the agent to answer", lambda: fleetmod.ping(host["ipc"]), 60, 0.2)


def _servers(fleet, route: str) -> list[hx.ServerStat]:
    """HAProxy's servers of ``route`` (through the router's admin socket)."""
    rt = hx.Runtime(os.path.join(fleet["router"]["state_dir"], "admin.sock"))
    return [s for s in rt.stats()[2] if s.backend == hx.backend_name(route)]


def _kill_containers(host: dict, names: list[str]) -> None:
    lxc_path = os.path.join(host["state_dir"], "lxc")
    for c in names:
        subprocess.run(["nsenter", f"--net=/run/netns/{host['netns']}", "lxc-stop", "-P", lxc_path,
                        "-n", c, "-k"], capture_output=True, timeout=60, check=True)


def test_a_lost_agents_running_containers_keep_serving_until_they_stop(hub, fleet):
    """Only the agent dies: the hub loses the host, but its containers run
    on, so the routers keep them and HAProxy's checks decide; once the
    container dies too, HAProxy stops sending to it within its check bound;
    the agent back, the backend is served once."""
    victim = fleet["hosts"][2]
    solo, pair = f"solo.{domain(fleet)}", f"pair.{domain(fleet)}"
    hub.call("create_container", "busybox", "keep.1", {"route": pair, "host": "host-1"})
    hub.call("create_container", "busybox", "keep.2", {"route": [solo, pair], "host": victim["name"]})
    wait_converged(fleet, hub)
    assert served_by(wait_page(fleet, solo)) == "keep.2"
    os.kill(victim["pid"], signal.SIGKILL)  # the agent only: keep.2 runs on
    try:
        wait_for("the hub to lose the host",
                 lambda: [b for b in backends(hub, solo) if b["status"] == "host_unreachable"], 30)
        (b,) = backends(hub, solo)
        assert not b["healthy"] and b["routed"]
        wait_converged(fleet, hub)
        # the app whose only container is on the lost host is not down
        for _ in range(20):
            status, body = get(fleet, solo)
            assert status == 200 and served_by(body) == "keep.2"
        assert {served_by(get(fleet, pair)[1]) for _ in range(20)} == {"keep.1", "keep.2"}
        # now the container dies too: HAProxy's checks take it out
        (old,) = [s for s in _servers(fleet, pair) if s.name.startswith("keep.2_")]
        _kill_containers(victim, ["keep.2"])
        died = time.monotonic()
        wait_for("HAProxy to mark keep.2 DOWN",
                 lambda: all(s.status.startswith("DOWN") for s in _servers(fleet, pair) if s.name == old.name),
                 hx.CHECK_DOWN_BOUND_SECONDS + 5, 0.05)
        down_s = time.monotonic() - died
        print(f"\nthe container of a lost agent killed: DOWN in HAProxy after {down_s:.2f} s "
              f"(bound {hx.CHECK_DOWN_BOUND_SECONDS:g} s)")
        for _ in range(20):
            status, body = get(fleet, pair)
            assert status == 200 and served_by(body) == "keep.1"
        assert get(fleet, solo)[0] == 503
    finally:
        restart_agent(fleet, victim)
    wait_for("the host back", lambda: all(h["state"] == "alive" for h in hub.call("hosts")), 30)
    wait_for("keep.2 reported stopped", lambda: [b for b in backends(hub, pair)
                                                 if b["container"] == "keep.2" and not b["routed"]], 30)
    wait_converged(fleet, hub)
    assert [s.name for s in _servers(fleet, pair)] == [s.name for s in _servers(fleet, pair)
                                                        if s.name.startswith("keep.1_")]
    hub.call("container_start", "keep.2")
    wait_for("keep.2 back", lambda: all(b["healthy"] for b in backends(hub, pair)), 30)
    wait_converged(fleet, hub)
    assert sorted(s.name.split("_")[0] for s in _servers(fleet, pair)) == ["keep.1", "keep.2"]  # once each
    assert {served_by(get(fleet, pair)[1]) for _ in range(20)} == {"keep.1", "keep.2"}


def test_a_lost_host_whose_network_is_gone_gets_no_requests_past_the_check_bound(hub, fleet):
    """The agent dies and then the host's network goes (its forwarded
    traffic dropped: a connect to its containers is never answered): HAProxy
    marks the kept backend DOWN within its bound, and requests go to the
    other backend."""
    victim = fleet["hosts"][2]
    name = f"gone.{domain(fleet)}"
    hub.call("create_container", "busybox", "gone.1", {"route": name, "host": "host-1"})
    hub.call("create_container", "busybox", "gone.2", {"route": name, "host": victim["name"]})
    wait_converged(fleet, hub)
    os.kill(victim["pid"], signal.SIGKILL)
    rule = ["-m", "comment", "--comment", f"{fleet['prefix']}-blackhole", "-j", "DROP"]
    netns = ["ip", "netns", "exec", victim["netns"], "iptables", "-w"]
    try:
        wait_for("the hub to lose the host",
                 lambda: [b for b in backends(hub, name) if b["status"] == "host_unreachable" and b["routed"]], 30)
        wait_converged(fleet, hub)
        assert {served_by(get(fleet, name)[1]) for _ in range(20)} == {"gone.1", "gone.2"}
        (old,) = [s for s in _servers(fleet, name) if s.name.startswith("gone.2_")]
        subprocess.run([*netns, "-I", "FORWARD", "1", *rule], check=True, timeout=30)
        cut = time.monotonic()
        wait_for("HAProxy to mark gone.2 DOWN",
                 lambda: all(s.status.startswith("DOWN") for s in _servers(fleet, name) if s.name == old.name),
                 hx.CHECK_DOWN_BOUND_SECONDS + 5, 0.05)
        print(f"\na lost host's network cut: DOWN in HAProxy after {time.monotonic() - cut:.2f} s "
              f"(bound for a host that is gone 3.5 s)")
        for _ in range(20):
            status, body = get(fleet, name)
            assert status == 200 and served_by(body) == "gone.1"
    finally:
        subprocess.run([*netns, "-D", "FORWARD", *rule], capture_output=True, timeout=30)
        restart_agent(fleet, victim)
    wait_for("gone.2 back", lambda: all(b["healthy"] for b in backends(hub, name)), 30)


def test_a_container_moved_off_a_lost_agent_is_not_served_at_its_old_address(hub, fleet):
    """The agent dies, its container runs on; failover makes it again on
    another host: the route follows the record and the old copy, still
    answering, gets no more requests; the agent back, the stale copy goes."""
    victim = fleet["hosts"][1]
    name = f"away.{domain(fleet)}"
    hub.call("create_container", "busybox", "away.0", {"route": name, "restart": "always", "host": victim["name"]})
    wait_converged(fleet, hub)
    (before,) = backends(hub, name)
    os.kill(victim["pid"], signal.SIGKILL)
    routed = set()  # every (address, port) the hub gave routers meanwhile
    try:
        def moved():
            (b,) = backends(hub, name)
            if b["routed"]:
                routed.add((b["address"], b["port"]))
            return b["healthy"] and b["host"] != victim["name"] and b
        after = wait_for("the route at the new host", moved, 60, 0.05)
        wait_converged(fleet, hub)
        assert after["address"] != before["address"]
        # never the new host's address with the lost host's port (before: routed
        # while the move ran; another container there may map that port)
        assert routed <= {(before["address"], before["port"]), (after["address"], after["port"])}, routed
        serving = [s for s in _servers(fleet, name) if not s.draining and not s.maint]
        assert [s.address for s in serving] == [f"{after['address']}:{after['port']}"]
        # the old copy still answers at its old address, but not through the router
        assert follower.probe(hx.Server("away.0", 80, before["address"], before["port"]), True)
        for _ in range(10):
            assert get(fleet, name)[0] == 200
    finally:
        restart_agent(fleet, victim)
    wait_for("the stale copy removed", lambda: all(c["name"] != "away.0" for c in _agent_ls(victim)), 30)
    wait_converged(fleet, hub)
    assert [s.address for s in _servers(fleet, name)] == [f"{after['address']}:{after['port']}"]


def test_a_container_moved_by_failover_is_routed_at_its_new_host(hub, fleet):
    victim = fleet["hosts"][1]
    name = f"moved.{domain(fleet)}"
    placed = hub.call("create_container", "busybox", "moved.0",
                      {"route": name, "restart": "always", "host": victim["name"]})
    assert served_by(wait_page(fleet, name)) == "moved.0"
    died = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)  # the host dies: agent and containers
    lxc_path = os.path.join(victim["state_dir"], "lxc")
    for c in os.listdir(lxc_path):
        subprocess.run(["nsenter", f"--net=/run/netns/{victim['netns']}", "lxc-stop", "-P", lxc_path,
                        "-n", c, "-k"], capture_output=True, timeout=60)
    try:
        def moved():
            (b,) = backends(hub, name)
            return b["healthy"] and b["host"] != victim["name"] and b
        b = wait_for("the route at the new host", moved, 60, 0.1)
        routed = time.monotonic() - died
        assert served_by(wait_page(fleet, name)) == "moved.0"
        answered = time.monotonic() - died
        print(f"\nfailover: host death to route at {b['host']}: {routed:.1f} s; to a 200 through the router: "
              f"{answered:.1f} s (heartbeat {HEARTBEAT_S:g} s)")
        assert b["address"] != placed["address"]
    finally:
        restart_agent(fleet, victim)
    wait_for("the stale copy removed", lambda: all(c["name"] != "moved.0" for c in _agent_ls(victim)), 30)


def _agent_ls(host: dict) -> list[dict]:
    with wire.connect(host["ipc"], 10) as c:
        return c.call("container_ls")


def test_the_hub_restarted_the_router_follows_again(hub, fleet):
    name = f"hubr.{domain(fleet)}"
    hub.call("create_container", "busybox", "hubr.0", {"route": name})
    wait_page(fleet, name)
    h = fleet["hub"]
    os.kill(h["pid"], signal.SIGKILL)
    wait_for("the router to miss the hub", lambda: not _status(fleet).get("hub_ok"), 60, 0.2)
    assert get(fleet, name)[0] == 200  # HAProxy serves on without hub and router's table
    argv = [sys.executable, "-m", "hub.main", "--listen", h["tcp"], "--listen", h["ipc"], "--state-dir",
            h["state_dir"], "--heartbeat-s", str(HEARTBEAT_S), "--route-domain", fleet["route_domain"]]
    h["pid"] = fleetmod._spawn(argv, h["log"], h["pid_file"]).pid
    wait_for("the hub back", lambda: fleetmod.ping(h["ipc"]), 60, 0.2)
    with wire.connect(h["ipc"], timeout_s=60) as again:
        wait_for("the hosts back", lambda: all(x["state"] == "alive" for x in again.call("hosts")), 30)
        again.call("route_add", f"more.{domain(fleet)}", "hubr.0", 80)
        assert served_by(wait_page(fleet, f"more.{domain(fleet)}", timeout_s=30)) == "hubr.0"
        wait_converged(fleet, again)


def _status(fleet) -> dict:
    return router_status(fleet)
