"""A module-scoped local fleet (4 simulated hosts and a hub) for fleet tests."""
from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
from typing import Iterator

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from ops.fleetlib.etcd import ETCD_BINARY
from tests.waiting import wait_for

MiB = 1 << 20
RESERVABLE = 1024 * MiB
HEARTBEAT_S = 1.0
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@contextlib.contextmanager
def local_fleet(head: str, hosts: int, second_octet: int, **up_args) -> Iterator[dict]:
    """A local fleet (ops.fleet.up) named ``head`` + 4 hex digits, on a free
    10.<second_octet>.x.0/24, heartbeats every HEARTBEAT_S unless given;
    always brought down (and checked to leave nothing) after.  Skips
    without root."""
    if os.geteuid() != 0:
        pytest.skip("needs root, LXC and network namespaces")
    prefix = head + secrets.token_hex(2)
    up_args.setdefault("heartbeat_s", HEARTBEAT_S)
    state = fleetmod.up(prefix, hosts, fleetmod.free_subnet(second_octet), **up_args)
    try:
        yield state
    finally:
        left = fleetmod.down(prefix)
        assert not left, left


@contextlib.contextmanager
def cli_etcd_fleet(head: str, second_octet: int) -> Iterator[tuple[str, subprocess.CompletedProcess]]:
    """``ops/fleet up 3 --store etcd --hubs 2`` run as an operator runs it
    (the command line, its printed exports and ``hub`` lines kept for the
    test), on a free 10.<second_octet>.x.0/24, prefix ``head`` + 4 hex
    digits: yields (prefix, the finished command); always brought down
    (and checked to leave nothing) after.  Skips without root or etcd."""
    if os.geteuid() != 0 or not os.path.exists(ETCD_BINARY):
        pytest.skip("needs root, LXC, network namespaces and etcd-server")
    prefix = head + secrets.token_hex(2)
    up = subprocess.run([os.path.join(REPO, "ops", "fleet"), "up", "3", "--prefix", prefix, "--fleet-subnet",
                         fleetmod.free_subnet(second_octet), "--store", "etcd", "--hubs", "2"], cwd=REPO,
                        capture_output=True, text=True, timeout=600)
    try:
        assert up.returncode == 0, up.stderr
        yield prefix, up
    finally:
        left = fleetmod.down(prefix)
        assert not left, left


def hub_session(fleet: dict) -> Iterator[wire.RpcClient]:
    """A client of the fleet's hub, once every host is alive and was heard
    within the last two heartbeats (a loaded machine can delay a heartbeat
    past the deadline, and an agent a test killed and restarted is still
    "alive" to the hub until its grace ends, though it has not registered
    again: tests start from a whole fleet); the containers a test made are
    destroyed after it.  For a fixture: ``yield from hub_session(fleet)``."""
    client = wire.connect(fleet["hub"]["ipc"], timeout_s=120)
    fresh_s = 2 * fleet.get("heartbeat_s", HEARTBEAT_S)
    wait_for(lambda: (lambda rows: len(rows) == len(fleet["hosts"]) and all(
        h["state"] == "alive" and h["heartbeat_age_s"] < fresh_s for h in rows))(client.call("hosts")),
             60, "every host alive and heard lately", ignore=(errors.Unreachable, errors.CallTimeout))
    yield client
    client.close()
    # a test may have restarted the hub: a new client, once the hub answers
    with wire.connect(fleet["hub"]["ipc"], timeout_s=120) as again:
        (listed,) = wait_for(lambda: (again.call("container_ls"),), 60, "the hub to answer",
                             ignore=(errors.Unreachable, errors.CallTimeout))
        for c in listed:
            try:
                again.call("container_destroy", c["name"], True)
            except errors.DcError:
                pass


@pytest.fixture(scope="module")
def fleet():
    with local_fleet("dft", 4, 209, agent_args=[f"--reservable-memory-bytes={RESERVABLE}"]) as state:
        yield state


@pytest.fixture
def hub(fleet):
    """A client of the fleet's hub (hub_session)."""
    yield from hub_session(fleet)


def agent(fleet, host: str) -> wire.RpcClient:
    h = next(h for h in fleet["hosts"] if h["name"] == host)
    return wire.connect(h["ipc"], timeout_s=120)


