"""A module-scoped local fleet with a router (3 hosts, a hub, dc-router and
its HAProxy in their own namespaces) and helpers that talk HTTP to it."""
from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import time
from typing import Iterator

import pytest

from dcctl import errors, procs, wire
from ops import fleet as fleetmod

HEARTBEAT_S = 1.0


@contextlib.contextmanager
def router_fleet(head: str, second_octet: int) -> Iterator[dict]:
    """A local fleet of 3 hosts with a router, named ``head`` + 4 hex
    digits on a free 10.<second_octet>.x.0/24; always brought down, checked
    to leave nothing and no haproxy.  Skips without root or haproxy."""
    if os.geteuid() != 0 or not os.path.exists("/usr/sbin/haproxy"):
        pytest.skip("needs root, LXC, network namespaces and haproxy (ops/setup)")
    prefix = head + secrets.token_hex(2)
    state = fleetmod.up(prefix, 3, fleetmod.free_subnet(second_octet), heartbeat_s=HEARTBEAT_S, router=True)
    try:
        yield state
    finally:
        left = fleetmod.down(prefix)
        assert not left, left
        assert not haproxy_pids(state), "haproxy processes left"


@pytest.fixture(scope="module")
def fleet():
    with router_fleet("drt", 209) as state:
        yield state


@pytest.fixture
def hub(fleet):
    """A client of the fleet's hub once every host is alive and the router
    runs; containers a test made (and so their routes) go after it."""
    client = wire.connect(fleet["hub"]["ipc"], timeout_s=120)
    deadline = time.monotonic() + 30
    while True:
        rows = client.call("hosts")
        if len(rows) == len(fleet["hosts"]) and all(h["state"] == "alive" for h in rows):
            break
        assert time.monotonic() < deadline, f"fleet not whole: {rows}"
        time.sleep(0.1)
    ensure_router(fleet)
    yield client
    for c in client.call("container_ls"):
        try:
            client.call("container_destroy", c["name"], True)
        except errors.DcError:
            pass
    for r in client.call("route_ls"):
        for b in r["backends"]:
            try:
                client.call("route_rm", r["name"], b["container"], b["container_port"])
            except errors.DcError:
                pass
    client.close()


def domain(fleet) -> str:
    return fleet["route_domain"]


def router_status(fleet) -> dict:
    try:
        with open(os.path.join(fleet["router"]["state_dir"], "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def haproxy_pids(fleet) -> list[int]:
    cfg = os.path.join(fleet["router"]["state_dir"], "haproxy.cfg").encode()
    return [pid for pid, argv in procs.processes() if argv[0].endswith(b"haproxy") and cfg in argv]


def router_alive(fleet) -> bool:
    pid = fleet["router"].get("pid")
    return bool(pid) and fleetmod._alive(pid)


def ensure_router(fleet) -> None:
    """Start the router again if a test killed it."""
    if not router_alive(fleet):
        start_router(fleet)


def start_router(fleet) -> int:
    r = fleet["router"]
    proc = fleetmod._spawn(fleetmod.router_argv(fleet), r["log"], r["pid_file"])
    r["pid"] = proc.pid
    fleetmod.save(fleet)
    return proc.pid


def wait_for(what: str, check, timeout_s: float = 20.0, every_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)


def wait_converged(fleet, hub, timeout_s: float = 20.0) -> None:
    """Until the router has applied the hub's current table fully."""
    def done():
        version = hub.call("route_table", "", 0)["version"]
        st = router_status(fleet)
        return st.get("converged") and st.get("version") == version
    wait_for("the router to converge", done, timeout_s)


def get(fleet, host: str, path: str = "/", timeout_s: float = 5.0) -> tuple[int, str]:
    """GET through the router with ``Host: host``: (status, body)."""
    addr, port = fleet["router"]["listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(addr, int(port), timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace")
    finally:
        conn.close()


def served_by(body: str) -> str | None:
    """The container name in busybox's page (``<title>NAME</title>``)."""
    if "<title>" in body:
        return body.split("<title>", 1)[1].split("</title>", 1)[0]
    return None


def wait_page(fleet, host: str, timeout_s: float = 20.0) -> str:
    def ok():
        try:
            status, body = get(fleet, host, timeout_s=2)
        except OSError:
            return None
        return body if status == 200 else None
    return wait_for(f"200 from {host}", ok, timeout_s)
