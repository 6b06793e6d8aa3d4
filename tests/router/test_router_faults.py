"""Routes through host faults: a frozen host's backends are drained, and a
container moved by failover is routed at its new host."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from dcctl import wire
from ops import fleet as fleetmod
from tests.router.conftest import (HEARTBEAT_S, domain, get, router_status, served_by, wait_converged, wait_for,
                                   wait_page)

pytestmark = pytest.mark.lxc


def backends(hub, name: str) -> list[dict]:
    return [b for r in hub.call("route_ls") if r["name"] == name for b in r["backends"]]


def restart_agent(fleet, host: dict) -> None:
    proc = fleetmod._spawn(fleetmod.agent_argv(fleet, host, []), host["log"], host["pid_file"])
    host["pid"] = proc.pid
    wait_for("the agent to answer", lambda: fleetmod.ping(host["ipc"]), 60, 0.2)


def test_a_frozen_hosts_backends_are_never_reached(hub, fleet):
    victim = fleet["hosts"][2]
    name = f"ice.{domain(fleet)}"
    for i, host in enumerate(("host-1", "host-2", victim["name"])):
        hub.call("create_container", "busybox", f"ice.{i}", {"route": name, "host": host})
    wait_converged(fleet, hub)
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        wait_for("the hub to lose the host",
                 lambda: [b for b in backends(hub, name) if b["container"] == "ice.2"
                          and b["status"] == "host_unreachable"], 30)
        wait_converged(fleet, hub)
        # its container still runs (containers outlive the agent), but no
        # request sent from now on is routed there
        for _ in range(30):
            status, body = get(fleet, name)
            assert status == 200 and served_by(body) in ("ice.0", "ice.1")
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
    wait_for("the host back", lambda: all(b["healthy"] for b in backends(hub, name)), 30)
    wait_converged(fleet, hub)
    assert {served_by(get(fleet, name)[1]) for _ in range(20)} == {"ice.0", "ice.1", "ice.2"}


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
