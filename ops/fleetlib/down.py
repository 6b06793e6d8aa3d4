"""``ops/fleet down`` and ``status``: remove everything of a fleet, found from
its state file and by its prefix alone, and report what runs.

Containers are stopped with ``lxc-stop -k`` (through lxcwrap) inside their host's namespace
(or the namespace of their monitor, when the name is gone); then processes,
namespaces (and the bridge lock file each agent took in its namespace,
``/run/dcfleet/locks/net-<netns inode>-<bridge>.lock``, agents/main.py),
veths, the FORWARD rule, the bridge, mounts and directories.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import time

from agents.decommission import BRIDGE_LOCK_DIR  # agents.main.lock_bridge's lock dir
from lxcwrap.lxc import LOCK_ROOT  # liblxc's lock files
from ops.fleetlib.base import (_alive, _cmdline, _in_net, _netns, _pids, _root_veths, _run, forward_rule,
                               kill_container, load, paths, ping, remove_forward_rule)


def netns_locks(ns: str, lock_dir: str = BRIDGE_LOCK_DIR) -> list[str]:
    """The bridge lock files agents took in network namespace ``ns``
    (LOCK_DIR/net-<its inode>-<bridge>.lock); [] when ``ns`` is gone."""
    try:
        inode = os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return []
    return sorted(glob.glob(os.path.join(lock_dir, f"net-{inode}-*.lock")))


def exists(prefix: str) -> bool:
    """True when anything of fleet ``prefix`` exists (its state file, or a
    leftover found by prefix)."""
    return load(prefix) is not None or bool(leftovers(prefix))


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
    # each host's containers, and its build containers (agents/build.py: STATE/builds)
    for lxc_path in sorted(glob.glob(f"{p['state']}/host-*/lxc") + glob.glob(f"{p['state']}/host-*/builds")):
        ns = f"{prefix}-{os.path.basename(os.path.dirname(lxc_path))}"
        for cfg in sorted(glob.glob(f"{lxc_path}/*/config")):
            name = os.path.basename(os.path.dirname(cfg))
            if ns in nets:
                kill_container(lxc_path, name, _in_net(ns))
    for pid in _pids(prefix, anywhere=True):  # monitors whose namespace lost its name
        words = " ".join(_cmdline(pid)).split()
        if len(words) >= 4 and words[:2] == ["[lxc", "monitor]"]:
            kill_container(words[2], words[3], ["nsenter", "-t", str(pid), "-n"])
    _stop(_pids(prefix, anywhere=True), grace_s=2.0)
    for ns in sorted(nets | {h["netns"] for h in state.get("hosts", []) + [state.get("router") or {}] if h}):
        for lock in netns_locks(ns):  # named by the namespace's inode: only findable while it exists
            try:
                os.unlink(lock)
            except FileNotFoundError:
                pass
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
    # liblxc's lock files of the hosts' lxcpaths (lxcwrap.lxc.LOCK_ROOT), one per container name used
    shutil.rmtree(os.path.join(LOCK_ROOT, p["state"].lstrip("/")), ignore_errors=True)
    return leftovers(prefix)


def leftovers(prefix: str) -> list[str]:
    """What of fleet ``prefix`` still exists, one description per thing."""
    p = paths(prefix)
    left = [f"netns {n}" for n in _netns(prefix)] + [f"link {v}" for v in _root_veths(prefix)]
    left += [f"lock {path}" for n in _netns(prefix) for path in netns_locks(n)]
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
    for proc in [*(state.get("hubs") or ([state["hub"]] if state["hub"] else [])), *state["hosts"]]:
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
