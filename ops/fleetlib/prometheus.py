"""``ops/fleet up N --prometheus``: Debian's Prometheus for a local fleet.

It runs ``/usr/bin/prometheus`` itself (never the packaged service, which
ops/setup leaves disabled) in the root namespace, with a generated scrape
config (the hub's endpoint and every agent's, on their fleet addresses), its
own data dir under the fleet's state dir, and its web address on the fleet's
gateway (``export DCF_PROMETHEUS=http://<gateway>:9090``).  ``down`` stops it
(its arguments name the fleet's dirs) and removes both.
"""
from __future__ import annotations

import json
import os
import time
import urllib.request

from ops.fleetlib.base import FleetError, _last_line, paths

__all__ = ["PROMETHEUS", "PROMETHEUS_PORT", "SCRAPE_INTERVAL_SECONDS", "plan_prometheus", "scrape_config",
           "prometheus_argv", "wait_ready"]

PROMETHEUS = "/usr/bin/prometheus"
PROMETHEUS_PORT = 9090
SCRAPE_INTERVAL_SECONDS = 2


def plan_prometheus(state: dict) -> dict:
    """The prometheus part of the fleet description."""
    p = paths(state["prefix"])
    addr = state["gateway"]
    return {"name": "prometheus", "listen": f"{addr}:{PROMETHEUS_PORT}", "url": f"http://{addr}:{PROMETHEUS_PORT}",
            "config": f"{p['run']}/prometheus.yml", "data_dir": f"{p['state']}/prometheus",
            "log": f"{p['log']}/prometheus.log", "pid_file": f"{p['run']}/prometheus.pid", "pid": None}


def _hostport(url: str) -> str:
    return url.split("//", 1)[1].split("/", 1)[0]


def scrape_config(state: dict) -> str:
    """The scrape config (YAML is a superset of JSON: written as JSON): the
    hub's job and the agents' job, every ``SCRAPE_INTERVAL_SECONDS``; the
    series keep their own ``host`` labels (honor_labels)."""
    jobs = []
    hubs = [hd for hd in state.get("hubs") or [state.get("hub")] if hd and hd.get("metrics_url")]
    if hubs:
        jobs.append({"job_name": "dcfleet-hub", "honor_labels": True,
                     "static_configs": [{"targets": [_hostport(hd["metrics_url"]) for hd in hubs]}]})
    jobs.append({"job_name": "dcfleet-agents", "honor_labels": True,
                 "static_configs": [{"targets": [_hostport(h["metrics_url"]) for h in state["hosts"]]}]})
    return json.dumps({"global": {"scrape_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
                                  "evaluation_interval": f"{SCRAPE_INTERVAL_SECONDS}s",
                                  "external_labels": {"fleet": state["prefix"]}},
                       "scrape_configs": jobs}, indent=1) + "\n"


def prometheus_argv(pr: dict) -> list[str]:
    """Prometheus's command line (each path its own word, so that ``down``
    finds the process by the fleet's dirs)."""
    return [PROMETHEUS, "--config.file", pr["config"], "--storage.tsdb.path", pr["data_dir"],
            "--web.listen-address", pr["listen"], "--storage.tsdb.retention.time", "1d"]


def wait_ready(pr: dict, proc, timeout_s: float) -> None:
    """Wait until Prometheus answers /-/ready.  Raises: FleetError."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise FleetError(f"prometheus exited with status {proc.returncode}: {_last_line(pr['log'])}")
        try:
            with urllib.request.urlopen(f"{pr['url']}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise FleetError(f"prometheus did not get ready within {timeout_s:g} s: {_last_line(pr['log'])}")
        time.sleep(0.2)


def write_config(pr: dict, state: dict) -> None:
    os.makedirs(pr["data_dir"], mode=0o700, exist_ok=True)
    with open(pr["config"], "w") as f:
        f.write(scrape_config(state))
