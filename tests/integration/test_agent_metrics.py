"""The agent's Prometheus endpoint on a real agent and real LXC: the text
parses (prometheus_client's own parser) with cAdvisor's container names,
node_exporter's host names and the agent's RPC counts by method and outcome."""
from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from dcctl import errors
from tests.fdkit import readable
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONTAINER_NAMES = {"container_cpu_usage_seconds", "container_memory_usage_bytes",
                   "container_memory_working_set_bytes", "container_spec_memory_limit_bytes",
                   "container_network_receive_bytes", "container_network_transmit_bytes",
                   "container_start_time_seconds", "container_oom_events"}
NODE_NAMES = {"node_cpu_seconds", "node_load1", "node_load5", "node_load15", "node_memory_MemTotal_bytes",
              "node_memory_MemAvailable_bytes", "node_filesystem_size_bytes", "node_filesystem_avail_bytes",
              "node_network_receive_bytes", "node_network_transmit_bytes", "node_boot_time_seconds"}


def scrape(url: str) -> dict:
    """{family name: [(sample name, labels, value)]} of one scrape."""
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_metrics_parse_with_the_expected_names_and_figures(agent_factory):
    agent = agent_factory()
    url = agent.call("hostinfo")["metrics_url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")  # loopback unless configured
    agent.call("container_create", "busybox", "met.web", {"memory_bytes": 64 * MiB})
    agent.call("container_start", "met.web")
    agent.call("container_create", "busybox", "met.idle")  # not running: no container figures
    with pytest.raises(errors.NoSuchContainer):
        agent.call("container_inspect", "met.none")
    fams = wait_for(lambda: (lambda f: f if any(lb.get("name") == "met.web" for _, lb, _ in
                                                f.get("container_memory_usage_bytes", [])) else None)(scrape(url)),
                    30, "the container's figures")
    assert CONTAINER_NAMES <= fams.keys() and NODE_NAMES <= fams.keys(), sorted(fams)
    host = agent.prefix
    mem = [(lb, v) for _, lb, v in fams["container_memory_usage_bytes"]]
    assert [lb for lb, _ in mem] == [{"name": "met.web", "image": "busybox", "host": host}]
    assert 0 < mem[0][1] <= 64 * MiB
    assert [v for _, lb, v in fams["container_spec_memory_limit_bytes"]] == [64 * MiB]
    ws = [v for _, _, v in fams["container_memory_working_set_bytes"]]
    assert ws and 0 <= ws[0] <= mem[0][1]
    assert [lb["interface"] for _, lb, _ in fams["container_network_receive_bytes"]] == ["eth0"]
    assert [v for n, _, v in fams["container_oom_events"] if n.endswith("_total")] == [0]
    start = [v for _, _, v in fams["container_start_time_seconds"]]
    assert len(start) == 1 and start[0] <= time.time()
    cpu = [v for n, _, v in fams["container_cpu_usage_seconds"] if n.endswith("_total")]
    assert len(cpu) == 1 and cpu[0] > 0
    states = {lb["state"]: v for _, lb, v in fams["dcfleet_agent_containers"]}
    assert states == {"running": 1, "not_running": 1}
    counts = {(lb["method"], lb["outcome"]): v for n, lb, v in fams["dcfleet_agent_rpc_requests"]
              if n.endswith("_total")}
    assert counts[("container_start", "ok")] == 1 and counts[("container_inspect", "NoSuchContainer")] == 1
    assert counts[("hostinfo", "ok")] >= 1
    buckets = [v for n, lb, v in fams["dcfleet_agent_rpc_duration_seconds"]
               if n.endswith("_count") and lb["method"] == "container_start"]
    assert buckets == [1]
    agent.call("container_destroy", "met.web", True)
    agent.call("container_destroy", "met.idle")
    fams = scrape(url)
    assert fams["container_memory_usage_bytes"] == []


def test_metrics_off_and_a_bad_address(agent_factory):
    agent = agent_factory(extra_args=("--metrics-listen=off",))
    assert agent.call("hostinfo")["metrics_url"] is None
    with pytest.raises(RuntimeError):  # a bad setting: the agent refuses to start (exit 2)
        agent_factory(extra_args=("--metrics-listen=nowhere",))


def _dcctl(agent, *args):
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": agent.endpoint}
    return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True, timeout=180,
                          env=env, cwd=REPO)


def test_dcctl_stats_snapshot_and_live_table(agent_factory):
    """``dcctl --json stats``: the running containers' CPU %, memory against
    its limit and network bytes; ``--no-stream`` one table; on a terminal a
    table that refreshes until ^C."""
    agent = agent_factory()
    agent.call("container_create", "busybox", "st.busy",
               {"memory_bytes": 32 * MiB, "command": ["sh", "-c", "while true; do :; done"]})
    agent.call("container_start", "st.busy")
    agent.call("container_create", "busybox", "st.off")
    done = _dcctl(agent, "--json", "stats", "--interval", "1")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["name"] for r in rows] == ["st.busy"]
    r = rows[0]
    assert r["host"] == agent.prefix and r["memory_limit_bytes"] == 32 * MiB and 0 < r["memory_bytes"] <= 32 * MiB
    assert r["cpu_percent"] > 5, r  # a busy loop: most of a CPU when idle; a part of one on a loaded machine
    assert isinstance(r["net_rx_bytes"], int) and isinstance(r["net_tx_bytes"], int)
    plain = _dcctl(agent, "stats", "--no-stream")
    assert plain.returncode == 0 and plain.stdout.splitlines()[0].split()[:2] == ["NAME", "HOST"]
    assert "st.busy" in plain.stdout and "st.off" not in plain.stdout
    assert _dcctl(agent, "stats", "--colour", "red").returncode == 2
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "dcctl.cli", "stats", "--interval", "0.5"], stdin=slave,
                            stdout=slave, stderr=slave, cwd=REPO, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": agent.endpoint, "TERM": "xterm"})
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 180
        while seen.count(b"st.busy") < 2 and time.monotonic() < deadline:
            if readable(master, 1):
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    break
        assert seen.count(b"st.busy") >= 2, seen[-2000:]  # drawn, then refreshed in place
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    agent.call("container_destroy", "st.busy", True)
    agent.call("container_destroy", "st.off")
