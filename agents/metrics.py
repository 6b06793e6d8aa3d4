"""The agent's Prometheus endpoint: ``GET /metrics`` in the text exposition
format (prometheus_client), served by gevent's WSGI server in the agent's
own loop.

Figures are read at each scrape, in gevent's thread pool (the loop serves
calls meanwhile), by a custom collector (``AgentCollector``)
from the same sources as ``hostinfo`` (the containers' cgroups, psutil), so
nothing is sampled in between and a scrape costs nothing when nobody scrapes.
Best effort (DESIGN, failure class 1): a figure that cannot be read is left
out of that scrape, never an error.

* containers (cAdvisor's names; labels ``name``, ``image``, ``host``; running
  containers only): container_cpu_usage_seconds_total,
  container_memory_usage_bytes, container_memory_working_set_bytes,
  container_spec_memory_limit_bytes (0: no limit, as cAdvisor),
  container_network_receive_bytes_total / _transmit_ (label ``interface``,
  from the host side of its veth), container_start_time_seconds,
  container_oom_events_total; and dcfleet_container_log_dropped_records_total
  (what its log writer lost, say to a full disk);
* the host (node_exporter's names, label ``host``): node_cpu_seconds_total
  (``cpu``, ``mode``), node_load1/5/15, node_memory_MemTotal_bytes,
  node_memory_MemAvailable_bytes, node_filesystem_size_bytes /
  node_filesystem_avail_bytes (the state dir's filesystem, ``mountpoint``),
  node_network_receive_bytes_total / _transmit_ (``device``),
  node_boot_time_seconds;
* the agent: dcfleet_agent_rpc_requests_total and
  dcfleet_agent_rpc_duration_seconds (histogram) by ``method`` (and the
  counter by ``outcome`` too: "ok" or the error's class name), fed by the
  wire server's observer hook; dcfleet_agent_containers by ``state``;
  dcfleet_agent_scrape_duration_seconds (the previous scrape's).

Nothing secret goes in a label: container names, image names, host names,
method names, error class names.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Iterator

import gevent
import psutil
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agents import hostinfo
from dcctl.metricsendpoint import MetricsEndpoint
from lxcwrap import cgroup

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_METRICS_LISTEN", "AgentCollector", "AgentMetrics"]

DEFAULT_METRICS_LISTEN = "127.0.0.1:9323"


class AgentCollector:
    """prometheus_client collector of one agent's containers and host.

    Args: manager (agents.containers.ContainerManager), last_scrape (a
    one-item list the endpoint writes each scrape's duration into)."""

    def __init__(self, manager, last_scrape: list[float]):
        self.m = manager
        self.last_scrape = last_scrape
        # name -> ((pid file's inode, mtime), pid, cgroup dirs): a start rewrites the pid file
        self._known: dict[str, tuple[tuple[int, int], int, dict]] = {}
        self._dropped: dict[str, tuple[float, int]] = {}  # name -> (read at, dropped records)

    def _running(self) -> Iterator[tuple[dict, int, dict]]:
        """(record, init pid, its cgroup dirs) of each running container,
        from LXC's pid file checked against the process's cgroup once per
        start (no lxc-ls per scrape)."""
        known: dict[str, tuple[tuple[int, int], int, dict]] = {}
        for rec in list(self.m.records.values()):
            name = rec["name"]
            if rec.get("phase") != "ready":
                continue
            try:
                st = os.stat(self.m.lxc.path(name, "init.pid"))
                key = (st.st_ino, st.st_mtime_ns)
                hit = self._known.get(name)
                if hit and hit[0] == key:
                    pid, dirs = hit[1], hit[2]
                    os.stat(f"/proc/{pid}")  # still there
                else:
                    with open(self.m.lxc.path(name, "init.pid")) as f:
                        pid = int(f.read().strip())
                    with open(f"/proc/{pid}/cgroup") as f:
                        if name not in f.read():
                            continue
                    dirs = cgroup.cgroup_dirs(self.m.layout, pid)
            except (OSError, ValueError):
                continue
            known[name] = (key, pid, dirs)
            yield rec, pid, dirs
        self._known = known

    def _dropped_records(self, name: str) -> int:
        """The log writer's dropped-record count, read at most every 10 s."""
        now = time.monotonic()
        hit = self._dropped.get(name)
        if hit is None or now - hit[0] > 10:
            hit = (now, self.m.log_store.status_counts(name)["dropped_records"])
            self._dropped[name] = hit
        return hit[1]

    def collect(self):
        host = self.m.config.host_name
        labels = ["name", "image", "host"]
        fam = {
            "cpu": CounterMetricFamily("container_cpu_usage_seconds_total", "CPU time used by the container "
                                       "(its whole cgroup), seconds", labels=labels),
            "mem": GaugeMetricFamily("container_memory_usage_bytes", "Memory the container's cgroup uses "
                                     "(page cache included), bytes", labels=labels),
            "ws": GaugeMetricFamily("container_memory_working_set_bytes", "Memory usage less inactive file "
                                    "pages, bytes", labels=labels),
            "lim": GaugeMetricFamily("container_spec_memory_limit_bytes", "The container's memory limit, "
                                     "bytes (0: none)", labels=labels),
            "rx": CounterMetricFamily("container_network_receive_bytes_total", "Bytes the container received",
                                      labels=labels + ["interface"]),
            "tx": CounterMetricFamily("container_network_transmit_bytes_total", "Bytes the container sent",
                                      labels=labels + ["interface"]),
            "start": GaugeMetricFamily("container_start_time_seconds", "When the container last started, "
                                       "Unix seconds", labels=labels),
            "oom": CounterMetricFamily("container_oom_events_total", "Processes the kernel's OOM killer "
                                       "killed in the container", labels=labels),
            "drop": CounterMetricFamily("dcfleet_container_log_dropped_records_total", "Log records the "
                                        "container's log writer could not write (a full disk)", labels=labels),
        }
        running = 0
        for rec, pid, dirs in self._running():
            running += 1
            lv = [rec["name"], rec.get("image_name") or rec.get("image") or "", host]
            try:
                fig = cgroup.figures(self.m.layout, pid, dirs)
            except OSError:
                continue
            if fig["cpu_seconds"] is not None:
                fam["cpu"].add_metric(lv, fig["cpu_seconds"])
            if fig["memory_bytes"] is not None:
                fam["mem"].add_metric(lv, fig["memory_bytes"])
            if fig["working_set_bytes"] is not None:
                fam["ws"].add_metric(lv, fig["working_set_bytes"])
            fam["lim"].add_metric(lv, fig["memory_limit_bytes"] or rec.get("memory_bytes") or 0)
            rx, tx = hostinfo.veth_bytes(rec["veth"])
            if rx is not None:
                fam["rx"].add_metric(lv + ["eth0"], rx)
            if tx is not None:
                fam["tx"].add_metric(lv + ["eth0"], tx)
            if rec.get("started_at"):
                fam["start"].add_metric(lv, rec["started_at"])
            if fig["oom_kills"] is not None:
                fam["oom"].add_metric(lv, fig["oom_kills"])
            fam["drop"].add_metric(lv, self._dropped_records(rec["name"]))
        yield from fam.values()
        states = GaugeMetricFamily("dcfleet_agent_containers", "Containers on this host by state",
                                   labels=["state", "host"])
        states.add_metric(["running", host], running)
        states.add_metric(["not_running", host], len(self.m.records) - running)
        yield states
        yield from self._host(host)
        scrape = GaugeMetricFamily("dcfleet_agent_scrape_duration_seconds", "How long the previous scrape "
                                   "of this endpoint took, seconds", labels=["host"])
        scrape.add_metric([host], self.last_scrape[0])
        yield scrape

    def _host(self, host: str):
        cpu = CounterMetricFamily("node_cpu_seconds_total", "Seconds the CPUs spent in each mode",
                                  labels=["cpu", "mode", "host"])
        try:
            for i, t in enumerate(psutil.cpu_times(percpu=True)):
                for mode in ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"):
                    if hasattr(t, mode):
                        cpu.add_metric([str(i), mode, host], getattr(t, mode))
        except (OSError, psutil.Error):
            pass
        yield cpu
        try:
            loads = os.getloadavg()
        except OSError:
            loads = None
        for i, minutes in enumerate((1, 5, 15)):
            g = GaugeMetricFamily(f"node_load{minutes}", f"{minutes}-minute load average", labels=["host"])
            if loads:
                g.add_metric([host], loads[i])
            yield g
        try:
            vm = psutil.virtual_memory()
        except (OSError, psutil.Error):
            vm = None
        for name, attr in (("node_memory_MemTotal_bytes", "total"), ("node_memory_MemAvailable_bytes", "available")):
            g = GaugeMetricFamily(name, f"Memory {attr}, bytes", labels=["host"])
            if vm:
                g.add_metric([host], getattr(vm, attr))
            yield g
        state_dir = self.m.config.state_dir
        size = GaugeMetricFamily("node_filesystem_size_bytes", "Size of the state dir's filesystem, bytes",
                                 labels=["mountpoint", "host"])
        avail = GaugeMetricFamily("node_filesystem_avail_bytes", "Space left on the state dir's filesystem, bytes",
                                  labels=["mountpoint", "host"])
        try:
            du = psutil.disk_usage(state_dir)
            size.add_metric([state_dir, host], du.total)
            avail.add_metric([state_dir, host], du.free)
        except (OSError, psutil.Error):
            pass
        yield size
        yield avail
        rx = CounterMetricFamily("node_network_receive_bytes_total", "Bytes received by each interface",
                                 labels=["device", "host"])
        tx = CounterMetricFamily("node_network_transmit_bytes_total", "Bytes sent by each interface",
                                 labels=["device", "host"])
        try:
            for dev, c in psutil.net_io_counters(pernic=True).items():
                rx.add_metric([dev, host], c.bytes_recv)
                tx.add_metric([dev, host], c.bytes_sent)
        except (OSError, psutil.Error):
            pass
        yield rx
        yield tx
        boot = GaugeMetricFamily("node_boot_time_seconds", "When the host booted, Unix seconds", labels=["host"])
        try:
            boot.add_metric([host], psutil.boot_time())
        except (OSError, psutil.Error):
            pass
        yield boot


class AgentMetrics(MetricsEndpoint):
    """The registry and HTTP endpoint of one agent (dcctl.metricsendpoint:
    the RPC counters, ``observe`` the wire server's observer hook).

    Args: manager (ContainerManager), listen ("ADDR:PORT"; port 0 picks a
    free one).
    """

    def __init__(self, manager, listen: str):
        super().__init__("dcfleet_agent", listen, DEFAULT_METRICS_LISTEN)
        self._last = [0.0]
        self.registry.register(AgentCollector(manager, self._last))

    def serve(self, environ, start_response):
        """The WSGI app behind /metrics, run in gevent's thread pool."""
        # collecting and formatting is CPU work (about 1 ms per 15 samples):
        # in gevent's thread pool, so the agent's loop (calls, heartbeats)
        # goes on meanwhile; the collector only reads (the records' dict is
        # copied before it is walked)
        started = time.monotonic()
        try:
            return gevent.get_hub().threadpool.apply(self.app, (environ, start_response))
        finally:
            self._last[0] = time.monotonic() - started
