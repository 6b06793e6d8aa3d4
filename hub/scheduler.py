"""Placement: feasibility first, then ranking (Nomad's and Kubernetes'
two-phase shape), as pure functions of the fleet's figures.

A host is feasible when it is alive, matches the label constraints (and the
pinned host, if any), and has an unreserved container slot and enough
unreserved memory.  Reserved figures are the hub's own (its store, with
placements in flight and containers adopted from hosts' heartbeats).  Feasible hosts are ranked by
strategy: "spread" (most free memory first, the default) or "binpack"
(least free memory that still fits first).
"""
from __future__ import annotations

import dataclasses

from dcctl import errors
from dcctl.units import size_text

STRATEGIES = ("spread", "binpack")


@dataclasses.dataclass(frozen=True)
class Request:
    """What a placement needs: memory in bytes (0 = none reserved), label
    constraints {key: value}, an optional pinned host, and a strategy."""

    memory_bytes: int = 0
    labels: dict = dataclasses.field(default_factory=dict)
    host: str | None = None
    strategy: str = "spread"


def free_figures(host: dict, db_figures: dict[str, tuple[int, int]]) -> tuple[int, int]:
    """(free memory bytes, free container slots) of ``host`` (a store row).

    Reservations come from the hub's store alone: it holds every container
    the hub placed and, within a heartbeat, those made on a host directly
    (adopted from the host's heartbeat).  A host's own figures lag by up to a
    heartbeat, so they only give the capacity."""
    cap = host.get("capacity") or {}
    reserved, count = db_figures.get(host["name"], (0, 0))
    return (int(cap.get("memory_reservable_bytes") or 0) - reserved,
            int(cap.get("container_slots") or 0) - count)


def place(hosts: list[dict], request: Request, db_figures: dict[str, tuple[int, int]],
          explain: bool = True) -> tuple[list[str], dict]:
    """Rank the hosts for ``request``.

    Args: explain: False leaves the reasons out (every rejected host maps
    to ""): a decision that finds a host never formats them.
    Returns: (feasible host names, best first; {host: why it was rejected}).

    One pass of plain lookups per host (free_figures' rule inlined, the
    label constraints checked in a loop): with 100 hosts this is a
    decision's largest cost after the store's (bench/placement.py).
    """
    ranked, rejected = [], {}
    wanted = tuple(request.labels.items())
    pinned, memory = request.host, request.memory_bytes
    nothing = (0, 0)
    for h in hosts:
        name = h["name"]
        if pinned is not None and name != pinned:
            continue
        state = h["state"]
        if state != "alive":
            rejected[name] = f"host is {state}" if explain else ""
            continue
        if wanted:
            labels = h.get("labels") or {}
            for k, v in wanted:
                if labels.get(k) != v:
                    break
            else:
                labels = None
            if labels is not None:
                rejected[name] = f"labels {labels} do not match {request.labels}" if explain else ""
                continue
        cap = h.get("capacity") or {}
        reserved, count = db_figures.get(name, nothing)
        free_slots = int(cap.get("container_slots") or 0) - count
        if free_slots < 1:
            rejected[name] = "no free container slot"
            continue
        free_mem = int(cap.get("memory_reservable_bytes") or 0) - reserved
        if free_mem < memory:
            rejected[name] = (f"needs {size_text(memory)} of memory, {size_text(max(0, free_mem))} unreserved"
                              if explain else "")
            continue
        ranked.append((free_mem - memory, free_slots, name))
    if request.strategy == "binpack":
        ranked.sort(key=lambda t: (t[0], t[1], t[2]))
    else:
        ranked.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [name for _, _, name in ranked], rejected


def choose(hosts: list[dict], request: Request, exclude: set[str] = frozenset()):
    """A chooser for HubStore.claim/move: picks the best feasible host not in
    ``exclude``, or raises NoCapacity naming each host's reason."""

    def pick(db_figures: dict[str, tuple[int, int]]) -> str:
        ranked, _ = place(hosts, request, db_figures, explain=False)
        for name in ranked:
            if name not in exclude:
                return name
        ranked, rejected = place(hosts, request, db_figures)  # none fits: again, with every reason
        for name in exclude:
            rejected.setdefault(name, "already tried for this placement")
        if request.host is not None and not any(h["name"] == request.host for h in hosts):
            raise errors.NoSuchHost(f"no host {request.host!r} in the fleet")
        reasons = "; ".join(f"{n}: {why}" for n, why in sorted(rejected.items())) or "the fleet has no hosts"
        raise errors.NoCapacity(f"no host can take it ({reasons})")

    return pick
