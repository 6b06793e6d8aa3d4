"""The hub's Prometheus endpoint: ``GET /metrics`` (prometheus_client's text
format, gevent's WSGI server in the hub's loop), with the fleet's figures.

* dcfleet_hub_hosts{state}: hosts by state (alive, unreachable);
* dcfleet_hub_host_heartbeat_age_seconds{host}: seconds since each host's
  last heartbeat;
* dcfleet_hub_placements_total: containers placed (create_container that
  succeeded); dcfleet_hub_placement_refusals_total{reason}: creates refused
  (NoCapacity, or another error's class name);
* dcfleet_hub_queue_waiting (callers waiting for an idle host now),
  dcfleet_hub_queue_busy_hosts, dcfleet_hub_queue_idle_hosts,
  dcfleet_hub_queue_acquired_total and dcfleet_hub_queue_wait_seconds_total
  (their ratio: the mean wait for an idle host);
* dcfleet_hub_broadcast_duration_seconds: histogram of broadcast calls;
* dcfleet_hub_rpc_requests_total by ``method`` and ``outcome`` ("ok" or the
  error's class name), dcfleet_hub_rpc_duration_seconds by ``method``, fed by the wire
  server's observer hook (as the agents', agents/metrics.py).

Read at each scrape; best effort (a figure that cannot be read is left out).
No label carries a secret: host names, method names, error class names.
"""
from __future__ import annotations

import logging

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from dcctl import errors, metricsendpoint

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_METRICS_LISTEN", "HubCollector", "HubMetrics"]

DEFAULT_METRICS_LISTEN = "127.0.0.1:9324"


def parse_listen(text: str) -> tuple[str, int]:
    """"ADDR:PORT" ("" is DEFAULT_METRICS_LISTEN) -> (addr, port).
    Raises: InvalidArgument."""
    return metricsendpoint.parse_listen(text, DEFAULT_METRICS_LISTEN)


class HubCollector:
    """The fleet's figures, read from the hub (``hosts()``, its work queue)."""

    def __init__(self, hub):
        self.hub = hub

    def collect(self):
        states = GaugeMetricFamily("dcfleet_hub_hosts", "Hosts by state", labels=["state"])
        ages = GaugeMetricFamily("dcfleet_hub_host_heartbeat_age_seconds", "Seconds since each host's last "
                                 "heartbeat", labels=["host"])
        try:
            hosts = self.hub.hosts()
        except errors.DcError:  # a store that does not answer: no figures this scrape
            hosts = None
        if hosts is not None:
            counts = {"alive": 0, "unreachable": 0}
            for h in hosts:
                counts[h["state"]] = counts.get(h["state"], 0) + 1
                ages.add_metric([h["name"]], max(0.0, h["heartbeat_age_s"]))
            for state, n in sorted(counts.items()):
                states.add_metric([state], n)
        yield states
        yield ages
        q = self.hub.workers
        stats = q.stats()
        for name, doc, value in (("dcfleet_hub_queue_waiting", "Queue calls waiting for an idle host", q.waiting),
                                 ("dcfleet_hub_queue_busy_hosts", "Hosts running a queued call", len(stats["busy"])),
                                 ("dcfleet_hub_queue_idle_hosts", "Hosts idle for the queue", len(stats["idle"]))):
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            yield g
        for name, doc, value in (("dcfleet_hub_queue_acquired", "Idle hosts handed to queue calls",
                                  q.acquired_total),
                                 ("dcfleet_hub_queue_wait_seconds", "Seconds queue calls waited for an idle host",
                                  q.wait_seconds_total)):
            c = CounterMetricFamily(name, doc)
            c.add_metric([], value)
            yield c


class HubMetrics(metricsendpoint.MetricsEndpoint):
    """The hub's registry and HTTP endpoint (dcctl.metricsendpoint: the RPC
    counters; ``observe``, the wire server's observer hook, also counts
    placements, refusals and broadcasts).

    Args: hub (HubService), listen ("ADDR:PORT"; port 0 picks a free one)."""

    def __init__(self, hub, listen: str):
        super().__init__("dcfleet_hub", listen, DEFAULT_METRICS_LISTEN)
        self.registry.register(HubCollector(hub))
        self.placements = Counter("dcfleet_hub_placements", "Containers placed by create_container",
                                  registry=self.registry)
        self.refusals = Counter("dcfleet_hub_placement_refusals", "create_container calls refused, by reason",
                                ["reason"], registry=self.registry)
        self.broadcasts = Histogram("dcfleet_hub_broadcast_duration_seconds", "Time a broadcast took, seconds",
                                    buckets=metricsendpoint.RPC_BUCKETS, registry=self.registry)
        self.placements.inc(0)
        self.refusals.labels("NoCapacity").inc(0)

    def observe(self, method: str, outcome: str, seconds: float) -> None:
        """The wire server's hook: count one served call (and placements,
        refusals, broadcast latency)."""
        super().observe(method, outcome, seconds)
        if method == "create_container":
            if outcome == "ok":
                self.placements.inc()
            elif outcome not in ("InvalidArgument", "PermissionDenied", "Unauthorized"):
                self.refusals.labels(outcome).inc()
        elif method == "broadcast" and outcome == "ok":
            self.broadcasts.observe(seconds)


def started(hub, service, listen: str) -> HubMetrics | None:
    """Serve the hub's metrics at ``listen`` ("off": none) and hook them to
    ``service`` (the wire Service); best effort: an address that cannot be
    bound is logged.  Returns the HubMetrics, or None."""
    if listen == "off":
        return None
    metrics = HubMetrics(hub, listen)
    try:
        url = metrics.start()
    except OSError as exc:
        log.error("metrics endpoint %s: %s; serving without metrics", listen or DEFAULT_METRICS_LISTEN, exc)
        return None
    service.observer = metrics.observe
    hub.metrics_url = url
    log.info("metrics at %s", url)
    return metrics
