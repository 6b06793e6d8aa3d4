"""A module-scoped local fleet (4 simulated hosts and a hub) for fleet tests."""
from __future__ import annotations

import os
import secrets

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.waiting import wait_for

MiB = 1 << 20
RESERVABLE = 1024 * MiB
HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("needs root, LXC and network namespaces")
    prefix = "dft" + secrets.token_hex(2)
    state = fleetmod.up(prefix, 4, fleetmod.free_subnet(209), agent_args=[f"--reservable-memory-bytes={RESERVABLE}"],
                        heartbeat_s=HEARTBEAT_S)
    try:
        yield state
    finally:
        left = fleetmod.down(prefix)
        assert not left, left


@pytest.fixture
def hub(fleet):
    """A client of the fleet's hub, once every host is alive (a loaded
    machine can delay a heartbeat past the deadline: tests start from a
    whole fleet); containers a test made are destroyed after it."""
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


def agent(fleet, host: str) -> wire.RpcClient:
    h = next(h for h in fleet["hosts"] if h["name"] == host)
    return wire.connect(h["ipc"], timeout_s=120)


