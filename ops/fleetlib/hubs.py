"""``ops/fleet up N --store etcd [--hubs K]``: a local etcd on the fleet
bridge and K hubs sharing it.

* etcd: ``/usr/bin/etcd`` with its data dir in the fleet's state dir
  (``STATE/etcd``), listening on the fleet bridge's gateway address, on the
  first free client port of 23790-23794 (peer port + 5), with
  auto-compaction and a backend quota (ops.fleetlib.etcd.argv).  ``down``
  finds and stops it like every other process of the fleet (its arguments
  name the state dir), and removes its data with the state dir.
* hubs ``hub-1`` ... ``hub-K``: each its own state dir, ipc endpoint and
  tcp port (``--hub-port`` + i - 1) on the gateway, one etcd prefix
  (``/<prefix>/``), and one CURVE identity and client allowlist (hub-1's
  keys dir, ``--keys-dir``): agents, routers and dcctl trust one hub key,
  and the operator's host_add on any hub admits the host on all.
* agents, the router and ``DCCTL_HOST`` list every hub: ``A,B,...``.
"""
from __future__ import annotations

import os

from ops.fleetlib.base import FleetError
from ops.fleetlib.etcd import LOOPBACK_CLIENT_PORTS, EtcdServer, port_free

STORES = ("sqlite", "etcd")


def plan_hubs(state: dict, store: str, hubs: int, hub_port: int) -> None:
    """Add the store, the etcd and hubs 2..K to a planned ``state``.
    Raises: FleetError (a bad combination)."""
    if store not in STORES:
        raise FleetError(f"--store must be one of {', '.join(STORES)}")
    if hubs < 1 or hubs > 9:
        raise FleetError("--hubs must be 1 to 9")
    if hubs > 1 and store != "etcd":
        raise FleetError("several hubs share their state in etcd: give --store etcd")
    if store != "sqlite" and not state["hub"]:
        raise FleetError("--store etcd needs the hub (drop --no-hub)")
    state["store"] = store
    if store == "sqlite":
        state["hubs"] = [state["hub"]] if state["hub"] else []
        return
    first, run, st, logs = state["hub"], state["dirs"]["run"], state["dirs"]["state"], state["dirs"]["log"]
    first["name"] = "hub-1"
    state["hubs"] = [first] + [
        {"name": f"hub-{i}", "tcp": f"tcp://{state['gateway']}:{hub_port + i - 1}", "ipc": f"ipc://{run}/hub-{i}.sock",
         "state_dir": f"{st}/hub-{i}", "log": f"{logs}/hub-{i}.log", "pid_file": f"{run}/hub-{i}.pid", "pid": None}
        for i in range(2, hubs + 1)]
    state["etcd"] = {"data_dir": f"{st}/etcd", "log": f"{logs}/etcd.log", "address": state["gateway"],
                     "client_port": None, "peer_port": None, "url": None, "pid": None,
                     "prefix": f"/{state['prefix']}/"}
    state["dcctl_host"] = ",".join(h["tcp"] for h in state["hubs"])


def hub_args(state: dict, hd: dict) -> list[str]:
    """dc-hub's extra arguments for hub ``hd`` of ``state``."""
    if state.get("store") != "etcd":
        return []
    e = state["etcd"]
    return ["--store", "etcd", "--etcd", e["url"], "--etcd-prefix", e["prefix"], "--hub-name", hd["name"],
            "--keys-dir", os.path.join(state["hub"]["state_dir"], "keys")]


def hub_endpoints(state: dict) -> str:
    """What agents and the router take as ``--hub``: every hub's tcp endpoint."""
    return ",".join(h["tcp"] for h in state.get("hubs") or [state["hub"]])


def share_keys(state: dict) -> None:
    """Hubs 2..K use hub-1's keys dir: write their known server keys (the
    same public key) where dcctl looks for them."""
    from dcctl.wire.clientconfig import known_server_key_path
    for hd in state.get("hubs", [])[1:]:
        hd["public_key"] = state["hub"]["public_key"]
        os.makedirs(hd["state_dir"], mode=0o700, exist_ok=True)
        path = known_server_key_path(hd["tcp"])
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(path, "w") as f:
            f.write(f'curve\n    public-key = "{hd["public_key"]}"\n')
        state["known_server_keys"].append(path)


def start_etcd(state: dict, timeout_s: float) -> None:
    """Start the fleet's etcd on the gateway (see the module doc).
    Raises: FleetError (no free port, or it did not start)."""
    e = state["etcd"]
    for port in LOOPBACK_CLIENT_PORTS:
        if port_free(e["address"], port) and port_free(e["address"], port + 5):
            break
    else:
        raise FleetError(f"no free etcd port pair in {LOOPBACK_CLIENT_PORTS.start}-"
                         f"{LOOPBACK_CLIENT_PORTS.stop - 1} on {e['address']}")
    server = EtcdServer(e["data_dir"], e["address"], port, port + 5, log_path=e["log"], name=state["prefix"])
    try:
        server.start(timeout_s)
    except RuntimeError as exc:
        raise FleetError(f"etcd: {exc}") from exc
    e.update(client_port=port, peer_port=port + 5, url=server.url, pid=server.proc.pid)
