"""The local fleet's names, state file and shared helpers (see ops/fleet.py).

Everything a fleet makes is named from its prefix (``paths``, ``plan``); its
description is the state file ``/run/dcfleet/<prefix>/fleet.json``
(``save``, ``load``).  ``_run`` runs one tool with a timeout (FleetError on
failure); the process helpers find a fleet's processes by its directories.
"""
from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import time

from dcctl import procs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_ROOT, STATE_ROOT, LOG_ROOT = "/run/dcfleet", "/var/lib/dcfleet", "/var/log/dcfleet"
AGENT_PORT, PORT_RANGE, CONTAINER_BRIDGE = 7000, "20000-20999", "dcbr0"
ROUTER_PORT = 80
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,8}$")  # <prefix>fleet0 fits 15 chars
MAX_HOSTS = 200


class FleetError(Exception):
    """A step failed; the message is one line for the operator."""


def paths(prefix: str) -> dict:
    """Names and directories derived from ``prefix``."""
    return {"bridge": f"{prefix}fleet0", "run": f"{RUN_ROOT}/{prefix}", "state": f"{STATE_ROOT}/{prefix}",
            "log": f"{LOG_ROOT}/{prefix}", "state_file": f"{RUN_ROOT}/{prefix}/fleet.json"}


def _run(argv: list[str], ok: tuple[int, ...] = (0,), timeout: float = 60) -> subprocess.CompletedProcess:
    for attempt in range(5):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise FleetError(f"{' '.join(argv)}: {exc}") from exc
        if done.returncode != 4 or "iptables" not in argv:  # 4: busy (concurrent nf_tables changes)
            break
        time.sleep(0.1 * (attempt + 1))
    if done.returncode not in ok:
        raise FleetError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return done


def _in_net(ns: str | None) -> list[str]:
    return [] if ns is None else ["nsenter", f"--net=/run/netns/{ns}", "--"]


def free_subnet(second_octet: int) -> str:
    """A /24 under ``10.<second_octet>.0.0/16`` that no route on this machine
    uses yet, picked at random (so fleets of parallel runs do not collide).

    Raises: FleetError (none free after 50 tries)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for _ in range(50):
        net = ipaddress.IPv4Network(f"10.{second_octet}.{secrets.randbelow(256)}.0/24")
        if str(net.network_address)[:-1] not in routes:
            return str(net)
    raise FleetError(f"no free /24 under 10.{second_octet}.0.0/16")


def kill_container(lxc_path: str, name: str, prefix_argv: list[str]) -> None:
    """``lxc-stop -k`` (lxcwrap builds it) run under ``prefix_argv`` (an
    nsenter into the host's netns), best effort: a container already gone
    is fine.  A blocking runner: this script runs no gevent loop."""
    from lxcwrap.errors import LxcError
    from lxcwrap.lxc import Lxc
    from lxcwrap.run import blocking_runner

    try:
        Lxc(lxc_path, run=blocking_runner(prefix_argv)).stop(name, kill=True)
    except LxcError:
        pass


def _listed(directory: str, pattern: str) -> list[str]:
    try:
        return sorted(n for n in os.listdir(directory) if re.fullmatch(pattern, n))
    except FileNotFoundError:
        return []


def _netns(prefix: str) -> list[str]:
    return _listed("/run/netns", rf"{re.escape(prefix)}-(host-\d+|router)")


def _root_veths(prefix: str) -> list[str]:
    return _listed("/sys/class/net", rf"{re.escape(prefix)}(h\d+|r0)")


def _cmdline(pid: int) -> list[str]:
    return [w.decode(errors="replace") for w in procs.cmdline(pid)]


_alive = procs.alive


def _pids(prefix: str, anywhere: bool = False) -> list[int]:
    """Processes of this fleet: an argument is (under) its state or run dir;
    with ``anywhere``, any mention of those dirs (LXC monitors too)."""
    roots = [paths(prefix)["state"], paths(prefix)["run"]]
    def hit(a: str) -> bool:
        return any(r + "/" in a if anywhere else a == r or a.startswith((r + "/", f"ipc://{r}/")) for r in roots)
    return [pid for pid, words in procs.processes()
            if any(hit(w.decode(errors="replace")) for w in words) and procs.alive(pid)]


def forward_rule(bridge: str, prefix: str) -> list[str]:
    """The FORWARD rule that lets frames cross the fleet bridge (tagged)."""
    return ["-i", bridge, "-o", bridge, "-m", "comment", "--comment", f"dcfleet:{prefix}", "-j", "ACCEPT"]


def ensure_forward_rule(bridge: str, prefix: str, ns: str | None = None) -> bool:
    """Insert forward_rule when the FORWARD policy is DROP and it is missing;
    True when inserted.  ``ns`` runs it in that namespace (tests)."""
    policy = _run(_in_net(ns) + ["iptables", "-w", "-S", "FORWARD"]).stdout.splitlines()
    if "-P FORWARD DROP" not in policy:
        return False
    spec = forward_rule(bridge, prefix)
    if _run(_in_net(ns) + ["iptables", "-w", "-C", "FORWARD", *spec], ok=(0, 1)).returncode == 0:
        return False
    _run(_in_net(ns) + ["iptables", "-w", "-I", "FORWARD", *spec])
    return True


def remove_forward_rule(bridge: str, prefix: str, ns: str | None = None) -> None:
    """Delete every copy of forward_rule; nothing else is touched."""
    spec = forward_rule(bridge, prefix)
    for _ in range(10):
        if _run(_in_net(ns) + ["iptables", "-w", "-D", "FORWARD", *spec], ok=(0, 1, 2)).returncode:
            return


def plan(prefix: str, n: int, subnet: str, hub_port: int = 7100, hub: bool = True, router: bool = False,
         route_domain: str | None = None) -> dict:
    """The fleet description (the state file's content) before anything is made.

    Raises: FleetError for a bad prefix, host count or subnet."""
    if not PREFIX_RE.match(prefix):
        raise FleetError(f"bad prefix {prefix!r}: 1-9 chars of a-z0-9, starting with a letter")
    try:
        net = ipaddress.IPv4Network(subnet, strict=True)
    except ValueError as exc:
        raise FleetError(f"bad --fleet-subnet {subnet!r}: {exc}") from exc
    if not 1 <= n <= MAX_HOSTS or net.network_address + 10 + n >= net.broadcast_address:
        raise FleetError(f"cannot place {n} hosts in {net} (1-{MAX_HOSTS}, at subnet+11...)")
    if router and not hub:
        raise FleetError("--router needs the hub (drop --no-hub)")
    p, gw = paths(prefix), str(net.network_address + 1)
    hub_d = {"name": "hub", "tcp": f"tcp://{gw}:{hub_port}", "ipc": f"ipc://{p['run']}/hub.sock",
             "state_dir": f"{p['state']}/hub", "log": f"{p['log']}/hub.log", "pid_file": f"{p['run']}/hub.pid",
             "pid": None} if hub else None
    hosts = []
    for i in range(1, n + 1):
        name, addr = f"host-{i}", str(net.network_address + 10 + i)
        hosts.append({"name": name, "index": i, "netns": f"{prefix}-host-{i}", "veth": f"{prefix}h{i}",
                      "address": addr, "tcp": f"tcp://{addr}:{AGENT_PORT}", "ipc": f"ipc://{p['run']}/{name}.sock",
                      "state_dir": f"{p['state']}/{name}", "lxc_path": f"{p['state']}/{name}/lxc",
                      "bridge": CONTAINER_BRIDGE, "subnet": f"10.220.{i}.0/24", "port_range": PORT_RANGE,
                      "log": f"{p['log']}/{name}.log", "pid_file": f"{p['run']}/{name}.pid", "pid": None})
    router_d = None
    if router:
        addr = str(net.network_address + 5)
        router_d = {"name": "router", "netns": f"{prefix}-router", "veth": f"{prefix}r0", "address": addr,
                    "listen": f"{addr}:{ROUTER_PORT}", "state_dir": f"{p['state']}/router",
                    "log": f"{p['log']}/router.log", "pid_file": f"{p['run']}/router.pid", "pid": None}
    return {"version": 1, "prefix": prefix, "status": "starting", "owner_pid": os.getppid(),
            "route_domain": route_domain or f"{prefix}.test", "router": router_d,
            "created": time.time(), "fleet_subnet": str(net), "gateway": gw, "bridge": p["bridge"],
            "forward_rule": None, "dirs": {k: p[k] for k in ("state", "run", "log")},
            "dcctl_host": hub_d["tcp"] if hub else hosts[0]["tcp"], "hub": hub_d, "hosts": hosts}


def save(state: dict) -> None:
    """Write the state file atomically."""
    from dcctl.files import atomic_write
    atomic_write(paths(state["prefix"])["state_file"], json.dumps(state, indent=1), mode=0o600)


def load(prefix: str) -> dict | None:
    """The state file of ``prefix``, or None."""
    try:
        with open(paths(prefix)["state_file"]) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ping(endpoint: str, timeout_s: float = 2.0) -> bool:
    """True when the server at ``endpoint`` answers ``_zerorpc_ping``."""
    from dcctl import errors, wire
    try:
        with wire.connect(endpoint, timeout_s=timeout_s) as c:
            return c.call("_zerorpc_ping")[0] == "pong"
    except (errors.DcError, OSError):
        return False


def _last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        return ([ln.strip() for ln in f.read()[-4000:].splitlines() if ln.strip()] or [""])[-1]
