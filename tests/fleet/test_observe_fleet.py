"""What an operator watches, on a local fleet of 2 hosts with Debian's
Prometheus (``ops/fleet up 2 --prometheus``): Prometheus scrapes the hub and
both agents, and a PromQL query returns a created container's memory with
its name and host; each agent's metrics_url is in ``hosts``; the hub's own
figures; ``dcctl --json container_logs NAME --tail N`` and ``--follow``
through the hub; ``ops/fleet kill/start`` of a host loses no log line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.fleet.conftest import local_fleet
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def fleet():
    if not os.path.exists("/usr/bin/prometheus"):
        pytest.skip("needs Debian's prometheus (ops/setup)")
    with local_fleet("obs", 2, 213, prometheus=True) as state:
        yield state


@pytest.fixture
def hub(fleet):
    client = wire.connect(fleet["hub"]["ipc"], timeout_s=120)
    yield client
    for c in client.call("container_ls"):
        try:
            client.call("container_destroy", c["name"], True)
        except errors.DcError:
            pass
    client.close()


def promql(fleet, query: str) -> list[dict]:
    url = f"{fleet['prometheus']['url']}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", body
    return body["data"]["result"]


def dcctl(fleet, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": fleet["hub"]["ipc"]}
    return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_prometheus_scrapes_the_fleet_and_finds_a_containers_memory(fleet, hub):
    assert fleet["prometheus"]["url"] == f"http://{fleet['gateway']}:9090"
    name = "obs.mem"
    made = hub.call("create_container", "busybox", name, {"host": "host-2", "memory_bytes": 64 * MiB})
    assert made["host"] == "host-2"
    rows = wait_for(lambda: promql(fleet, f'container_memory_usage_bytes{{name="{name}"}}'), 60,
                    "Prometheus to have scraped the container's memory")
    assert len(rows) == 1
    labels, value = rows[0]["metric"], float(rows[0]["value"][1])
    assert labels["name"] == name and labels["host"] == "host-2" and labels["image"] == "busybox"
    assert 0 < value <= 64 * MiB
    limit = promql(fleet, f'container_spec_memory_limit_bytes{{name="{name}"}}')
    assert [float(r["value"][1]) for r in limit] == [64 * MiB]
    up = wait_for(lambda: (lambda r: r if len(r) == 3 and all(x["value"][1] == "1" for x in r) else None)(
        promql(fleet, "up")), 60, "the hub and both agents up")
    assert {r["metric"]["job"] for r in up} == {"dcfleet-hub", "dcfleet-agents"}
    alive = wait_for(lambda: promql(fleet, 'dcfleet_hub_hosts{state="alive"}'), 60, "the hub's figures")
    assert float(alive[0]["value"][1]) == 2
    placed = wait_for(lambda: (lambda r: r if r and float(r[0]["value"][1]) >= 1 else None)(
        promql(fleet, "dcfleet_hub_placements_total")), 60, "the placement counted")
    assert placed
    assert wait_for(lambda: promql(fleet, 'node_memory_MemTotal_bytes{host="host-1"}'), 30, "host-1's node figures")
    hosts = {h["name"]: h for h in hub.call("hosts")}
    assert {n: h["metrics_url"] for n, h in hosts.items()} == {h["name"]: h["metrics_url"] for h in fleet["hosts"]}
    assert hub.call("hub_info")["metrics_url"] == fleet["hub"]["metrics_url"]


def test_logs_through_the_hub_and_dcctl_survive_a_host_agent_kill(fleet, hub):
    name = "obs.count"
    hub.call("create_container", "busybox", name,
             {"host": "host-1", "command": ["sh", "-c", "i=0; while true; do echo $i; i=$((i+1)); usleep 100000; done"]})
    wait_for(lambda: len(hub.call("container_logs", name)["lines"]) >= 5, 30, "the first lines")
    k = subprocess.run([os.path.join(REPO, "ops", "fleet"), "kill", "host-1", "--prefix", fleet["prefix"]],
                       capture_output=True, text=True, timeout=60)
    assert k.returncode == 0, k.stderr
    time.sleep(3)  # the scenario: the host's agent is away for 3 s while the container prints
    s = subprocess.run([os.path.join(REPO, "ops", "fleet"), "start", "host-1", "--prefix", fleet["prefix"]],
                       capture_output=True, text=True, timeout=120)
    assert s.returncode == 0, s.stderr
    fleet["hosts"][0]["pid"] = fleetmod.load(fleet["prefix"])["hosts"][0]["pid"]
    wait_for(lambda: [h for h in hub.call("hosts") if h["name"] == "host-1" and h["state"] == "alive"], 60,
             "host-1 alive again", ignore=(errors.Unreachable,))
    out = wait_for(lambda: (lambda d: d if d.returncode == 0 else None)(
        dcctl(fleet, "--json", "container_logs", name, "--tail", "5")), 60, "dcctl container_logs through the hub")
    doc = json.loads(out.stdout)
    assert [set(r) for r in doc["lines"]] == [{"at", "stream", "text"}] * 5 and doc["host"] == "host-1"
    got: list[int] = []
    with wire.connect(fleet["hub"]["ipc"], timeout_s=60) as c:
        with c.stream("container_logs_follow", name, {}) as items:
            for item in items:
                assert item["host"] == "host-1"
                got += [int(r["text"]) for r in item["lines"]]
                if got and got[-1] >= 60:
                    break
    assert got == list(range(len(got))), "a number is missing, repeated or out of order"
    follow = subprocess.Popen([sys.executable, "-m", "dcctl.cli", "container_logs", name, "--follow", "--tail", "2",
                               "--timestamps"], stdout=subprocess.PIPE, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": fleet["hub"]["ipc"]})
    try:
        first = [follow.stdout.readline() for _ in range(4)]
    finally:
        follow.kill()
        follow.wait(10)
    stamps = [line.split(" ", 1) for line in first]
    assert all(s[0].endswith("Z") and s[1].strip().isdigit() for s in stamps), first
    assert [int(s[1]) for s in stamps] == list(range(int(stamps[0][1]), int(stamps[0][1]) + 4))
