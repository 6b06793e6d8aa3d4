"""``ops/fleet kill HOST`` and ``ops/fleet start HOST``: fault drills on one
host of a local fleet, or on one of its hubs (``hub-1``; ``hub`` for the
single hub) or its etcd (``etcd``).

``kill`` sends SIGKILL to that host's agent only (its containers, their
``lxc-start`` monitors and their log writers run on, as after a crash of the
agent).  ``start`` runs the agent again with the same command as ``up``
(``agent_argv`` with the agent arguments ``up`` recorded in the state file),
in its namespaces, and waits until it answers on its local endpoint.  Both
update the host's ``pid`` in the state file.

A hub is killed and started the same way (SIGKILL; started again with the
command ``up`` recorded, waited for on its ipc endpoint).  ``kill etcd``
sends the fleet's etcd SIGKILL (its data dir stays: etcd recovers from its
write-ahead log); ``start etcd`` runs it again on the same address, ports
and data dir and waits for its ``/health``.
"""
from __future__ import annotations

import os
import signal
import time

from ops.fleetlib.base import FleetError, _alive, _last_line, _pids, load, ping, save

__all__ = ["find_host", "find_process", "kill_host", "start_host"]


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


def find_process(state: dict, name: str) -> tuple[str, dict]:
    """What ``name`` names in the fleet ``state``: ("host", host), ("hub",
    hub) for ``hub-N`` (``hub``: the first hub) or ("etcd", etcd).

    Raises: FleetError (nothing of that name)."""
    hubs = state.get("hubs") or ([state["hub"]] if state.get("hub") else [])
    for i, hd in enumerate(hubs):
        if name == hd.get("name", "hub") or (name == "hub" and i == 0) or name == f"hub-{i + 1}":
            return "hub", hd
    if name == "etcd":
        if not state.get("etcd"):
            raise FleetError(f"fleet {state['prefix']} has no etcd (it was brought up with --store sqlite)")
        return "etcd", state["etcd"]
    if name.startswith("hub"):
        raise FleetError(f"no hub {name!r} in fleet {state['prefix']} "
                         f"(hubs: {', '.join(hd.get('name', 'hub') for hd in hubs) or 'none'})")
    return "host", find_host(state, name)


def _sigkill(pid: int, what: str, timeout_s: float) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() > deadline:
            raise FleetError(f"{what} pid {pid} still alive {timeout_s:g} s after SIGKILL")
        time.sleep(0.05)


def kill_host(prefix: str, name: str, timeout_s: float = 10.0) -> dict:
    """SIGKILL the agent of host ``name`` (or the hub or etcd ``name``
    names: see find_process) and wait until it is gone.

    Returns: {host, pid, killed: bool, kind: "host" | "hub" | "etcd"}
    (killed False: it was not running; ``host`` is the name killed).
    Raises: FleetError (not up, no such host, still alive after timeout_s)."""
    state = _state(prefix)
    kind, h = find_process(state, name)
    label = h.get("name", "hub") if kind != "etcd" else "etcd"
    pid = h.get("pid")
    if not pid or not _alive(pid) or pid not in _pids(prefix):
        return {"host": label, "pid": pid, "killed": False, "kind": kind}
    _sigkill(pid, f"{label}: {'agent' if kind == 'host' else kind}", timeout_s)
    return {"host": label, "pid": pid, "killed": True, "kind": kind}


def start_host(prefix: str, name: str, timeout_s: float = 60.0) -> dict:
    """Start the agent of host ``name`` again, with the arguments ``up``
    gave it, and wait until it answers a ping on its local endpoint; or the
    hub or etcd ``name`` names (see find_process and the module doc).

    Returns: {host, pid, started: bool, kind} (started False: it was running).
    Raises: FleetError (not up, no such host, the process exited or did not
    answer within timeout_s, a hub ``up`` recorded no command for)."""
    from ops.fleetlib.up import _spawn, agent_argv
    state = _state(prefix)
    kind, h = find_process(state, name)
    label = h.get("name", "hub") if kind != "etcd" else "etcd"
    pid = h.get("pid")
    if pid and _alive(pid) and pid in _pids(prefix):
        return {"host": label, "pid": pid, "started": False, "kind": kind}
    if kind == "etcd":
        from ops.fleetlib.etcd import EtcdServer
        server = EtcdServer(h["data_dir"], h["address"], h["client_port"], h["peer_port"], log_path=h["log"],
                            name=state["prefix"])
        try:
            server.start(timeout_s)
        except RuntimeError as exc:
            raise FleetError(f"etcd: {exc}") from exc
        h["pid"] = server.proc.pid
        save(state)
        return {"host": label, "pid": h["pid"], "started": True, "kind": kind}
    if kind == "hub":
        if not h.get("argv"):
            raise FleetError(f"{label}: this fleet's state file has no command for it (brought up by an older "
                             "ops/fleet): run `ops/fleet down` and `up` again")
        proc, ipc, log = _spawn(h["argv"], h["log"], h["pid_file"]), h["ipc"], h["log"]
        if state.get("hub") is not None and state["hub"].get("ipc") == ipc:
            state["hub"]["pid"] = proc.pid
    else:
        proc, ipc, log = _spawn(agent_argv(state, h, list(state.get("agent_args", []))), h["log"], h["pid_file"]), \
            h["ipc"], h["log"]
    h["pid"] = proc.pid
    save(state)
    deadline = time.monotonic() + timeout_s
    while not ping(ipc):
        if proc.poll() is not None:
            raise FleetError(f"{label}: exited with status {proc.returncode}: {_last_line(log)}")
        if time.monotonic() > deadline:
            raise FleetError(f"{label}: did not answer within {timeout_s:g} s")
        time.sleep(0.2)
    return {"host": label, "pid": proc.pid, "started": True, "kind": kind}
