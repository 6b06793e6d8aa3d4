"""``dc-agent decommission`` on a real agent with a real container and a
port mapping: refused while the agent runs, then the network and locks go
(containers kept), then the containers and the state dir; nothing is left."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from agents import decommission
from tests.agentproc import REPO
from tests.integration.test_agent_lifecycle import http_get, wait_http
from dcctl import procs

pytestmark = pytest.mark.lxc


def run_decommission(agent, *flags: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "agents.main", "decommission", *flags, *agent.argv()[3:]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})


def our_rules(agent) -> list[str]:
    save = subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
    return [line for line in save.splitlines() if f"DCF-{agent.bridge}-" in line or f"dcf:{agent.bridge}:" in line]


def processes_of(agent) -> list[str]:
    """Processes whose command line names the agent's root (the agent, the
    containers' lxc-start monitors)."""
    return [b" ".join(procs.cmdline(pid)).decode(errors="replace") for pid in procs.pids_with(agent.root + "/")]


def wait_gone(path: str, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_decommission_removes_everything_the_agent_made(agent_factory):
    agent = agent_factory()
    bridge_lock = decommission.bridge_lock_path(agent.bridge)
    try:
        name = "decom.web"
        agent.call("container_create", "busybox", name)
        agent.call("container_start", name)
        m = agent.call("container_connection_add", name, "tcp", 80)
        url = f"http://127.0.0.1:{m['host_port']}/"
        assert name in wait_http(url)
        info = agent.call("container_inspect", name)
        pid, veth = info["pid"], info["veth"]
        assert our_rules(agent) and os.path.exists(bridge_lock)

        # refused while the agent runs: nothing is touched
        done = run_decommission(agent, "--containers")
        assert done.returncode == 1 and "is running" in done.stderr, done.stderr
        assert name in http_get(url) and agent.proc.poll() is None

        # --stop: the agent is stopped; the network and locks go; the container stays
        done = run_decommission(agent, "--stop")
        assert done.returncode == 0, done.stderr
        assert agent.proc.wait(30) == 0
        assert f"kept: {name}" in done.stdout.splitlines()
        assert not os.path.exists(f"/sys/class/net/{agent.bridge}")
        assert our_rules(agent) == []
        assert not os.path.exists(bridge_lock) and not os.path.exists(os.path.join(agent.state_dir, "agent.lock"))
        assert not os.path.exists(agent.socket)
        assert os.path.exists(f"/proc/{pid}")  # containers outlive the agent by design

        # --containers --purge: the containers and the state dir go too
        done = run_decommission(agent, "--containers", "--purge")
        assert done.returncode == 0, done.stderr
        assert f"destroyed: {name}" in done.stdout.splitlines()
        assert wait_gone(f"/proc/{pid}")
        assert processes_of(agent) == []
        assert not os.path.exists(f"/sys/class/net/{agent.bridge}")
        assert our_rules(agent) == []
        assert not os.path.exists(agent.lxc_path) and not os.path.exists(agent.state_dir)
        assert not os.path.exists(bridge_lock)
        assert not os.path.exists(f"/sys/class/net/{veth}")
        with pytest.raises(OSError):
            http_get(url, 2)
    finally:
        if os.path.exists(bridge_lock):
            os.unlink(bridge_lock)


def test_purge_is_refused_while_containers_would_be_kept(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "decom.kept")
    agent.stop()
    bridge_lock = decommission.bridge_lock_path(agent.bridge)
    try:
        done = run_decommission(agent, "--purge")
        assert done.returncode == 1 and "InvalidArgument" in done.stderr, done.stderr
        assert os.path.isdir(os.path.join(agent.lxc_path, "decom.kept"))  # nothing removed
        assert our_rules(agent)
    finally:
        if os.path.exists(bridge_lock):
            os.unlink(bridge_lock)
