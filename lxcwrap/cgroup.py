"""Which cgroup version governs each controller, and reading a container's
cgroup figures back from the kernel.

A Debian 12 host boots cgroup v2 only by default, but hybrid hosts (v1
controllers plus a v2 hierarchy, like this project's CI machines) exist, and
``lxc.cgroup.*`` keys are silently ignored on a v2-only host (lxc/lxc#4049).
So the version is detected per controller from /proc/self/mountinfo, config
keys are chosen to match, and tests read the limit back from the container's
cgroup.

Per-container figures read the container's cgroup directory, whose counters
cover its whole subtree, including the ``.lxc`` sub-cgroup that lxc-attach
places processes in on v2 (lxc/lxc#3373).
"""
from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import time

MOUNTINFO = "/proc/self/mountinfo"
#: Whose cgroups LXC's container cgroups go under when run as root without
#: ``lxc.cgroup.relative``: init's (a trailing ``init.scope`` dropped).
INIT_CGROUP = "/proc/1/cgroup"

#: The cgroups LXC makes for a container (lxc.cgroup.dir unset): its
#: monitor's ``lxc.monitor.NAME`` and the container's ``lxc.payload.NAME``,
#: each with a ``-N`` suffix when the name is taken, in every hierarchy.
LXC_CGROUP_PREFIXES = ("lxc.monitor.", "lxc.payload.")
#: An empty LXC cgroup younger than this may be one a start has just made
#: and not entered yet; an older one is left from a monitor that died.
STALE_MIN_AGE_SECONDS = 60.0
#: One sweep at a time on the host (every agent of a local fleet, an
#: ops_cleanup call beside the supervisor's own, the tests' sweep): a second
#: sweeper could remove, by its stale path, a cgroup a start just re-made.
SWEEP_LOCK = "/run/dcfleet/cgroup-sweep.lock"
_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(field: str) -> str:
    """A mountinfo path field with its octal escapes (``\\040`` for a space) decoded."""
    return _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Mount points: ``v1`` maps controller name -> mount dir; ``v2`` is the
    unified mount dir (or None) and ``v2_controllers`` what it controls."""

    v1: dict[str, str]
    v2: str | None
    v2_controllers: frozenset[str]

    def version(self, controller: str) -> int:
        """1 or 2: which hierarchy runs ``controller`` ("memory", "cpu")."""
        if controller in self.v2_controllers:
            return 2
        if controller in self.v1:
            return 1
        return 2 if self.v2 else 1

    def has(self, controller: str) -> bool:
        """Whether ``controller`` is mounted at all: a v1 hierarchy of
        its own, or listed in the v2 root's ``cgroup.controllers``."""
        return controller in self.v1 or controller in self.v2_controllers


def detect(mountinfo_text: str | None = None) -> Layout:
    """Parse mountinfo (this process's by default) into a Layout."""
    if mountinfo_text is None:
        with open(MOUNTINFO) as f:
            mountinfo_text = f.read()
    v1: dict[str, str] = {}
    v2 = None
    for line in mountinfo_text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        fstype, mount, opts = rfields[0], fields[4], rfields[2].split(",")
        if fstype == "cgroup2":
            v2 = v2 or mount
        elif fstype == "cgroup":
            for opt in opts:
                if opt in ("cpu", "cpuacct", "memory", "pids", "cpuset", "blkio", "devices", "freezer"):
                    v1.setdefault(opt, mount)
    controllers: frozenset[str] = frozenset()
    if v2 and os.path.exists(os.path.join(v2, "cgroup.controllers")):
        with open(os.path.join(v2, "cgroup.controllers")) as f:
            controllers = frozenset(f.read().split())
    return Layout(v1, v2, controllers)


def hierarchy_bases(mountinfo_text: str | None = None, init_cgroup_text: str | None = None) -> list[str]:
    """The directory LXC makes containers' cgroups in, in every mounted
    cgroup hierarchy (each v1 one, named ones such as ``name=systemd``
    included, and the v2 one): init's cgroup there, less a trailing
    ``init.scope``, which is where liblxc run as root puts
    ``lxc.monitor.NAME`` and ``lxc.payload.NAME`` unless
    ``lxc.cgroup.relative`` is set (dcfleet never sets it).  From
    /proc/self/mountinfo (mount point, the mount's root in the hierarchy,
    super options) and /proc/1/cgroup; a hierarchy mounted twice is
    listed once, by a read-write mount if it has one.

    Raises: OSError (either file cannot be read)."""
    if mountinfo_text is None:
        with open(MOUNTINFO, errors="surrogateescape") as f:
            mountinfo_text = f.read()
    if init_cgroup_text is None:
        with open(INIT_CGROUP, errors="surrogateescape") as f:
            init_cgroup_text = f.read()
    ours: dict[frozenset[str], str] = {}
    for line in init_cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            path = parts[2]
            if path.endswith("/init.scope"):
                path = path[: -len("/init.scope")] or "/"
            ours[frozenset(c for c in parts[1].split(",") if c)] = path
    chosen: dict[frozenset[str], tuple[bool, str]] = {}  # hierarchy -> (read-only, base), first rw mount wins
    for line in mountinfo_text.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 6 or len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
            continue
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        readonly = "ro" in fields[5].split(",")
        if rfields[0] == "cgroup2":
            key = frozenset()
        else:
            opts = set(rfields[2].split(","))
            key = max((k for k in ours if k and k <= opts), key=len, default=None)
            if key is None:
                continue
        path = ours.get(key)
        if path is None or (key in chosen and (readonly or not chosen[key][0])):
            continue
        rel = os.path.relpath(path, root) if path.startswith(root) else None
        if rel is None or rel.startswith(".."):
            continue  # our cgroup is outside what this mount shows
        chosen[key] = (readonly, os.path.normpath(os.path.join(mount, rel)))
    return [base for _readonly, base in chosen.values()]


def _subtree_empty(path: str) -> list[str] | None:
    """The directories of the cgroup at ``path`` and below, deepest first,
    when no process is in any of them (every ``cgroup.procs`` empty); else
    None (also when one cannot be read or listed: nothing is removed from a
    tree not seen whole)."""
    dirs = []

    def unlistable(exc: OSError) -> None:
        raise exc

    try:
        for top, _subdirs, _files in os.walk(path, topdown=True, onerror=unlistable):
            procs = _read(os.path.join(top, "cgroup.procs"))
            if procs is None or procs:
                return None
            dirs.append(top)
    except OSError:
        return None
    return dirs[::-1] or None


def remove_stale_lxc_cgroups(bases: list[str] | None = None, min_age_s: float = STALE_MIN_AGE_SECONDS,
                             now: float | None = None) -> list[str]:
    """Remove the cgroups LXC left behind: ``lxc.monitor.*`` and
    ``lxc.payload.*`` directories directly under each of ``bases``
    (``hierarchy_bases()`` by default) that hold no process anywhere in
    their subtree and were made at least ``min_age_s`` seconds ago (the
    directory's mtime: its mkdir's, or later, so an old one is old).  The
    whole host's, not only one agent's: any LXC monitor's leftovers are.
    One sweep at a time (an flock on SWEEP_LOCK; a sweep that finds it held
    removes nothing).

    A monitor removes both when it exits, but a monitor that dies without
    its teardown (``kill -9``, the OOM killer; the container's init dies
    with it by its parent-death signal) and some failed starts leave them,
    in every hierarchy, for good: LXC gives the next start of that name a
    ``-N`` suffix, and each one left makes later cgroup work slower (on a
    cgroup v1 host, the cgroup mounts of every start and the cpuset
    scheduler-domain rebuilds walk them all).  A running container's two
    always hold a process (its monitor, its init), and a start enters
    them within milliseconds of making them, so an empty old one is
    nobody's.  rmdir(2) is the kernel's own check: a cgroup that gained a
    process meanwhile is refused (EBUSY) and kept.  Blocking (small reads
    and rmdirs on cgroupfs).

    Args:
        bases: hierarchy directories to look in (``hierarchy_bases()``).
        min_age_s: seconds since the cgroup's mkdir below which it is kept.
        now: the time to age against (epoch seconds; default now).

    Returns: the names removed (e.g. ``lxc.monitor.web-1``), sorted, once
    each whatever the number of hierarchies they were in.  A cgroup it
    cannot read or remove is skipped (EBUSY, EROFS, EPERM).
    Raises: OSError (the lock file or /proc/self/mountinfo cannot be
    opened)."""
    now = time.time() if now is None else now
    os.makedirs(os.path.dirname(SWEEP_LOCK), mode=0o755, exist_ok=True)
    lock = os.open(SWEEP_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the fd closes
        except BlockingIOError:
            return []  # another sweep runs
        return _sweep(hierarchy_bases() if bases is None else bases, min_age_s, now)
    finally:
        os.close(lock)


def _sweep(bases: list[str], min_age_s: float, now: float) -> list[str]:
    removed = set()
    for base in bases:
        try:
            entries = [e for e in os.scandir(base)
                       if e.name.startswith(LXC_CGROUP_PREFIXES) and e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        for entry in entries:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime < min_age_s:
                    continue
            except OSError:
                continue
            dirs = _subtree_empty(entry.path)
            if dirs is None:
                continue
            try:
                for d in dirs:
                    os.rmdir(d)
            except OSError:  # EBUSY: a process entered meanwhile; EROFS, EPERM: not ours to remove
                continue
            removed.add(entry.name)
    return sorted(removed)


def limit_config(layout: Layout, memory_bytes: int | None, cpus: float | None,
                 cpu_shares: int | None, pids_limit: int | None = None) -> list[tuple[str, str]]:
    """LXC config keys that apply the limits under ``layout``.

    Args:
        memory_bytes: hard memory limit in bytes (v1 memory.limit_in_bytes,
            v2 memory.max).
        cpus: CPU count as a quota (v1 cpu.cfs_quota_us/cpu.cfs_period_us,
            v2 cpu.max), e.g. 0.5 for half a CPU.
        cpu_shares: relative weight, Docker's scale (1024 = normal; v1
            cpu.shares, v2 cpu.weight converted as runc does).
        pids_limit: most tasks (processes and threads) in the container's
            cgroup, ``pids.max`` on either version (``lxc.cgroup.pids.max``
            or ``lxc.cgroup2.pids.max``); a fork past it fails with EAGAIN.
            Left out when the host has no pids controller (``Layout.has``):
            LXC would refuse to start the container (the agent logs that
            the limit cannot be applied, agents.containers).
    """
    out: list[tuple[str, str]] = []
    period_us = 100_000
    if memory_bytes:
        if layout.version("memory") == 2:
            out.append(("lxc.cgroup2.memory.max", str(memory_bytes)))
        else:
            out.append(("lxc.cgroup.memory.limit_in_bytes", str(memory_bytes)))
    if cpus:
        quota = max(1000, int(cpus * period_us))
        if layout.version("cpu") == 2:
            out.append(("lxc.cgroup2.cpu.max", f"{quota} {period_us}"))
        else:
            out.append(("lxc.cgroup.cpu.cfs_period_us", str(period_us)))
            out.append(("lxc.cgroup.cpu.cfs_quota_us", str(quota)))
    if cpu_shares:
        if layout.version("cpu") == 2:
            weight = 1 + ((cpu_shares - 2) * 9999) // 262142
            out.append(("lxc.cgroup2.cpu.weight", str(max(1, min(10000, weight)))))
        else:
            out.append(("lxc.cgroup.cpu.shares", str(cpu_shares)))
    if pids_limit and layout.has("pids"):
        prefix = "lxc.cgroup2" if layout.version("pids") == 2 else "lxc.cgroup"
        out.append((f"{prefix}.pids.max", str(pids_limit)))
    return out


def cgroup_dirs(layout: Layout, pid: int) -> dict[str, str]:
    """The cgroup dirs of process ``pid`` per controller ("memory", "cpu",
    "cpuacct", "unified"), taken from /proc/PID/cgroup.  A trailing
    ``init.scope`` (systemd moving itself) is stripped so the dir is the
    container's root cgroup."""
    dirs: dict[str, str] = {}
    with open(f"/proc/{pid}/cgroup") as f:
        lines = f.read().splitlines()
    for line in lines:
        _, ctrls, path = line.split(":", 2)
        if path.endswith("/init.scope"):
            path = path[: -len("/init.scope")]
        rel = path.lstrip("/")
        if ctrls == "" and layout.v2:
            dirs["unified"] = os.path.join(layout.v2, rel)
        for c in ctrls.split(","):
            if c in layout.v1:
                dirs[c] = os.path.join(layout.v1[c], rel)
    return dirs


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def usage(layout: Layout, pid: int) -> dict:
    """Memory and CPU figures of the cgroup that process ``pid`` (a container's
    init) belongs to, covering its whole subtree.

    Returns:
        {"memory_bytes": int|None, "memory_limit_bytes": int|None,
         "cpu_seconds": float|None}; None where the kernel gave no figure.

    Raises:
        OSError: the process is gone.
    """
    dirs = cgroup_dirs(layout, pid)
    mem = lim = cpu = None
    if layout.version("memory") == 2 and "unified" in dirs:
        mem = _read(os.path.join(dirs["unified"], "memory.current"))
        lim = _read(os.path.join(dirs["unified"], "memory.max"))
    elif "memory" in dirs:
        mem = _read(os.path.join(dirs["memory"], "memory.usage_in_bytes"))
        lim = _read(os.path.join(dirs["memory"], "memory.limit_in_bytes"))
    if layout.version("cpu") == 2 and "unified" in dirs:
        stat = _read(os.path.join(dirs["unified"], "cpu.stat")) or ""
        for line in stat.splitlines():
            if line.startswith("usage_usec "):
                cpu = int(line.split()[1]) / 1e6
    elif "cpuacct" in dirs:
        ns = _read(os.path.join(dirs["cpuacct"], "cpuacct.usage"))
        cpu = int(ns) / 1e9 if ns and ns.isdigit() else None
    limit = int(lim) if lim and lim.isdigit() and int(lim) < (1 << 62) else None
    return {"memory_bytes": int(mem) if mem and mem.isdigit() else None,
            "memory_limit_bytes": limit, "cpu_seconds": cpu}


def oom_kills(layout: Layout, pid: int) -> int | None:
    """How many processes the kernel's OOM killer has killed in the cgroup of
    process ``pid`` (v1 memory.oom_control "oom_kill", v2 memory.events
    "oom_kill"); None when the kernel gives no figure.

    Raises: OSError when the process is gone."""
    dirs = cgroup_dirs(layout, pid)
    if layout.version("memory") == 2 and "unified" in dirs:
        text = _read(os.path.join(dirs["unified"], "memory.events"))
    elif "memory" in dirs:
        text = _read(os.path.join(dirs["memory"], "memory.oom_control"))
    else:
        return None
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def figures(layout: Layout, pid: int, dirs: dict[str, str] | None = None) -> dict:
    """Everything a metrics scrape wants of the cgroup of process ``pid`` (a
    container's init), its whole subtree, read with one look at
    /proc/PID/cgroup: ``usage``'s keys plus ``working_set_bytes`` (usage
    less inactive file pages, as cAdvisor counts it) and ``oom_kills``
    (``oom_kills``'s figure).  None where the kernel gave no figure.
    ``dirs``: the process's ``cgroup_dirs``, when the caller kept them.

    Raises: OSError when the process is gone."""
    dirs = cgroup_dirs(layout, pid) if dirs is None else dirs
    v2 = layout.version("memory") == 2 and "unified" in dirs
    mem_dir = dirs.get("unified") if v2 else dirs.get("memory")
    out = {"memory_bytes": None, "memory_limit_bytes": None, "cpu_seconds": None, "working_set_bytes": None,
           "oom_kills": None}
    if mem_dir:
        mem = _read(os.path.join(mem_dir, "memory.current" if v2 else "memory.usage_in_bytes"))
        lim = _read(os.path.join(mem_dir, "memory.max" if v2 else "memory.limit_in_bytes"))
        out["memory_bytes"] = int(mem) if mem and mem.isdigit() else None
        out["memory_limit_bytes"] = int(lim) if lim and lim.isdigit() and int(lim) < (1 << 62) else None
        stat = dict(line.split(" ", 1) for line in (_read(os.path.join(mem_dir, "memory.stat")) or "").splitlines()
                    if " " in line)
        inactive = stat.get("inactive_file" if v2 else "total_inactive_file", "")
        if out["memory_bytes"] is not None and inactive.isdigit():
            out["working_set_bytes"] = max(0, out["memory_bytes"] - int(inactive))
        events = _read(os.path.join(mem_dir, "memory.events" if v2 else "memory.oom_control")) or ""
        for line in events.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                out["oom_kills"] = int(value)
    if layout.version("cpu") == 2 and "unified" in dirs:
        for line in (_read(os.path.join(dirs["unified"], "cpu.stat")) or "").splitlines():
            if line.startswith("usage_usec "):
                out["cpu_seconds"] = int(line.split()[1]) / 1e6
    elif "cpuacct" in dirs:
        ns = _read(os.path.join(dirs["cpuacct"], "cpuacct.usage"))
        out["cpu_seconds"] = int(ns) / 1e9 if ns and ns.isdigit() else None
    return out
