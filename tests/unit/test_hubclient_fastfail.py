"""An agent's hub link notices a hub killed with SIGKILL by its closed
connection and registers with the next hub at once (after its random
delay), not after missed heartbeats: real dc-hub processes over ipc, the
real HubLink.

The link beats every 10 s, so a link that waited for an unanswered beat
(let alone FAILOVER_AFTER of them) would pass the deadline; the deadline
fails such a link and measures nothing."""
from __future__ import annotations

import os
import signal
import sys

import gevent
import gevent.subprocess as subprocess
import pytest

from agents.hubclient import HubLink
from dcctl import errors, wire
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CAPACITY = {"memory_reservable_bytes": 1 << 30, "container_slots": 10}
HEARTBEAT_SECONDS = 10.0
JITTER_SECONDS = 0.5
DEADLINE_SECONDS = 6.0  # well under one heartbeat


class StandInAgent:
    @wire.expose(access="read")
    def container_ls(self) -> list:
        return []


@pytest.fixture
def hub_procs(tmp_path):
    procs = []

    def start(name: str) -> tuple[subprocess.Popen, str]:
        endpoint = f"ipc://{tmp_path}/{name}.sock"
        proc = subprocess.Popen([sys.executable, "-m", "hub.main", "--listen", endpoint,
                                 "--state-dir", str(tmp_path / name), "--heartbeat-s", str(HEARTBEAT_SECONDS),
                                 "--hub-name", f"ffl-{name}", "--log-level", "WARNING"], cwd=REPO)
        procs.append(proc)

        def answers():
            with wire.connect(endpoint, timeout_s=2) as c:
                return c.call("_zerorpc_ping")
        wait_for(answers, 60, f"hub {name} answers", ignore=(errors.Unreachable, errors.CallTimeout))
        return proc, endpoint

    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def _hosts(endpoint: str) -> list[str]:
    with wire.connect(endpoint, timeout_s=5) as c:
        return [h["name"] for h in c.call("hosts")]


def test_a_hub_killed_is_left_for_the_next_one_within_the_jitter_not_after_missed_beats(hub_procs, tmp_path):
    proc_a, hub_a = hub_procs("a")
    _, hub_b = hub_procs("b")
    agent = wire.Service(StandInAgent(), "dc-agent@ffl-1")
    agent_ep = f"ipc://{tmp_path}/agent.sock"
    agent.bind(agent_ep)
    agent.start()
    link = HubLink([hub_a, hub_b], {"name": "ffl-1", "endpoint": agent_ep, "address": "", "labels": {}},
                   lambda: {"capacity": CAPACITY, "containers": []}, heartbeat_s=HEARTBEAT_SECONDS,
                   jitter_s=JITTER_SECONDS)
    link.start()
    try:
        wait_for(lambda: _hosts(hub_a) == ["ffl-1"], 30, "joined hub a")
        wait_for(lambda: link.registered and link.failures == 0, 30, "heartbeats accepted by hub a")
        gevent.sleep(0.5)  # between beats: nothing in flight when the hub dies
        proc_a.send_signal(signal.SIGKILL)
        proc_a.wait()
        wait_for(lambda: link.endpoint == hub_b and link.registered, DEADLINE_SECONDS,
                 "the link registered with hub b", interval_s=0.05)
        assert _hosts(hub_b) == ["ffl-1"]
        assert link.switches == 1 and link.rejoins == 1
    finally:
        link.stop()
        agent.stop()
