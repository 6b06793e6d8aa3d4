"""``ops/fleet up``: bring a local fleet up (see ops/fleet.py for the layout).

The steps, each recorded in the state file as it is made: the fleet bridge
and the FORWARD rule, one namespace and veth per host, the CURVE keys, the
hub, the operator's ``host_add`` of each host, the agents, and the busybox
image pushed to the hub.  A failure or a signal at any step undoes
everything (``ops.fleetlib.down.down``).
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

from dcctl.wire.endpoint import parse_endpoint
from ops.fleetlib.base import (FleetError, REPO, _in_net, _last_line, _netns, _root_veths, _run,
                               ensure_forward_rule, forward_rule, load, paths, ping, plan, save)
from ops.fleetlib.down import down
from ops.fleetlib.hubs import hub_args, hub_endpoints, plan_hubs, share_keys, start_etcd

# Runs inside the host's namespaces: a sysfs of the network namespace, with the
# machine's cgroup mounts moved onto it, then exec of the command.
_ENTER_SH = ('set -e; t=$1; shift; mkdir -p "$t"; mount --rbind /sys/fs/cgroup "$t"; umount -l /sys; '
             'mount -t sysfs sysfs /sys; mount --move "$t" /sys/fs/cgroup; rmdir "$t"; exec "$@"')


#: Each agent's Prometheus endpoint, on its namespace address (agents/metrics.py).
METRICS_PORT = 9323
HUB_METRICS_PORT = 9324


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
           "--port-range", h["port_range"], "--host-name", h["name"], "--advertise-address", h["address"],
           f"--metrics-listen={h['address']}:{METRICS_PORT}"]
    if state["hub"]:
        # --flag=VALUE: a Z85 key may start with "-"
        cmd += ["--hub", hub_endpoints(state), f"--hub-key={state['hub']['public_key']}",
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


def _wait_ready(procs: dict, timeout_s: float) -> None:
    """Wait until every (proc, endpoint, log) answers a ping over ipc."""
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
    return [*_in_net(r["netns"]), sys.executable, "-m", "router.main", "--hub", hub_endpoints(state),
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
       router: bool = False, route_domain: str | None = None, store: str = "sqlite", hubs: int = 1,
       prometheus: bool = False) -> dict:
    """Bring a fleet up (see the module docstring) and return its state;
    ``store`` "etcd" runs a local etcd and ``hubs`` hubs on it
    (ops.fleetlib.hubs); with ``prometheus``, Debian's Prometheus scraping
    every hub and agent (ops/fleetlib/prometheus.py).

    Raises: FleetError (bad arguments, already up, a step failed); on failure
    after the first change everything made is undone."""
    state, p = plan(prefix, n, subnet, hub_port, hub, router, route_domain), paths(prefix)
    plan_hubs(state, store, hubs, hub_port)
    state["heartbeat_s"] = heartbeat_s
    state["agent_args"] = list(agent_args)  # `ops/fleet start HOST` runs the agent with them again
    for h in state["hosts"]:
        h["metrics_url"] = f"http://{h['address']}:{METRICS_PORT}/metrics"
    for i, hd in enumerate(state["hubs"]):
        hd["metrics_url"] = f"http://{state['gateway']}:{HUB_METRICS_PORT + i}/metrics"
    state["prometheus"] = None
    if prometheus:
        from ops.fleetlib import prometheus as prom
        if not os.path.exists(prom.PROMETHEUS):
            raise FleetError(f"--prometheus: {prom.PROMETHEUS} is not installed (ops/setup installs it)")
        state["prometheus"] = prom.plan_prometheus(state)
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
        share_keys(state)
        save(state)
        if state.get("etcd"):
            start_etcd(state, timeout_s)
            save(state)
        procs = {}
        if hub:
            for i, hd in enumerate(state["hubs"]):
                os.makedirs(hd["state_dir"], mode=0o700, exist_ok=True)
                argv = [sys.executable, "-m", "hub.main", "--listen", hd["tcp"], "--listen", hd["ipc"],
                        "--state-dir", hd["state_dir"], "--heartbeat-s", str(heartbeat_s),
                        "--route-domain", state["route_domain"], *hub_args(state, hd),
                        f"--metrics-listen={state['gateway']}:{HUB_METRICS_PORT + i}"]
                hd["argv"] = argv  # `ops/fleet start hub-N` runs it again with them
                key = "hub" if i == 0 else hd["name"]
                procs[key] = (_spawn(argv, hd["log"], hd["pid_file"]), hd["ipc"], hd["log"])
                hd["pid"] = procs[key][0].pid
                if i == 0:
                    state["hub"]["pid"] = hd["pid"]
                save(state)
                _wait_ready({key: procs[key]}, timeout_s)
                if i == 0:
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
        if state["prometheus"]:
            from ops.fleetlib import prometheus as prom
            pr = state["prometheus"]
            prom.write_config(pr, state)
            proc = _spawn(prom.prometheus_argv(pr), pr["log"], pr["pid_file"])
            pr["pid"] = proc.pid
            save(state)
            prom.wait_ready(pr, proc, timeout_s)
        state["status"] = "up"
        save(state)
        return state
    except BaseException:
        for sig in (signal.SIGINT, signal.SIGTERM):  # the undo itself must run to its end
            signal.signal(sig, signal.SIG_IGN)
        down(prefix)
        raise
