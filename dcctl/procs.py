"""Reading the process table (``/proc``): the one place the agent's tools,
the router, the local-fleet launcher, the benchmarks and the tests look for
processes by their command line; and a process's own open-files limit
(``raise_open_files_limit``).  Standard library only."""
from __future__ import annotations

import os
import resource
from typing import Iterator

__all__ = ["cmdline", "alive", "processes", "pids_with", "raise_open_files_limit"]


def cmdline(pid: int) -> list[bytes]:
    """The argv words of process ``pid`` (from ``/proc/PID/cmdline``); [] if
    it is gone or unreadable (a kernel thread has none)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            data = f.read()
    except OSError:
        return []
    return data.rstrip(b"\0").split(b"\0") if data else []


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (``/proc/PID/stat`` state)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def processes() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv words) of every process with a command line, this one
    excepted."""
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            words = cmdline(int(entry))
            if words:
                yield int(entry), words


def pids_with(marker: str | bytes) -> list[int]:
    """Pids of processes (this one excepted) with ``marker`` inside one of
    their argv words, e.g. a run's temporary root or a config path."""
    needle = marker.encode() if isinstance(marker, str) else marker
    return [pid for pid, words in processes() if any(needle in w for w in words)]


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit, as
    systemd advises for programs that never use select(2) (systemd.exec,
    LimitNOFILE=; the usual soft limit is 1024): a hub of 1,000 hosts
    holds about 2,000 descriptors and would fail with EMFILE at 1024.
    For the hub, which starts no containers: children inherit the limit,
    and an agent's containers keep the one the agent was started with
    (ops/dc-agent.service sets it).

    Returns: (soft, hard) as they are now.  Never raises (raising the
    soft limit up to the hard one needs no privilege; a failure leaves
    it as it was)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard
