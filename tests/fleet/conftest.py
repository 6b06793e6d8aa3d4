"""A module-scoped local fleet (4 simulated hosts and a hub) for fleet tests."""
from __future__ import annotations

import contextlib
import os
import secrets
from typing import Iterator

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.waiting import wait_for

MiB = 1 << 20
RESERVABLE = 1024 * MiB
HEARTBEAT_S = 1.0


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


def hub_session(fleet: dict) -> Iterator[wire.RpcClient]:
    """A client of the fleet's hub, once every host is alive (a loaded
    machine can delay a heartbeat past the deadline: tests start from a
    whole fleet); the containers a test made are destroyed after it.  For a
    fixture: ``yield from hub_session(fleet)``."""
    client = wire.connect(fleet["hub"]["ipc"], timeout_s=120)
    wait_for(lambda: (lambda rows: len(rows) == len(fleet["hosts"]) and all(h["state"] == "alive" for h in rows))(
        client.call("hosts")), 60, "every host alive", ignore=(errors.Unreachable, errors.CallTimeout))
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


