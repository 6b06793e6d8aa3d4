"""``dc-agent``: the host agent's entry point.

``dc-agent decommission`` removes what an agent leaves behind
(agents.decommission).

Start-up order: settings, bridge and netfilter chains, image store (busybox
built on first use), re-adoption of existing containers and their port
mappings, then serving.  SIGTERM/SIGINT stop serving only: containers and
port mappings stay up (they belong to their lxc-start monitors and to the
kernel), and the next start re-adopts them.
"""
from __future__ import annotations

import logging
import os
import signal
import sys

import gevent

from agents import config as agent_config
from agents import network as netmod
from agents.containers import ContainerManager
from agents.enter import EnterRelay
from agents.events import EventShipper
from agents.hubclient import HubLink
from agents.service import AgentService, translate
from agents.supervisor import Supervisor
from dcctl import auth, errors, files
from dcctl.wire import Service, claim_ipc_path
from dcctl.wire.endpoint import parse_endpoint
from images.store import ImageStore
from lxcwrap.lxc import Lxc
from lxcwrap.run import hollow_run, run

log = logging.getLogger("dc-agent")


def build(cfg: agent_config.AgentConfig) -> tuple[Service, ContainerManager]:
    """Assemble the agent from its settings and recover its containers."""
    for d in (cfg.state_dir, cfg.lxc_path):
        os.makedirs(d, mode=0o700, exist_ok=True)
    lock_state_dir(cfg.state_dir)
    if not cfg.hollow:  # a hollow agent has no bridge and no netfilter chains (and leaves no lock file)
        lock_bridge(cfg.bridge)
    for endpoint in cfg.listen:  # refuse a live local endpoint before touching anything
        if parse_endpoint(endpoint).is_ipc:
            claim_ipc_path(parse_endpoint(endpoint).path)
    runner = hollow_run if cfg.hollow else run
    network = netmod.Network(cfg.bridge, cfg.subnet, tuple(cfg.port_range), run=runner)
    network.ensure_bridge()
    images = ImageStore(os.path.join(cfg.state_dir, "images"))
    manager = ContainerManager(cfg, network, images, Lxc(cfg.lxc_path, run=runner))
    if not cfg.hollow:
        manager.ensure_base_images()
    manager.recover()
    relay = EnterRelay(cfg.listen, os.path.join(cfg.state_dir, "run"), cfg.enter_accept_timeout_s,
                       curve=auth.ensure_server_pair(cfg.keys_dir))
    service = Service(AgentService(manager, relay, hub_keys(cfg)), name=f"dc-agent@{cfg.host_name}",
                      translate=translate, keys_dir=cfg.keys_dir)
    for endpoint in cfg.listen:
        if parse_endpoint(endpoint).is_ipc:
            sock_dir = os.path.dirname(parse_endpoint(endpoint).path)
            os.makedirs(sock_dir, mode=0o700, exist_ok=True)
        service.bind(endpoint)
    for endpoint in cfg.insecure_listen:
        service.bind(endpoint, insecure=True)
    log.info("CURVE public key: %s", service.public_key)
    return service, manager


_STATE_LOCK: list[int] = []  # held for the life of the process


def lock_state_dir(state_dir: str) -> None:
    """One agent per state dir (DESIGN: one mediator per host): an exclusive
    flock on STATE_DIR/agent.lock, held until the process ends.

    Raises: Busy (another agent holds it)."""
    path = os.path.join(state_dir, "agent.lock")
    fd = files.take_lock(path)
    if fd is None:
        raise errors.Busy(f"another agent (pid {files.lock_holder(path) or '?'}) uses the state dir {state_dir}",
                          hint="stop it first; an agent's state dir is its own")
    _STATE_LOCK.append(fd)


def lock_bridge(bridge: str, lock_dir: str = "/run/dcfleet/locks") -> None:
    """One agent per bridge in a network namespace: its netfilter chains
    are named by the bridge, so a second agent would rewrite the first's
    port mappings.  An exclusive flock on LOCK_DIR/net-<netns inode>-<bridge>.

    Raises: Busy."""
    netns = os.stat("/proc/self/ns/net").st_ino
    fd = files.take_lock(os.path.join(lock_dir, f"net-{netns}-{bridge}.lock"))
    if fd is None:
        raise errors.Busy(f"another agent on this host uses the bridge {bridge}",
                          hint="give each agent its own --bridge and --subnet")
    _STATE_LOCK.append(fd)


def hub_keys(cfg: agent_config.AgentConfig) -> auth.ClientKeys | None:
    """The keys this agent uses towards its hub: its own key pair (the hub
    knows the host by it) and the hub's public key."""
    if not cfg.hub or not parse_endpoint(cfg.hub_endpoints()[0]).is_tcp:
        return None
    public, secret = auth.ensure_server_pair(cfg.keys_dir)
    return auth.ClientKeys(public, secret, auth.load_public(cfg.hub_key))


def hub_link(cfg: agent_config.AgentConfig, service: Service, on_beat=None) -> HubLink:
    """The membership loop: register with cfg.hub and send heartbeats.

    The endpoint it registers is the one the hub can verify: towards a
    tcp:// hub (CURVE, our key) our tcp:// endpoint, whose server key is
    that key; towards the hub's local ipc:// endpoint our ipc:// one."""
    agent = service.target
    kind = parse_endpoint(cfg.hub_endpoints()[0]).kind
    endpoint = next((ep for ep in cfg.listen if parse_endpoint(ep).kind == kind), cfg.listen[0])
    identity = {"name": cfg.host_name, "endpoint": endpoint,
                "address": cfg.advertise_address, "labels": cfg.labels}

    def summary() -> dict:
        info = agent.hostinfo()
        return {"capacity": info["capacity"], "metrics": info["metrics"], "metrics_url": info.get("metrics_url"),
                "containers": [{"name": c["name"], "state": c["state"]} for c in info["containers"]]}

    link = HubLink(cfg.hub_endpoints(), identity, summary, cfg.heartbeat_s, keys=hub_keys(cfg), on_beat=on_beat,
                   jitter_s=cfg.rejoin_jitter_s)
    agent.hub_link = link  # image pulls and uploads come from the hub the link uses now
    return link


def start_metrics(cfg: agent_config.AgentConfig, service: Service):
    """Serve the Prometheus endpoint (agents/metrics.py) at cfg.metrics_listen
    and count every RPC call there; best effort: an address that cannot be
    bound is logged, and the agent serves on without metrics.  Returns the
    AgentMetrics, or None."""
    if cfg.metrics_listen == "off":
        return None
    from agents.metrics import AgentMetrics
    metrics = AgentMetrics(service.target.m, cfg.metrics_listen)
    try:
        service.target.metrics_url = metrics.start()
    except OSError as exc:
        log.error("metrics endpoint %s: %s; serving without metrics", cfg.metrics_listen or "default", exc)
        return None
    service.observer = metrics.observe
    log.info("metrics at %s", service.target.metrics_url)
    return metrics
class Running:
    """One agent serving in this process (``start``): ``service`` (its
    wire.Service), ``task`` (ends when serving stops), ``link`` (its
    HubLink, or None without a hub), ``supervisor`` and ``shipper`` (the
    EventShipper; each None when not run)."""

    def __init__(self, service: Service, task: gevent.Greenlet, link: HubLink | None, supervisor: Supervisor | None,
                 shipper: EventShipper | None = None):
        self.service, self.task, self.link, self.supervisor, self.shipper = service, task, link, supervisor, shipper

    def stop(self) -> None:
        """Stop the hub link, the supervisor, the event shipper and serving
        (containers stay)."""
        for loop in (self.link, self.supervisor, self.shipper):
            if loop is not None:
                loop.stop()
        self.service.stop()


def start(cfg: agent_config.AgentConfig, *, supervise: bool = True) -> Running:
    """Build the agent (``build``), serve it, start its supervisor (unless
    ``supervise`` is False: a hollow agent has no containers to watch) and
    its hub link.  What ``main`` runs, and what bench/hollow.py runs many
    times in one process for hollow fleets.

    Raises: what ``build`` raises (DcError, or an untranslated exception)."""
    service, _ = build(cfg)
    task = service.start()
    if not cfg.hollow:  # many hollow agents share a process and an address
        start_metrics(cfg, service)
    supervisor = None
    if supervise:
        supervisor = Supervisor(service.target.m, hold_s=cfg.heartbeat_s * 5 if cfg.hub else 0.0)
        supervisor.start()
    link = shipper = None
    if cfg.hub:
        link = hub_link(cfg, service, on_beat=supervisor.release if supervisor else None)
        link.start()
        if not cfg.hollow:  # container events go to the hub the link uses now (several hubs: the one answering)
            shipper = EventShipper(service.target.m.events, lambda: link.endpoint, cfg.host_name, keys=hub_keys(cfg))
            shipper.start()
    return Running(service, task, link, supervisor, shipper)


def main(argv: list[str] | None = None) -> int:
    """Run the agent until SIGTERM/SIGINT. Exit 2 on bad settings.
    ``dc-agent decommission ...`` runs agents.decommission instead."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["decommission"]:
        from agents import decommission
        return decommission.main(args[1:])
    try:
        cfg = agent_config.load(argv)
    except errors.InvalidArgument as exc:
        print(f"dc-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        agent = start(cfg)
    except errors.DcError as exc:
        log.error("cannot start: %s: %s", type(exc).__name__, exc)
        return 1
    except Exception as exc:
        mapped = translate(exc)
        if mapped is None:
            raise
        log.error("cannot start: %s: %s", type(mapped).__name__, mapped)
        return 1
    gevent.signal_handler(signal.SIGTERM, agent.service.stop)
    gevent.signal_handler(signal.SIGINT, agent.service.stop)
    log.info("serving on %s", ", ".join(cfg.listen))
    agent.task.join()
    log.info("stopped serving; containers keep running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
