"""``ops/fleet kill HOST`` and ``ops/fleet start HOST``: fault drills on one
host of a local fleet.

``kill`` sends SIGKILL to that host's agent only (its containers, their
``lxc-start`` monitors and their log writers run on, as after a crash of the
agent).  ``start`` runs the agent again with the same command as ``up``
(``agent_argv`` with the agent arguments ``up`` recorded in the state file),
in its namespaces, and waits until it answers on its local endpoint.  Both
update the host's ``pid`` in the state file.
"""
from __future__ import annotations

import os
import signal
import time

from ops.fleetlib.base import FleetError, _alive, _last_line, _pids, load, ping, save

__all__ = ["find_host", "kill_host", "start_host"]


def find_host(state: dict, name: str) -> dict:
    """The host ``name`` (``host-3``, or just ``3``) of the fleet ``state``.

    Raises: FleetError (no such host)."""
    wanted = f"host-{name}" if name.isdigit() else name
    for h in state["hosts"]:
        if h["name"] == wanted:
            return h
    raise FleetError(f"no host {name!r} in fleet {state['prefix']} "
                     f"(hosts: {', '.join(h['name'] for h in state['hosts'])})")


def _state(prefix: str) -> dict:
    state = load(prefix)
    if state is None:
        raise FleetError(f"fleet {prefix}: not up (no state file)")
    return state


def kill_host(prefix: str, name: str, timeout_s: float = 10.0) -> dict:
    """SIGKILL the agent of host ``name`` and wait until it is gone.

    Returns: {host, pid, killed: bool} (killed False: it was not running).
    Raises: FleetError (not up, no such host, still alive after timeout_s)."""
    state = _state(prefix)
    h = find_host(state, name)
    pid = h.get("pid")
    if not pid or not _alive(pid) or pid not in _pids(prefix):
        return {"host": h["name"], "pid": pid, "killed": False}
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise FleetError(f"{h['name']}: agent pid {pid} still alive {timeout_s:g} s after SIGKILL")
        time.sleep(0.05)
    return {"host": h["name"], "pid": pid, "killed": True}


def start_host(prefix: str, name: str, timeout_s: float = 60.0) -> dict:
    """Start the agent of host ``name`` again, with the arguments ``up``
    gave it, and wait until it answers a ping on its local endpoint.

    Returns: {host, pid, started: bool} (started False: it was running).
    Raises: FleetError (not up, no such host, the agent exited or did not
    answer within timeout_s)."""
    from ops.fleetlib.up import _spawn, agent_argv
    state = _state(prefix)
    h = find_host(state, name)
    pid = h.get("pid")
    if pid and _alive(pid) and pid in _pids(prefix):
        return {"host": h["name"], "pid": pid, "started": False}
    proc = _spawn(agent_argv(state, h, list(state.get("agent_args", []))), h["log"], h["pid_file"])
    h["pid"] = proc.pid
    save(state)
    deadline = time.monotonic() + timeout_s
    while not ping(h["ipc"]):
        if proc.poll() is not None:
            raise FleetError(f"{h['name']}: agent exited with status {proc.returncode}: {_last_line(h['log'])}")
        if time.monotonic() > deadline:
            raise FleetError(f"{h['name']}: agent did not answer within {timeout_s:g} s")
        time.sleep(0.2)
    return {"host": h["name"], "pid": proc.pid, "started": True}
