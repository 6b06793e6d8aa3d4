"""``dc-agent decommission``: remove what a standalone agent left on its host.

Containers and port mappings outlive the agent by design (each container
runs under its own ``lxc-start`` monitor, mappings are kernel rules), so
stopping an agent removes nothing.  This command finds everything by the
names the agent itself uses, from the same settings (flags or ``--config``
TOML, as ``dc-agent`` takes them):

- with ``--containers``: every container of the agent's state dir, as
  ``container_destroy NAME force`` does it (kill, DNAT rules, rootfs upper
  dir and config under the LXC path, veth, record), after finishing or
  rolling back whatever a crash interrupted (``ContainerManager.recover``);
- the bridge and the netfilter chains ``DCF-<bridge>-*`` with their jumps
  (``agents.network.Network.teardown``, ``agents.netfilter.Layout``);
- the lock files ``STATE_DIR/agent.lock`` and
  ``/run/dcfleet/locks/net-<netns inode>-<bridge>.lock`` (``agents.main``),
  the agent's stale ipc socket files and ``STATE_DIR/run`` (enter relays),
  and the LXC path when it is empty;
- with ``--purge`` (only once no container is left): the whole state dir
  (images, keys, records).

Without ``--containers`` the containers are left running with their
records, but without their bridge and port mappings; ``dc-agent
decommission --containers`` later removes them too.

It refuses while an agent holds the state dir (or the bridge) unless
``--stop`` is given, which sends that agent SIGTERM and waits for it to exit.
Run it in the network namespace the agent ran in.  A host that was a member
of a hub is also forgotten there with ``dcctl host_remove NAME``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import time
from typing import Sequence

from agents import config as agent_config
from agents import network as netmod
from agents.containers import ContainerManager
from agents.errmap import translate
from dcctl import errors, files
from dcctl.wire import claim_ipc_path
from dcctl.wire.endpoint import parse_endpoint
from images.store import ImageStore
from lxcwrap.lxc import Lxc

#: Where agents.main.lock_bridge keeps its per-(netns, bridge) locks.
BRIDGE_LOCK_DIR = "/run/dcfleet/locks"
#: Seconds --stop waits for the agent to exit after SIGTERM.
STOP_TIMEOUT_SECONDS = 30.0


def state_lock_path(cfg: agent_config.AgentConfig) -> str:
    """STATE_DIR/agent.lock, as agents.main.lock_state_dir names it."""
    return os.path.join(cfg.state_dir, "agent.lock")


def bridge_lock_path(bridge: str, lock_dir: str = BRIDGE_LOCK_DIR) -> str:
    """LOCK_DIR/net-<inode of this netns>-<bridge>.lock, as
    agents.main.lock_bridge names it (so: run in the agent's netns)."""
    return os.path.join(lock_dir, f"net-{os.stat('/proc/self/ns/net').st_ino}-{bridge}.lock")


def _stop_agent(path: str, timeout_s: float) -> int | None:
    """SIGTERM the agent whose pid is in the state lock ``path``, and wait
    until its lock is free.  Returns the pid, or None when no pid was
    recorded.  Raises: Busy (it did not exit in time)."""
    pid = files.lock_holder(path)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return pid
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fd = files.take_lock(path, write_pid=False)
        if fd is not None:
            os.close(fd)
            return pid
        time.sleep(0.1)
    raise errors.Busy(f"agent pid {pid} did not exit within {timeout_s:g} s of SIGTERM",
                      hint=f"kill -9 {pid}, then run decommission again")


def _take_locks(cfg: agent_config.AgentConfig, stop: bool, lock_dir: str) -> tuple[list[int], list[str], int | None]:
    """Hold the agent's two locks (so no agent starts meanwhile), stopping
    the agent first when ``stop``.  Returns (fds, lock paths, stopped pid).
    Raises: Busy (an agent runs and stop is False, or another agent holds
    the bridge)."""
    paths = [state_lock_path(cfg), bridge_lock_path(cfg.bridge, lock_dir)]
    stopped = None
    fd = files.take_lock(paths[0], write_pid=False)
    if fd is None:
        pid = files.lock_holder(paths[0])
        if not stop:
            raise errors.Busy(f"the agent (pid {pid or '?'}) of {cfg.state_dir} is running",
                              hint="stop it first, or give --stop to have decommission stop it")
        stopped = _stop_agent(paths[0], STOP_TIMEOUT_SECONDS)
        fd = files.take_lock(paths[0], write_pid=False)
        if fd is None:
            raise errors.Busy(f"an agent took {cfg.state_dir} again while decommissioning")
    fds = [fd]
    fd = files.take_lock(paths[1], write_pid=False)
    if fd is None:
        os.close(fds[0])
        raise errors.Busy(f"another agent on this host uses the bridge {cfg.bridge}",
                          hint="decommission that agent, with its own --state-dir")
    fds.append(fd)
    return fds, paths, stopped


def decommission(cfg: agent_config.AgentConfig, *, containers: bool = False, stop: bool = False,
                 purge: bool = False, lock_dir: str = BRIDGE_LOCK_DIR) -> dict:
    """Remove what the agent of ``cfg`` left on this host (see the module doc).

    Args:
        cfg: the agent's settings (state_dir, lxc_path, bridge, subnet,
            port_range, listen: the names everything is found by).
        containers: destroy its containers too.
        stop: SIGTERM a running agent of this state dir first, and wait up
            to STOP_TIMEOUT_SECONDS for it to exit.
        purge: remove the state dir too (images, keys, records); refused
            while containers are left.
        lock_dir: where the bridge lock lives (agents.main's default).

    Returns: {stopped_pid (int | None), destroyed [names], kept [names of
    containers left running], bridge, chains [names], locks_removed
    [paths], sockets_removed [paths], lxc_path_removed (bool),
    state_dir_removed (bool)}.

    Raises:
        Busy: the agent runs (without ``stop``), did not exit in time, or
            another agent holds the bridge.
        InvalidArgument: ``purge`` while containers would be left.
        NetworkError, LxcFailure: a tool failed (nothing already removed
            comes back; running it again finishes the work).
    """
    records_dir = os.path.join(cfg.state_dir, "containers")
    has_records = os.path.isdir(records_dir) and any(f.endswith(".json") for f in os.listdir(records_dir))
    if purge and not containers and has_records:
        raise errors.InvalidArgument("--purge would delete the images under the containers it keeps",
                                     hint="add --containers, or leave out --purge")
    if not os.path.isdir(cfg.state_dir):
        raise errors.InvalidArgument(f"no state dir {cfg.state_dir}", hint="give the agent's --state-dir")
    fds, lock_paths, stopped = _take_locks(cfg, stop, lock_dir)
    result = {"stopped_pid": stopped, "destroyed": [], "kept": [], "bridge": cfg.bridge, "chains": [],
              "locks_removed": [], "sockets_removed": [], "lxc_path_removed": False, "state_dir_removed": False}
    try:
        network = netmod.Network(cfg.bridge, cfg.subnet, tuple(cfg.port_range))
        if containers and has_records:
            network.ensure_bridge()  # recover() reconciles the DNAT chain: let it be there
            manager = ContainerManager(cfg, network, ImageStore(os.path.join(cfg.state_dir, "images")),
                                       Lxc(cfg.lxc_path))
            manager.recover()
            for name in sorted(manager.records):
                manager.destroy(name, True)
                result["destroyed"].append(name)
        elif has_records:
            result["kept"] = sorted(f[:-len(".json")] for f in os.listdir(records_dir) if f.endswith(".json"))
        network.teardown()
        result["chains"] = [chain for _, chain in network.layout.chains()]
        for endpoint in cfg.listen:
            path = parse_endpoint(endpoint).path
            if path and os.path.exists(path):
                claim_ipc_path(path)  # Conflict if someone serves on it
                result["sockets_removed"].append(path)
        shutil.rmtree(os.path.join(cfg.state_dir, "run"), ignore_errors=True)
        if os.path.isdir(cfg.lxc_path) and not os.listdir(cfg.lxc_path):
            os.rmdir(cfg.lxc_path)
            result["lxc_path_removed"] = True
        for path in lock_paths:
            if os.path.exists(path):
                os.unlink(path)  # still held: no agent can start on it before we close
                result["locks_removed"].append(path)
        if purge:
            shutil.rmtree(cfg.state_dir)
            result["state_dir_removed"] = True
    finally:
        for fd in fds:
            os.close(fd)
    return result


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dc-agent decommission", add_help=False,
        description="Remove a standalone agent's bridge, netfilter chains, lock files and sockets, and with "
                    "--containers its containers.  Every other flag is the agent's own (--state-dir, --bridge, "
                    "--config, ...): give the ones the agent ran with.")
    p.add_argument("--containers", action="store_true", help="destroy the agent's containers too")
    p.add_argument("--stop", action="store_true", help="stop a running agent of this state dir first (SIGTERM)")
    p.add_argument("--purge", action="store_true", help="remove the state dir too (images, keys, records)")
    p.add_argument("-h", "--help", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``dc-agent decommission [--containers] [--stop] [--purge] AGENT FLAGS...``.

    Prints what it removed, one ``key: value`` line each; exit 0 when done,
    1 when refused or a tool failed, 2 for bad flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    own, rest = parser().parse_known_args(argv)
    if own.help:
        parser().print_help()
        print("\n" + __doc__.strip())
        return 0
    try:
        cfg = agent_config.load(rest)
    except errors.InvalidArgument as exc:
        print(f"dc-agent decommission: {exc}", file=sys.stderr)
        return 2
    try:
        result = decommission(cfg, containers=own.containers, stop=own.stop, purge=own.purge)
    except Exception as exc:
        mapped = exc if isinstance(exc, errors.DcError) else translate(exc)
        if mapped is None:
            raise
        print(f"dc-agent decommission: {type(mapped).__name__}: {mapped}", file=sys.stderr)
        if mapped.hint:
            print(f"hint: {mapped.hint}", file=sys.stderr)
        return 1
    for key, value in result.items():
        text = ", ".join(map(str, value)) if isinstance(value, list) else value
        print(f"{key}: {'-' if text in ('', None) else text}")
    if result["kept"]:
        print(f"note: {len(result['kept'])} containers keep running without their bridge and port mappings; "
              "decommission --containers removes them", file=sys.stderr)
    if cfg.hub:
        print(f"note: forget this host at its hub too: dcctl host_remove {cfg.host_name}", file=sys.stderr)
    return 0


__all__ = ["bridge_lock_path", "decommission", "main", "state_lock_path"]
