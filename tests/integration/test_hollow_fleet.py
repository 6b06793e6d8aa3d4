"""Hollow fleets (bench/hollow.py): many real agents with a runtime that
starts no container, in one process, against a real dc-hub process over
real ipc sockets.  They register, beat and answer a broadcast like agents;
after a hub restart their registrations are spread over the rejoin jitter
window instead of coming at once.

Everything lives under /tmp/dcscale-<prefix>; every process started has it
in its argv and is killed, and the directory removed, even when a test
fails."""
from __future__ import annotations

import json
import os
import secrets
import sys

import pytest

from bench import _common
from bench.hollow import host_name
from bench.scale import Fleet, registrations
from dcctl import errors, wire
from tests.waiting import wait_for

pytestmark = [pytest.mark.timeout(240)]


@pytest.fixture
def fleet_factory():
    made: list[tuple[list, str]] = []

    def make(heartbeat_s: float, per_process: int) -> Fleet:
        prefix = "scl" + secrets.token_hex(3)
        root = f"/tmp/dcscale-{prefix}"
        os.makedirs(root, mode=0o700)
        procs: list = []
        made.append((procs, root))
        return Fleet(root, prefix, heartbeat_s, per_process, procs)

    yield make
    for procs, root in made:
        _common.teardown(procs, root)
        assert not _common.marked_pids(root), f"processes of {root} left"
        assert not os.path.exists(root)


def _hosts(hub: wire.RpcClient) -> dict:
    try:
        return {h["name"]: h for h in hub.call("hosts")}
    except errors.DcError:
        return {}


def _need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (agents take their locks in /run/dcfleet)")


def test_twenty_hollow_hosts_register_beat_and_answer_a_broadcast(fleet_factory):
    _need_root()
    fleet = fleet_factory(heartbeat_s=0.5, per_process=10)
    fleet.start_hub()
    fleet.grow(20, jitter_s=-1)
    assert len(fleet.hollows) == 2  # ten agents per process
    names = {host_name(fleet.prefix, i) for i in range(20)}
    with wire.connect(fleet.hub_ep, timeout_s=30) as hub:
        first = wait_for(lambda: (lambda h: h if set(h) == names and all(x["state"] == "alive" for x in h.values())
                                  else None)(_hosts(hub)), 60, "20 hollow hosts alive")
        wait_for(lambda: all(_hosts(hub)[n]["last_heartbeat"] > first[n]["last_heartbeat"] for n in names),
                 30, "a newer heartbeat from every host")
        out = hub.call("broadcast", "container_ls", [], {"timeout_s": 20})
        assert out["summary"]["ok"] == 20, out["summary"]
        assert set(out["results"]) == names
        assert all(r == {"status": "ok", "result": []} for r in out["results"].values())
        info = hub.call("broadcast", "hostinfo", [], {"timeout_s": 20})
        assert {r["result"]["host"] for r in info["results"].values()} == names


def _warned(fleet: Fleet) -> int:
    """Hub-link warnings (one per agent and distinct error) in the hollow logs."""
    count = 0
    for name in os.listdir(fleet.root):
        if name.startswith("hollow-"):
            with open(os.path.join(fleet.root, name)) as f:
                count += sum("agents.hubclient WARNING" in line and "retrying" in line for line in f)
    return count


def test_after_a_hub_restart_registrations_spread_over_the_jitter_window(fleet_factory):
    _need_root()
    jitter_s, n = 4.0, 20
    fleet = fleet_factory(heartbeat_s=0.5, per_process=20)
    fleet.start_hub()
    fleet.grow(n, jitter_s=jitter_s)
    with wire.connect(fleet.hub_ep, timeout_s=30) as hub:
        wait_for(lambda: sum(h["state"] == "alive" for h in _hosts(hub).values()) == n, 60, "20 hosts alive")
    fleet.kill_hub()  # SIGKILL
    wait_for(lambda: _warned(fleet) >= n, 60, "every agent's call to the dead hub failed")
    started = fleet.start_hub()
    log = f"{fleet.root}/hub.log"
    wait_for(lambda: len(registrations(log, started)) == n, 60, "20 registrations after the restart")
    times = sorted(registrations(log, started).values())
    # uniform over [0, jitter_s] after the hub answers: 20 draws span at least half the window
    # (failing that has odds near 20 * 0.5**19), and no stampede in its first quarter
    assert times[-1] - times[0] >= jitter_s / 2, times
    assert sum(t < times[0] + jitter_s / 4 for t in times) <= 3 * n // 4, times
    with wire.connect(fleet.hub_ep, timeout_s=30) as hub:
        wait_for(lambda: sum(h["state"] == "alive" for h in _hosts(hub).values()) == n, 60,
                 "every host alive again")


def test_fleet_listings_name_the_hosts_that_did_not_answer(fleet_factory):
    """Four hollow hosts, two per process; one process is killed -9.  The
    hub's volume_ls and hostinfo carry a row per silent host (status,
    message; volume_ls's marked unreachable); ``dcctl volume_ls`` and
    ``dcctl stats --no-stream`` name both silent hosts on stderr, and
    ``dcctl --json stats --no-stream`` has a row {host, status, message,
    unreachable: true} for each."""
    _need_root()
    fleet = fleet_factory(heartbeat_s=0.5, per_process=2)
    fleet.start_hub()
    fleet.grow(4, jitter_s=-1)
    names = [host_name(fleet.prefix, i) for i in range(4)]
    with wire.connect(fleet.hub_ep, timeout_s=30) as hub:
        wait_for(lambda: (lambda h: set(h) == set(names) and all(x["state"] == "alive" for x in h.values()))(
            _hosts(hub)), 60, "4 hollow hosts alive")
        assert hub.call("volume_ls") == []
        victim = fleet.hollows[1]  # hosts 2 and 3
        victim.kill()
        victim.wait()
        silent = names[2:]
        rows = hub.call("volume_ls")
        assert [(r["host"], r["unreachable"]) for r in rows] == [(h, True) for h in silent]
        assert all(r["status"] in ("error", "timeout") and r["message"] for r in rows)
        info = {r["host"]: r for r in hub.call("hostinfo")}
        assert all(info[h]["status"] != "ok" and info[h]["message"] for h in silent)
        assert all(info[h]["status"] == "ok" for h in names[:2])
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "DCCTL_HOST": fleet.hub_ep}

    def dcctl(*args):
        import subprocess
        return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    for argv in (("volume_ls",), ("stats", "--no-stream")):
        done = dcctl(*argv)
        assert done.returncode == 0, done.stderr
        notice = [ln for ln in done.stderr.splitlines() if ln.startswith("dcctl: no answer from 2 host(s)")]
        assert len(notice) == 1 and all(h in notice[0] for h in silent), (argv, done.stderr)
        assert not any(h in done.stdout for h in silent)
    done = dcctl("--json", "stats", "--no-stream")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert sorted(r["host"] for r in out if r.get("unreachable") is True) == silent
