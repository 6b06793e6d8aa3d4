"""The hub's Prometheus endpoint on a real HubService and store, over real
HTTP: the fleet's figures (hosts by state, heartbeat age, placements and
refusals, the work queue, broadcast latency, RPC counts) parse with
prometheus_client's parser."""
from __future__ import annotations

import os
import urllib.request

import gevent

from prometheus_client.parser import text_string_to_metric_families

from hub.metrics import HubMetrics
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore


def scrape(url: str) -> dict:
    """One GET, from a thread: the server runs in this process's gevent loop."""
    def get() -> str:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()
    text = gevent.get_hub().threadpool.apply(get)
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_hub_figures(tmp_path):
    store = HubStore(str(tmp_path))
    hub = HubService(store, Registry(os.path.join(str(tmp_path), "registry")))
    metrics = HubMetrics(hub, "127.0.0.1:0")
    try:
        url = metrics.start()
        assert url.startswith("http://127.0.0.1:")
        fams = scrape(url)
        assert ("dcfleet_hub_placements_total", {}, 0.0) in fams["dcfleet_hub_placements"]
        assert fams["dcfleet_hub_queue_waiting"] == [("dcfleet_hub_queue_waiting", {}, 0.0)]
        metrics.observe("create_container", "ok", 0.2)
        metrics.observe("create_container", "ok", 0.3)
        metrics.observe("create_container", "NoCapacity", 0.01)
        metrics.observe("create_container", "InvalidArgument", 0.001)  # the caller's mistake: no refusal
        metrics.observe("broadcast", "ok", 0.04)
        hub.workers.set_members({"h1", "h2"})
        hub.workers.acquire(1.0)
        fams = scrape(url)
        total = {n: v for n, lb, v in fams["dcfleet_hub_placements"]}
        assert total["dcfleet_hub_placements_total"] == 2
        refusals = {lb["reason"]: v for n, lb, v in fams["dcfleet_hub_placement_refusals"] if n.endswith("_total")}
        assert refusals == {"NoCapacity": 1}
        counts = {(lb["method"], lb["outcome"]): v for n, lb, v in fams["dcfleet_hub_rpc_requests"]
                  if n.endswith("_total")}
        assert counts[("create_container", "ok")] == 2 and counts[("create_container", "InvalidArgument")] == 1
        assert [v for n, _, v in fams["dcfleet_hub_broadcast_duration_seconds"] if n.endswith("_count")] == [1]
        assert fams["dcfleet_hub_queue_busy_hosts"][0][2] == 1 and fams["dcfleet_hub_queue_idle_hosts"][0][2] == 1
        assert [v for n, _, v in fams["dcfleet_hub_queue_acquired"] if n.endswith("_total")] == [1]
        assert {lb["state"]: v for _, lb, v in fams["dcfleet_hub_hosts"]} == {"alive": 0, "unreachable": 0}
    finally:
        metrics.stop()
        store.close()
