"""Containers and port mappings outlive the agent; nothing leaks over many
cycles; a caller that gives up never leaves half-made work."""
from __future__ import annotations

import os
import time

import pytest

from dcctl import errors
from tests.integration.test_agent_lifecycle import http_get, snapshot, wait_http

pytestmark = pytest.mark.lxc


def test_kill9_keeps_containers_and_mappings(agent_factory):
    agent = agent_factory()
    names = ["keep.one", "keep.two", "keep.three"]
    for n in names:
        agent.call("container_create", "busybox", n)
        agent.call("container_start", n)
    m = agent.call("container_connection_add", "keep.one", "tcp", 80)
    url = f"http://127.0.0.1:{m['host_port']}/"
    assert "keep.one" in wait_http(url)
    pids = {c["name"]: c["pid"] for c in agent.call("container_ls")}

    agent.kill9()
    # while the agent is down, the mapping keeps answering (kernel rules) and
    # every container keeps running (its lxc-start monitor is its shim)
    for _ in range(20):
        assert "keep.one" in http_get(url)
    for n in names:
        assert os.path.exists(f"/proc/{pids[n]}")

    agent.start()
    listed = {c["name"]: c for c in agent.call("container_ls")}
    assert {n: listed[n]["state"] for n in names} == {n: "running" for n in names}
    assert {n: listed[n]["pid"] for n in names} == pids  # adopted, not restarted
    assert listed["keep.one"]["ports"][0]["host_port"] == m["host_port"]
    assert "keep.one" in http_get(url)


def test_restart_restores_deleted_rules_and_keeps_operator_stops(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "rules.web")
    agent.call("container_start", "rules.web")
    agent.call("container_create", "busybox", "rules.stopped")
    m = agent.call("container_connection_add", "rules.web", "tcp", 80)
    agent.stop()
    import subprocess
    subprocess.run(["iptables", "-w", "-t", "nat", "-F", f"DCF-{agent.bridge}-DNAT"], check=True)
    agent.start()
    assert "rules.web" in wait_http(f"http://127.0.0.1:{m['host_port']}/")
    states = {c["name"]: c["state"] for c in agent.call("container_ls")}
    assert states == {"rules.web": "running", "rules.stopped": "stopped"}


def test_crash_mid_create_is_rolled_back_at_start(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "half.made")
    before = snapshot(agent)
    agent.stop()
    # forge the record a crash between "reserve" and "ready" leaves behind
    path = os.path.join(agent.state_dir, "containers", "half.made.json")
    import json
    rec = json.load(open(path))
    rec["phase"] = "creating"
    json.dump(rec, open(path, "w"))
    agent.start()
    after = snapshot(agent)
    assert [c["name"] for c in after["ls"]] == []
    assert after["lxc_dirs"] == [] and after["state"] == []
    assert before["ls"][0]["name"] == "half.made"


def test_client_timeout_mid_create_completes_the_create(agent_factory):
    agent = agent_factory()
    import gevent
    with agent.client(timeout_s=0.003) as c:
        with pytest.raises(errors.CallTimeout):
            c.call("container_create", "busybox", "timeout.create")
        gevent.sleep(0.5)  # the request is on the wire; the caller is gone
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        ls = agent.call("container_ls")
        if ls and ls[0]["state"] != "creating":
            break
        time.sleep(0.2)
    assert [(c["name"], c["state"]) for c in ls] == [("timeout.create", "stopped")]
    snap = snapshot(agent)
    assert snap["lxc_dirs"] == ["timeout.create"]
    agent.call("container_destroy", "timeout.create")


def test_many_create_destroy_cycles_leak_nothing(agent_factory):
    agent = agent_factory()
    cycles = int(os.environ.get("DCF_CYCLES", "100"))
    before = snapshot(agent)
    fds_before = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
    with agent.client() as c:
        for i in range(cycles):
            name = f"cycle.{i}"
            c.call("container_create", "busybox", name)
            c.call("container_connection_add", name, "tcp", 80)
            if i % 10 == 0:  # every tenth cycle also runs the container
                c.call("container_start", name)
                c.call("container_destroy", name, True)
            else:
                c.call("container_destroy", name)
    after = snapshot(agent)
    assert after == before
    fds_after = len(os.listdir(f"/proc/{agent.proc.pid}/fd"))
    assert fds_after <= fds_before + 4, (fds_before, fds_after)


def test_a_second_agent_cannot_take_over_a_state_dir_endpoint_or_bridge(agent_factory):
    import subprocess
    import sys
    from tests.agentproc import REPO
    first = agent_factory()
    first.call("container_create", "busybox", "owned.one")
    env = {**os.environ, "PYTHONPATH": REPO}
    cases = {
        "state dir": ["--state-dir", first.state_dir, "--listen", f"ipc://{first.root}/b.sock",
                      "--bridge", first.bridge + "b", "--subnet", "10.213.254.0/24"],
        "endpoint": ["--state-dir", f"{first.root}/other", "--listen", first.endpoint,
                     "--bridge", first.bridge + "c", "--subnet", "10.213.253.0/24"],
        "bridge": ["--state-dir", f"{first.root}/third", "--listen", f"ipc://{first.root}/c.sock",
                   "--bridge", first.bridge, "--subnet", first.subnet],
    }
    for what, args in cases.items():
        done = subprocess.run([sys.executable, "-m", "agents.main", *args, "--port-range", "39900-39910"],
                              capture_output=True, text=True, env=env, cwd=REPO, timeout=60)
        assert done.returncode == 1, (what, done.stderr[-500:])
        assert "Busy" in done.stderr or "Conflict" in done.stderr or "NetworkError" in done.stderr, \
            (what, done.stderr[-500:])
    assert [c["name"] for c in first.call("container_ls")] == ["owned.one"]
    from agents.network import Network
    for bridge in (first.bridge + "b", first.bridge + "c"):
        Network(bridge, "10.213.0.0/24", (1, 2)).teardown()


def test_a_veth_left_behind_does_not_block_the_next_start(agent_factory):
    """PITFALLS: an interrupted stop can leave the fixed host-side veth name
    behind, and LXC then fails with "File exists"; the agent clears it."""
    import subprocess
    agent = agent_factory()
    agent.call("container_create", "busybox", "stale.veth")
    veth = agent.call("container_inspect", "stale.veth")["veth"]
    peer = "dct" + os.urandom(4).hex()
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer], check=True)
    try:
        assert agent.call("container_start", "stale.veth")["state"] == "running"
        out = agent.call("container_exec", "stale.veth", ["hostname"])
        assert out["stdout"] == b"stale.veth\n"
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def test_slow_work_never_stalls_the_agent(agent_factory, tmp_path):
    """PITFALLS: a blocking call stops heartbeats.  While a large image
    import runs (hashing, unpacking), listing and pings answer at once."""
    import subprocess
    import gevent
    agent = agent_factory()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    for i in range(8):
        (rootfs / f"blob{i}").write_bytes(os.urandom(8 << 20))
    tar = tmp_path / "big.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    with agent.client(120) as slow, agent.client(10) as fast:
        job = gevent.spawn(slow.call, "image_import", str(tar), "big")
        gevent.sleep(0.2)
        worst = 0.0
        while not job.ready():
            started = time.monotonic()
            fast.call("container_ls")
            fast.call("_zerorpc_ping")
            worst = max(worst, time.monotonic() - started)
            gevent.sleep(0.05)
        assert job.get()["name"] == "big"
    print(f"\nworst listing+ping round trip during a 64 MiB import: {worst * 1000:.0f} ms")
    assert worst < 1.0


def test_a_stop_cut_short_by_kill9_is_finished_by_the_restarted_agent(agent_factory):
    """The agent killed -9 while it waits for a container that ignores its
    halt signal: the stop runs in the agent's process now (no lxc-stop
    child left to finish it), so the restarted agent must finish it (its
    intent, desired "stopped", is on disk): the container stops and leaves
    no process, payload cgroup or veth behind.  Before, it ran on for ever."""
    import re
    import gevent
    from dcctl import procs
    from lxcwrap import cgroup, direct
    from tests.waiting import wait_for
    agent = agent_factory()
    name = "deaf.stop"
    agent.call("container_create", "busybox", name)
    agent.call("container_start", name)
    cfg = os.path.join(agent.lxc_path, name, "config")
    with open(cfg) as f:
        text = f.read()
    with open(cfg, "w") as f:  # busybox init takes SIGHUP as "re-read inittab": it does not stop
        f.write(re.sub(r"(?m)^lxc\.signal\.halt = .*$", "lxc.signal.halt = SIGHUP", text))
    veth = agent.call("container_inspect", name)["veth"]
    with direct.monitor(agent.lxc_path, name) as mon:
        init_pid, fd, payload = mon.payload(cgroup.detect().v2)
        os.close(fd)
    stop = gevent.spawn(agent.call, "container_stop", name, 60.0, timeout_s=90)
    wait_for(lambda: agent.call("container_inspect", name)["desired"] == "stopped", 30, "the stop to begin")
    agent.kill9()
    stop.join(30)
    assert procs.alive(init_pid), "the container outlived the agent, its stop cut short"
    agent.start()
    wait_for(lambda: agent.call("container_inspect", name)["state"] == "stopped", 60,
             "the restarted agent to finish the stop")
    assert not procs.alive(init_pid)
    assert not os.path.exists(payload) and not os.path.lexists(f"/sys/class/net/{veth}")
