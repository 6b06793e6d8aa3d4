"""Local fleet launcher: N simulated hosts on one machine (``ops/fleet``).

``up N`` makes a fleet bridge ``<prefix>fleet0`` in the root namespace with the
gateway address of ``--fleet-subnet``; per host ``i`` a network namespace
``<prefix>-host-<i>`` joined to it by a veth (root side ``<prefix>h<i>``,
namespace side ``eth0`` at subnet+10+i); the hub in the root namespace; and one
agent per host inside its namespace, started once the hub has admitted its key
(``host_add``, the operator's step, over the hub's local endpoint).  Everything made is recorded in
``/run/dcfleet/<prefix>/fleet.json`` (written before the first step and after
each one), which ``status`` and ``down`` read; ``down`` also finds leftovers by
prefix alone.

With ``--router``, one ``dc-router`` runs in its own namespace
``<prefix>-router`` (veth ``<prefix>r0``, address subnet+5), with its own
CURVE key in the hub's ``router`` role; its HAProxy answers on port 80 there
(``export DCF_ROUTER=ADDR:80``).  The hub's route domain is ``<prefix>.test``
unless ``--route-domain`` names another.

Agents are not started with ``ip netns exec``: it remounts /sys for the
namespace and so hides the cgroup hierarchies that LXC needs.  They run
through ``nsenter --net`` and ``unshare --mount``, which mounts a sysfs of the
namespace (LXC reads ``/sys/class/net/<bridge>/bridge``) and moves the
machine's ``/sys/fs/cgroup`` tree onto it.
"""
from __future__ import annotations

import argparse
import glob
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_ROOT, STATE_ROOT, LOG_ROOT = "/run/dcfleet", "/var/lib/dcfleet", "/var/log/dcfleet"
AGENT_PORT, PORT_RANGE, CONTAINER_BRIDGE = 7000, "20000-20999", "dcbr0"
ROUTER_PORT = 80
PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,8}$")  # <prefix>fleet0 fits 15 chars
MAX_HOSTS = 200
# Runs inside the host's namespaces: a sysfs of the network namespace, with the
# machine's cgroup mounts moved onto it, then exec of the command.
_ENTER_SH = ('set -e; t=$1; shift; mkdir -p "$t"; mount --rbind /sys/fs/cgroup "$t"; umount -l /sys; '
             'mount -t sysfs sysfs /sys; mount --move "$t" /sys/fs/cgroup; rmdir "$t"; exec "$@"')


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


def _kill_container(lxc_path: str, name: str, prefix_argv: list[str]) -> None:
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
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _pids(prefix: str, anywhere: bool = False) -> list[int]:
    """Processes of this fleet: an argument is (under) its state or run dir;
    with ``anywhere``, any mention of those dirs (LXC monitors too)."""
    roots = [paths(prefix)["state"], paths(prefix)["run"]]
    def hit(a: str) -> bool:
        return any(r + "/" in a if anywhere else a == r or a.startswith((r + "/", f"ipc://{r}/")) for r in roots)
    pids = [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != os.getpid()]
    return [pid for pid in pids if any(hit(a) for a in _cmdline(pid)) and _alive(pid)]


def _stop(pids: list[int], grace_s: float = 5.0) -> None:
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.1)
        pids = [p for p in pids if _alive(p)]
        if not pids:
            return


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


def _check_subnet_free(subnet: str) -> None:
    net = ipaddress.IPv4Network(subnet)
    for r in json.loads(_run(["ip", "-j", "-4", "route", "show", "table", "all"]).stdout or "[]"):
        dst = r.get("dst", "default")
        if dst != "default" and ipaddress.IPv4Network(dst, strict=False).overlaps(net):
            raise FleetError(f"fleet subnet {net} overlaps route {dst} on this machine; pick another --fleet-subnet")


def _spawn(argv: list[str], log: str, pid_file: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env=env, start_new_session=True)
    with open(pid_file, "w") as f:
        f.write(f"{proc.pid}\n")
    return proc


def agent_argv(state: dict, h: dict, agent_args: list[str]) -> list[str]:
    """The command that runs host ``h``'s agent inside its namespaces."""
    cmd = [sys.executable, "-m", "agents.main", "--listen", h["tcp"], "--listen", h["ipc"],
           "--state-dir", h["state_dir"], "--bridge", h["bridge"], "--subnet", h["subnet"],
           "--port-range", h["port_range"], "--host-name", h["name"], "--advertise-address", h["address"]]
    if state["hub"]:
        # --flag=VALUE: a Z85 key may start with "-"
        cmd += ["--hub", state["hub"]["tcp"], f"--hub-key={state['hub']['public_key']}",
                "--heartbeat-s", str(state.get("heartbeat_s", 2.0))]
    tmp = f"{state['dirs']['run']}/{h['name']}.cgroup"
    return [*_in_net(h["netns"]), "unshare", "--mount", "--propagation", "slave", "--",
            "sh", "-c", _ENTER_SH, "sh", tmp, *cmd, *agent_args]


def setup_keys(state: dict) -> None:
    """CURVE keys for the fleet: a key pair per host and for the hub (in
    their state dirs); each host admits the hub as admin (the hub admits each
    host later, by the operator's step: add_hosts); the operator's dcctl key pair (CONFIG_DIR/dcctl.key_secret,
    made if missing, kept at down) is admin everywhere, and the servers' public
    keys are written where dcctl looks for them (CONFIG_DIR/servers/), so
    `export DCCTL_HOST=tcp://...` is all dcctl needs."""
    from dcctl import auth
    from dcctl.wire.clientconfig import config_dir, key_pair_path, known_server_key_path
    cfg = config_dir()
    operator = key_pair_path()
    if not os.path.exists(operator):
        auth.keygen(cfg, "dcctl")
    op_public = auth.load_pair(operator)[0].decode()
    known = []
    servers = ([state["hub"]] if state["hub"] else []) + state["hosts"]
    for srv in servers:
        keys_dir = os.path.join(srv["state_dir"], "keys")
        srv["public_key"] = auth.ensure_server_pair(keys_dir)[0].decode()
        auth.Allowlist(keys_dir).add("admin", "operator", op_public)
        path = known_server_key_path(srv["tcp"])
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w") as f:
            f.write(f'curve\n    public-key = "{srv["public_key"]}"\n')
        known.append(path)
    if state["hub"]:
        for h in state["hosts"]:
            auth.Allowlist(os.path.join(h["state_dir"], "keys")).add("admin", "hub", state["hub"]["public_key"])
        if state.get("router"):
            r = state["router"]
            os.makedirs(r["state_dir"], mode=0o700, exist_ok=True)
            r["key"] = os.path.join(r["state_dir"], "router.key_secret")
            if not os.path.exists(r["key"]):
                auth.keygen(r["state_dir"], "router")
            auth.Allowlist(os.path.join(state["hub"]["state_dir"], "keys")).add(
                "router", "router", auth.load_pair(r["key"])[0].decode())
    state["known_server_keys"] = known


def add_hosts(state: dict) -> None:
    """The operator's step for each host, over the hub's local endpoint:
    ``host_add NAME PUBLIC_KEY`` binds the host's name to its key (and
    admits the key), so that each host may register, under its name only."""
    from dcctl import errors, wire
    with wire.connect(state["hub"]["ipc"], timeout_s=30) as hub:
        for h in state["hosts"]:
            try:
                hub.call("host_add", h["name"], h["public_key"])
            except errors.DcError as exc:
                raise FleetError(f"host_add {h['name']}: {type(exc).__name__}: {exc}") from exc


def seed_hub(state: dict, timeout_s: float) -> None:
    """Wait until every host has registered with the hub, then push the
    busybox base image from host-1 into the hub's registry (every host built
    the same image id offline, so no host needs to pull it)."""
    from dcctl import errors, wire
    deadline = time.monotonic() + timeout_s
    with wire.connect(state["hub"]["ipc"], timeout_s=30) as hub:
        while True:
            alive = {h["name"] for h in hub.call("hosts") if h["state"] == "alive"}
            if alive >= {h["name"] for h in state["hosts"]}:
                break
            if time.monotonic() > deadline:
                raise FleetError(f"hosts did not register with the hub in {timeout_s:g} s "
                                 f"(registered: {', '.join(sorted(alive)) or 'none'})")
            time.sleep(0.2)
        try:
            hub.call("image_push", state["hosts"][0]["name"], "busybox", timeout_s=120)
        except errors.DcError as exc:
            raise FleetError(f"pushing busybox to the hub: {type(exc).__name__}: {exc}") from exc


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


def _wait_ready(procs: dict, timeout_s: float) -> None:
    """Wait until every (proc, endpoint, log) answers a ping over ipc."""
    from dcctl.wire.endpoint import parse_endpoint
    pending, deadline = dict(procs), time.monotonic() + timeout_s
    while pending:
        for name, (proc, endpoint, log) in list(pending.items()):
            if proc.poll() is not None:
                raise FleetError(f"{name} exited with status {proc.returncode}: {_last_line(log)}")
            if os.path.exists(parse_endpoint(endpoint).path) and ping(endpoint):
                del pending[name]
        if pending and time.monotonic() > deadline:
            raise FleetError(f"no answer within {timeout_s:g} s from {', '.join(sorted(pending))}")
        time.sleep(0.2)


def router_argv(state: dict) -> list[str]:
    """The command that runs the fleet's router inside its namespace."""
    r, hub = state["router"], state["hub"]
    return [*_in_net(r["netns"]), sys.executable, "-m", "router.main", "--hub", hub["tcp"],
            f"--hub-key={hub['public_key']}", "--key", r["key"], "--state-dir", r["state_dir"],
            "--listen", r["listen"]]


def _wait_router(state: dict, proc: subprocess.Popen, timeout_s: float) -> None:
    """Wait until the router follows the hub and its HAProxy runs."""
    r, deadline = state["router"], time.monotonic() + timeout_s
    path = os.path.join(r["state_dir"], "status.json")
    while True:
        if proc.poll() is not None:
            raise FleetError(f"router exited with status {proc.returncode}: {_last_line(r['log'])}")
        try:
            with open(path) as f:
                st = json.load(f)
            if st.get("converged") and st.get("haproxy_pid"):
                return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise FleetError(f"router not following the hub within {timeout_s:g} s: {_last_line(r['log'])}")
        time.sleep(0.2)


def up(prefix: str, n: int, subnet: str, hub_port: int = 7100, hub: bool = True,
       agent_args: list[str] = (), timeout_s: float = 60.0, heartbeat_s: float = 2.0,
       router: bool = False, route_domain: str | None = None) -> dict:
    """Bring a fleet up (see the module docstring) and return its state.

    Raises: FleetError (bad arguments, already up, a step failed); on failure
    after the first change everything made is undone."""
    state, p = plan(prefix, n, subnet, hub_port, hub, router, route_domain), paths(prefix)
    state["heartbeat_s"] = heartbeat_s
    if load(prefix) or _netns(prefix) or os.path.exists(f"/sys/class/net/{p['bridge']}") or _root_veths(prefix):
        raise FleetError(f"a fleet with prefix {prefix!r} is already up (or left over): "
                         f"run `ops/fleet down --prefix {prefix}` first")
    if hub and not os.path.exists(os.path.join(REPO, "hub", "main.py")):
        raise FleetError("hub/main.py does not exist yet: use --no-hub")
    _check_subnet_free(state["fleet_subnet"])
    os.makedirs(p["run"], mode=0o700, exist_ok=True)
    save(state)
    try:
        for d in (p["state"], p["log"]):
            os.makedirs(d, mode=0o700, exist_ok=True)
        br, plen = p["bridge"], ipaddress.IPv4Network(state["fleet_subnet"]).prefixlen
        _run(["ip", "link", "add", br, "type", "bridge"])
        _run(["ip", "addr", "add", f"{state['gateway']}/{plen}", "dev", br])
        _run(["ip", "link", "set", br, "up"])
        state["forward_rule"] = forward_rule(br, prefix) if ensure_forward_rule(br, prefix) else None
        for h in state["hosts"]:
            ns = h["netns"]
            _run(["ip", "netns", "add", ns])
            _run(["ip", "link", "add", h["veth"], "type", "veth", "peer", "name", "eth0", "netns", ns])
            _run(["ip", "link", "set", h["veth"], "master", br, "up"])
            for argv in (["link", "set", "lo", "up"], ["addr", "add", f"{h['address']}/{plen}", "dev", "eth0"],
                         ["link", "set", "eth0", "up"], ["route", "add", "default", "via", state["gateway"]]):
                _run(["ip", "-n", ns, *argv])
        if state["router"]:
            r = state["router"]
            _run(["ip", "netns", "add", r["netns"]])
            _run(["ip", "link", "add", r["veth"], "type", "veth", "peer", "name", "eth0", "netns", r["netns"]])
            _run(["ip", "link", "set", r["veth"], "master", br, "up"])
            for argv in (["link", "set", "lo", "up"], ["addr", "add", f"{r['address']}/{plen}", "dev", "eth0"],
                         ["link", "set", "eth0", "up"], ["route", "add", "default", "via", state["gateway"]]):
                _run(["ip", "-n", r["netns"], *argv])
        setup_keys(state)
        save(state)
        procs = {}
        if hub:
            hd = state["hub"]
            os.makedirs(hd["state_dir"], mode=0o700, exist_ok=True)
            argv = [sys.executable, "-m", "hub.main", "--listen", hd["tcp"], "--listen", hd["ipc"],
                    "--state-dir", hd["state_dir"], "--heartbeat-s", str(heartbeat_s),
                    "--route-domain", state["route_domain"]]
            procs["hub"] = (_spawn(argv, hd["log"], hd["pid_file"]), hd["ipc"], hd["log"])
            hd["pid"] = procs["hub"][0].pid
            save(state)
            _wait_ready({"hub": procs["hub"]}, timeout_s)
            add_hosts(state)  # before the agents start: they register at once
        for h in state["hosts"]:
            procs[h["name"]] = (_spawn(agent_argv(state, h, list(agent_args)), h["log"], h["pid_file"]),
                                h["ipc"], h["log"])
            h["pid"] = procs[h["name"]][0].pid
        save(state)
        _wait_ready(procs, timeout_s)
        if hub:
            seed_hub(state, timeout_s)
        if state["router"]:
            r = state["router"]
            proc = _spawn(router_argv(state), r["log"], r["pid_file"])
            r["pid"] = proc.pid
            save(state)
            _wait_router(state, proc, timeout_s)
        state["status"] = "up"
        save(state)
        return state
    except BaseException:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the undo itself must run to its end
            signal.signal(sig, signal.SIG_IGN)
        down(prefix)
        raise


def down(prefix: str) -> list[str]:
    """Remove everything of fleet ``prefix`` (from its state file and by
    name); idempotent.  Returns what is left (empty when all is gone)."""
    for _ in range(2):  # a second pass for what a concurrent up/down or the kernel left
        left = _down_once(prefix)
        for _ in range(20):  # namespaces are destroyed asynchronously
            if not left:
                return left
            time.sleep(0.1)
            left = leftovers(prefix)
    return left


def _down_once(prefix: str) -> list[str]:
    p, state = paths(prefix), load(prefix) or {}
    _stop(_pids(prefix))
    nets = set(_netns(prefix))
    for lxc_path in sorted(glob.glob(f"{p['state']}/host-*/lxc")):
        ns = f"{prefix}-{os.path.basename(os.path.dirname(lxc_path))}"
        for cfg in sorted(glob.glob(f"{lxc_path}/*/config")):
            name = os.path.basename(os.path.dirname(cfg))
            if ns in nets:
                _kill_container(lxc_path, name, _in_net(ns))
    for pid in _pids(prefix, anywhere=True):  # monitors whose namespace lost its name
        words = " ".join(_cmdline(pid)).split()
        if len(words) >= 4 and words[:2] == ["[lxc", "monitor]"]:
            _kill_container(words[2], words[3], ["nsenter", "-t", str(pid), "-n"])
    _stop(_pids(prefix, anywhere=True), grace_s=2.0)
    for ns in sorted(nets | {h["netns"] for h in state.get("hosts", []) + [state.get("router") or {}] if h}):
        _run(["ip", "netns", "del", ns], ok=(0, 1))
    for veth in _root_veths(prefix):
        _run(["ip", "link", "del", veth], ok=(0, 1))
    remove_forward_rule(p["bridge"], prefix)
    if os.path.exists(f"/sys/class/net/{p['bridge']}"):
        _run(["ip", "link", "del", p["bridge"]], ok=(0, 1))
    for path in state.get("known_server_keys", []):  # what setup_keys wrote for dcctl
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    dirs = [p["state"], p["log"], p["run"]]
    with open("/proc/self/mountinfo") as f:
        mounts = [line.split()[4] for line in f]
    for m in sorted(mounts, key=len, reverse=True):
        if any(m.startswith(d + "/") for d in dirs):
            _run(["umount", "-l", m], ok=(0, 1, 32))
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)  # /run/dcfleet etc. stay: the system's dcfleet dirs
    return leftovers(prefix)


def leftovers(prefix: str) -> list[str]:
    """What of fleet ``prefix`` still exists, one description per thing."""
    p = paths(prefix)
    left = [f"netns {n}" for n in _netns(prefix)] + [f"link {v}" for v in _root_veths(prefix)]
    left += [f"link {p['bridge']}"] if os.path.exists(f"/sys/class/net/{p['bridge']}") else []
    left += [f"process {pid}" for pid in _pids(prefix, anywhere=True)]
    left += [f"dir {d}" for d in (p["state"], p["log"], p["run"]) if os.path.exists(d)]
    spec = forward_rule(p["bridge"], prefix)
    if _run(["iptables", "-w", "-C", "FORWARD", *spec], ok=(0, 1, 2)).returncode == 0:
        left.append("iptables FORWARD rule")
    return left


def status(prefix: str) -> dict | None:
    """The state plus, per hub/host, ``alive`` (its pid runs) and ``ping``."""
    state = load(prefix)
    if state is None:
        return None
    for proc in [state["hub"], *state["hosts"]] if state["hub"] else state["hosts"]:
        pid = proc.get("pid")
        proc["alive"] = bool(pid) and _alive(pid) and pid in _pids(prefix)
        proc["ping"] = ping(proc["ipc"]) if proc["alive"] else False
    r = state.get("router")
    if r:  # "ping": it follows the hub (its status file says so)
        r["alive"] = bool(r.get("pid")) and _alive(r["pid"]) and r["pid"] in _pids(prefix)
        try:
            with open(os.path.join(r["state_dir"], "status.json")) as f:
                r["ping"] = r["alive"] and bool(json.load(f).get("hub_ok"))
        except (OSError, ValueError):
            r["ping"] = False
    return state


def _print_up(state: dict) -> None:
    """Shell that ``eval`` takes: the exports, then one comment per host."""
    print(f"export DCCTL_HOST={state['dcctl_host']}")
    if state.get("router"):
        print(f"export DCF_ROUTER={state['router']['listen']}")
    for h in state["hosts"]:
        print(f"# {h['name']} {h['address']} {h['tcp']}")


def main(argv: list[str] | None = None) -> int:
    """``ops/fleet up N | status | down`` (see --help)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--prefix", default="dcf", help="names everything made (default dcf)")
    common.add_argument("--json", action="store_true", help="print the fleet description as JSON")
    ap = argparse.ArgumentParser(prog="ops/fleet", description="Local fleet: hosts as network namespaces.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", parents=[common], help="start N hosts, their agents and the hub")
    u.add_argument("n", type=int)
    u.add_argument("--fleet-subnet", default="10.212.0.0/24")
    u.add_argument("--agent-arg", action="append", default=[], help="extra agent argument (repeatable; "
                   "use --agent-arg=--flag=value)")
    u.add_argument("--no-hub", action="store_true", help="no hub; agents get no --hub")
    u.add_argument("--hub-port", type=int, default=7100)
    u.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the agents and hub")
    u.add_argument("--heartbeat-s", type=float, default=2.0, help="seconds between agent heartbeats")
    u.add_argument("--router", action="store_true", help="also one dc-router (HAProxy) in its own namespace")
    u.add_argument("--route-domain", help="the hub's route domain (default <prefix>.test)")
    sub.add_parser("status", parents=[common], help="hosts: pid alive, ping ok")
    sub.add_parser("down", parents=[common], help="stop and remove everything of the fleet")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("fleet: must run as root", file=sys.stderr)
        return 2
    if not PREFIX_RE.match(args.prefix):
        print(f"fleet: bad prefix {args.prefix!r}: 1-9 chars of a-z0-9, starting with a letter", file=sys.stderr)
        return 2
    if args.cmd == "up":
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM undoes like ^C
        try:
            state = up(args.prefix, args.n, args.fleet_subnet, args.hub_port, not args.no_hub,
                       args.agent_arg, args.timeout, args.heartbeat_s, args.router, args.route_domain)
        except (Exception, KeyboardInterrupt) as exc:
            why = str(exc) if isinstance(exc, FleetError) else "interrupted; everything made was removed" \
                if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
            print(f"fleet: up failed: {why}", file=sys.stderr)
            return 1
        try:
            print(json.dumps(state, indent=1)) if args.json else _print_up(state)
            sys.stdout.flush()
        except BrokenPipeError:  # `ops/fleet up 3 | head -1`: the fleet is up all the same
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    if args.cmd == "down":
        try:
            left = down(args.prefix)
        except FleetError as exc:
            left = [str(exc)]
        if left:
            print(f"fleet: down left: {', '.join(left)}", file=sys.stderr)
            return 1
        print(f"fleet {args.prefix}: down; every namespace, bridge, rule, container, process and dir removed")
        return 0
    state = status(args.prefix)
    if state is None:
        print(json.dumps(None) if args.json else f"fleet {args.prefix}: not up")
        return 1
    procs = ([state["hub"]] if state["hub"] else []) + state["hosts"] + ([state["router"]] if state.get("router") else [])
    if args.json:
        print(json.dumps(state, indent=1))
    else:
        print(f"fleet {args.prefix}: {state['status']}, bridge {state['bridge']} {state['gateway']}")
        for pr in procs:
            print(f"{pr['name']:8} pid {pr['pid']} {'alive' if pr['alive'] else 'DEAD':5} "
                  f"ping {'ok' if pr['ping'] else 'FAIL':4} {pr.get('tcp') or 'http://' + pr['listen']}")
    return 0 if all(pr["alive"] and pr["ping"] for pr in procs) else 1


if __name__ == "__main__":
    sys.exit(main())
