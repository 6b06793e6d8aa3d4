"""The host agent's settings: typed defaults, a TOML file, then flags.

``load(argv, environ)`` builds an AgentConfig: defaults, overridden by the
file named by ``--config`` (or env ``DC_AGENT_CONFIG``), overridden by flags.
Tests hand it their own argv and environ.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import socket
import tomllib
from typing import Mapping, Sequence

from dcctl import validate
from dcctl.errors import InvalidArgument
from dcctl.wire import parse_endpoint, validate_endpoint


#: Bounds of the tmpfs size settings, bytes.
MIN_TMPFS_SIZE_BYTES = 1 << 20
MAX_TMPFS_SIZE_BYTES = 1 << 40


@dataclasses.dataclass
class AgentConfig:
    # ZeroRPC endpoints to serve on (ipc://PATH, made 0600; tcp://ADDR:PORT).
    listen: list[str] = dataclasses.field(default_factory=lambda: ["ipc:///run/dcfleet/agent.sock"])
    # The agent's own state: container records, images, enter sockets.
    state_dir: str = "/var/lib/dcfleet/agent"
    # LXC's container directory (lxc-* -P); default STATE_DIR/lxc.
    lxc_path: str = ""
    # Container bridge this agent creates and owns (at most 15 chars).
    bridge: str = "dcbr0"
    # IPv4 subnet of the bridge; the gateway is its first address.
    subnet: str = "10.217.0.0/24"
    # Host ports that dynamic port mappings are drawn from (inclusive).
    port_range: tuple[int, int] = (20000, 29999)
    # Loopback tcp:// endpoints served WITHOUT CURVE (tests, ad hoc use).
    insecure_listen: list[str] = dataclasses.field(default_factory=list)
    # CURVE keys and client allowlist (dcctl.auth); default STATE_DIR/keys.
    keys_dir: str = ""
    # Hub to register with (optional); several hubs of one fleet: A,B,...
    # (the link moves to the next when one fails).
    hub: str | None = None
    # The hub's CURVE public key (file or Z85), for a tcp:// hub.
    hub_key: str | None = None
    # Seconds between heartbeats to the hub.
    heartbeat_s: float = 3.0
    # Re-registration after a lost hub waits a random delay in [0, this]
    # seconds (no stampede when a hub restarts); negative: one heartbeat_s.
    rejoin_jitter_s: float = -1.0
    # Labels for placement constraints, {key: value}.
    labels: dict = dataclasses.field(default_factory=dict)
    # This host's name in the fleet.
    host_name: str = dataclasses.field(default_factory=socket.gethostname)
    # Address where this host's mapped ports answer (reported to clients).
    advertise_address: str = ""
    # Most containers this host will hold (scheduler slots).
    max_containers: int = 200
    # Memory that container limits may reserve, bytes; 0 = 90% of RAM.
    reservable_memory_bytes: int = 0
    # Default graceful stop timeout, seconds, before SIGKILL.
    stop_timeout_s: float = 10.0
    # Cap on each of exec's stdout and stderr, bytes.
    exec_max_output_bytes: int = 16 << 20
    # How long a call waits for a busy container's lock, seconds.
    lock_timeout_s: float = 60.0
    # Seconds an unused container_enter session waits for its client.
    enter_accept_timeout_s: float = 30.0
    # Log level name.
    log_level: str = "INFO"
    # Benchmarks only: serve the real RPC surface but start no tool (no LXC,
    # no bridge, no netfilter), like kubemark's hollow nodes.
    hollow: bool = False
    # Containers' logs (agents.logger: one dir per container); default STATE_DIR/logs.
    log_dir: str = ""
    # Rotation of each container's log (Docker json-file's max-size, max-file).
    log_max_size_bytes: int = 10 << 20
    log_max_files: int = 3
    # Prometheus metrics endpoint (agents.metrics): "ADDR:PORT" (HTTP, GET
    # /metrics); "" = 127.0.0.1:9323 (loopback only); port 0 picks a free
    # one; "off" serves none.  A local fleet gives each agent its namespace
    # address.
    metrics_listen: str = ""
    # ops_cleanup (about once a minute) removes LXC cgroups that hold no
    # process and are at least this old, seconds: those of monitors that
    # died without their teardown (lxcwrap.cgroup.remove_stale_lxc_cgroups).
    stale_cgroup_age_s: float = 60.0
    # Most processes and threads in a container (the pids cgroup's
    # pids.max) unless its create gives pids_limit: one container's fork
    # loop must not use up the host's PIDs (pid_max, 32768 by default).
    default_pids_limit: int = 4096
    # Sizes of the tmpfs mounts of a system image's container, bytes: /tmp,
    # and each of /run, /run/lock and /dev/shm.  A container with a memory
    # limit gets that limit instead (its tmpfs pages are charged to it).
    tmpfs_tmp_size_bytes: int = 256 << 20
    tmpfs_size_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not self.lxc_path:
            self.lxc_path = os.path.join(self.state_dir, "lxc")
        if not self.keys_dir:
            self.keys_dir = os.path.join(self.state_dir, "keys")
        if not self.log_dir:
            self.log_dir = os.path.join(self.state_dir, "logs")
        self.validate()

    def hub_endpoints(self) -> list[str]:
        """The hub endpoints of ``hub`` (``A,B,...``), validated; [] without one.
        Raises: InvalidArgument."""
        if not self.hub:
            return []
        from dcctl.wire.failover import split_endpoints
        return split_endpoints(self.hub)

    def validate(self) -> None:
        """Raise InvalidArgument naming the first bad setting."""
        for ep in self.listen + self.insecure_listen:
            validate_endpoint(ep)
        if not self.listen and not self.insecure_listen:
            raise InvalidArgument("listen: give at least one endpoint")
        # the hub refuses to register other labels or addresses (hub/membership.py): refused here first
        validate.labels(self.labels, "labels (--label)")
        validate.host_address(self.advertise_address, "advertise_address")
        if self.hub and parse_endpoint(self.hub_endpoints()[0]).is_tcp and not self.hub_key:
            raise InvalidArgument("hub_key: a tcp:// hub needs its CURVE public key (--hub-key FILE|Z85)")
        if self.hub and parse_endpoint(self.hub_endpoints()[0]).is_tcp:
            # the tcp endpoint registered with the hub (agents.main.hub_link) is one the hub dials: the
            # hub refuses a wildcard or a name (hub/membership.py), so it is refused here, at start
            registered = next((ep for ep in self.listen if parse_endpoint(ep).is_tcp), None)
            if registered is not None:
                host = parse_endpoint(registered).host
                try:
                    if not host:
                        raise InvalidArgument("no address")
                    validate.host_address(host)  # the hub's own check of a specific address
                except InvalidArgument:
                    raise InvalidArgument(f"listen: {registered} is the endpoint this agent registers with the "
                                          "hub, which dials it: give a specific IP address (not *, 0.0.0.0, "
                                          "or a name)") from None
        if not (1 <= len(self.bridge) <= 15) or not self.bridge.replace("-", "").replace("_", "").isalnum():
            raise InvalidArgument(f"bridge: {self.bridge!r} must be 1-15 letters, digits, '-' or '_'")
        try:
            net = ipaddress.IPv4Network(self.subnet, strict=True)
        except ValueError as exc:
            raise InvalidArgument(f"subnet: {exc}") from exc
        if net.prefixlen > 29:
            raise InvalidArgument("subnet: needs room for containers (prefix /29 or shorter)")
        low, high = self.port_range
        if not (1 <= low <= high <= 65535):
            raise InvalidArgument(f"port_range: {low}-{high} is not within 1-65535")
        if self.hub is not None:
            kinds = {parse_endpoint(ep).kind for ep in self.hub_endpoints()}
            if len(kinds) > 1:
                raise InvalidArgument(f"hub: {self.hub!r} mixes endpoint kinds; give one kind")
        if not (4096 <= self.log_max_size_bytes <= 1 << 40) or not (1 <= self.log_max_files <= 100):
            raise InvalidArgument("log_max_size_bytes: 4096..1 TiB and log_max_files: 1..100")
        if self.metrics_listen not in ("", "off"):
            host, _, port = self.metrics_listen.rpartition(":")
            if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
                raise InvalidArgument(f"metrics_listen: {self.metrics_listen!r} is not ADDR:PORT (or off)")
        if not 5.0 <= self.stale_cgroup_age_s <= 86400.0:  # a start under load may take a second to enter its cgroups
            raise InvalidArgument(f"stale_cgroup_age_s: {self.stale_cgroup_age_s} is not within 5..86400 s")
        validate.pids_limit_option(self.default_pids_limit, "default_pids_limit")
        for key in ("tmpfs_tmp_size_bytes", "tmpfs_size_bytes"):
            validate.number(getattr(self, key), key, minimum=MIN_TMPFS_SIZE_BYTES, maximum=MAX_TMPFS_SIZE_BYTES,
                            integer=True)
        for path in (self.state_dir, self.lxc_path, self.log_dir):
            if not os.path.isabs(path):
                raise InvalidArgument(f"{path!r} must be an absolute path")


def _port_range(text: str) -> tuple[int, int]:
    try:
        low, high = (int(p) for p in str(text).split("-", 1))
    except ValueError as exc:
        raise InvalidArgument(f"port range {text!r}: expected LOW-HIGH") from exc
    return low, high


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dc-agent", description="dcfleet host agent: owns this host's LXC containers "
                                "and serves them over ZeroRPC.")
    p.add_argument("--config", help="TOML file with the settings below (flags win)")
    p.add_argument("--listen", action="append", help="endpoint to serve on (repeatable): ipc://PATH or tcp://ADDR:PORT")
    p.add_argument("--state-dir")
    p.add_argument("--lxc-path")
    p.add_argument("--bridge")
    p.add_argument("--subnet")
    p.add_argument("--port-range", help="LOW-HIGH")
    p.add_argument("--insecure-listen", action="append",
                   help="tcp://127.x.x.x:PORT served without CURVE (loopback only)")
    p.add_argument("--keys-dir", help="CURVE keys and client allowlist (default STATE_DIR/keys)")
    p.add_argument("--hub", help="hub endpoint to register with (several hubs of one fleet: A,B,...)")
    p.add_argument("--hub-key", help="the hub's CURVE public key: a .key file or Z85 text")
    p.add_argument("--host-name")
    p.add_argument("--advertise-address")
    p.add_argument("--max-containers", type=int)
    p.add_argument("--heartbeat-s", type=float)
    p.add_argument("--rejoin-jitter-s", type=float,
                   help="spread re-registration after a lost hub over [0, this] s (default: one heartbeat)")
    p.add_argument("--reservable-memory-bytes", type=int, help="memory container limits may reserve (0: 90%% of RAM)")
    p.add_argument("--label", action="append", help="KEY=VALUE placement label (repeatable)")
    p.add_argument("--log-level")
    p.add_argument("--log-dir", help="containers' logs (default STATE_DIR/logs)")
    p.add_argument("--log-max-size-bytes", type=int, help="rotate a container's log at this size")
    p.add_argument("--log-max-files", type=int, help="log files kept per container (with the current one)")
    p.add_argument("--metrics-listen", help="ADDR:PORT of the Prometheus endpoint (default 127.0.0.1:9323; off)")
    p.add_argument("--stale-cgroup-age-s", type=float,
                   help="ops_cleanup removes empty LXC cgroups at least this old (default 60)")
    p.add_argument("--default-pids-limit", type=int,
                   help="most processes and threads per container without pids_limit (16-4194304; default 4096)")
    p.add_argument("--tmpfs-tmp-size-bytes", type=int,
                   help="size of a container's /tmp tmpfs without a memory limit (default 256 MiB)")
    p.add_argument("--tmpfs-size-bytes", type=int,
                   help="size of each of /run, /run/lock, /dev/shm without a memory limit (default 64 MiB)")
    p.add_argument("--hollow", action="store_true", default=None,
                   help="benchmarks only: start no tool (no LXC, bridge or netfilter)")
    return p


def load(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Build the config from defaults, the TOML file, then flags.

    Raises:
        InvalidArgument: a bad setting (the message names it).
    """
    environ = os.environ if environ is None else environ
    args = parser().parse_args(argv)
    values: dict = {}
    path = args.config or environ.get("DC_AGENT_CONFIG")
    if path:
        try:
            with open(path, "rb") as f:
                values.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"config file {path}: {exc}") from exc
    for key, value in vars(args).items():
        if key == "label" and value:
            values["labels"] = dict(item.partition("=")[::2] for item in value)
        elif key not in ("config", "label") and value is not None:
            values[key] = value
    if "port_range" in values and not isinstance(values["port_range"], (tuple, list)):
        values["port_range"] = _port_range(values["port_range"])
    if "port_range" in values:
        values["port_range"] = tuple(values["port_range"])
    known = {f.name for f in dataclasses.fields(AgentConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise InvalidArgument(f"unknown setting(s): {', '.join(unknown)}")
    return AgentConfig(**values)
