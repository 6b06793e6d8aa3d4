"""Host metrics and free capacity, from psutil and the containers' cgroups.

Best effort (DESIGN, failure class 1): a figure that cannot be read is None,
never an error, and the next call tries again.
"""
from __future__ import annotations

import os
import time

import psutil


def _safe(fn, default=None):
    try:
        return fn()
    except (OSError, RuntimeError, psutil.Error):
        return default


def host_metrics(state_dir: str) -> dict:
    """Host figures.

    Returns keys: cpu_count, cpu_percent (since the previous call, %),
    load_avg [1, 5, 15 min], memory_total_bytes, memory_available_bytes,
    memory_used_bytes, disk_total_bytes / disk_free_bytes (of the state dir's
    filesystem), net_bytes_sent, net_bytes_recv, uptime_s, boot_time (Unix s).
    """
    vm = _safe(psutil.virtual_memory)
    disk = _safe(lambda: psutil.disk_usage(state_dir))
    net = _safe(psutil.net_io_counters)
    boot = _safe(psutil.boot_time)
    return {
        "cpu_count": psutil.cpu_count() or 1,
        "cpu_percent": _safe(lambda: psutil.cpu_percent(interval=None)),
        "load_avg": list(_safe(os.getloadavg, (None, None, None))),
        "memory_total_bytes": vm.total if vm else None,
        "memory_available_bytes": vm.available if vm else None,
        "memory_used_bytes": vm.used if vm else None,
        "disk_total_bytes": disk.total if disk else None,
        "disk_free_bytes": disk.free if disk else None,
        "net_bytes_sent": net.bytes_sent if net else None,
        "net_bytes_recv": net.bytes_recv if net else None,
        "uptime_s": round(time.time() - boot, 3) if boot else None,
        "boot_time": boot,
    }


def capacity(memory_total_bytes: int | None, reservable_memory_bytes: int, limits: list[int | None],
             max_containers: int) -> dict:
    """What a scheduler may still place here.

    Args:
        memory_total_bytes: the host's RAM.
        reservable_memory_bytes: configured cap on reserved memory (0 = 90%
            of RAM).
        limits: each container's memory limit in bytes (None = no limit,
            reserves nothing).
        max_containers: container slots on this host.

    Returns: memory_reservable_bytes, memory_reserved_bytes,
    memory_unreserved_bytes, container_slots, containers, container_slots_free.
    """
    reservable = reservable_memory_bytes or int((memory_total_bytes or 0) * 0.9)
    reserved = sum(x for x in limits if x)
    return {
        "memory_reservable_bytes": reservable,
        "memory_reserved_bytes": reserved,
        "memory_unreserved_bytes": max(0, reservable - reserved),
        "container_slots": max_containers,
        "containers": len(limits),
        "container_slots_free": max(0, max_containers - len(limits)),
    }


def veth_bytes(veth: str) -> tuple[int | None, int | None]:
    """(bytes received by the container, bytes it sent), read from the host
    side of its veth (whose tx is the container's rx); None when unknown."""
    out = []
    for key in ("tx_bytes", "rx_bytes"):
        try:
            with open(f"/sys/class/net/{veth}/statistics/{key}") as f:
                out.append(int(f.read()))
        except (OSError, ValueError):
            out.append(None)
    return out[0], out[1]
