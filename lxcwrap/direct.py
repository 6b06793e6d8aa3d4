"""In-process paths for LXC steps that need no LXC tool: finding a running
container's monitor, signalling its init, killing it through its cgroup
(``cgroup.kill``, cgroup v2, Linux 5.14+) and waiting for its monitor to
exit, all without starting a process.

Why not liblxc's Python binding (Debian's ``python3-lxc``): its ``start``,
``stop``, ``shutdown`` and ``wait`` hold the GIL for their whole call (the
binding releases it only around ``create``, ``clone`` and the wait of
``attach_wait``), so under gevent they would freeze every greenlet of the
agent, from a native thread or not; and ``start`` and ``attach`` fork the
whole agent process.  So the tools stay for start and exec, and the steps
below replace ``lxc-stop`` where they can be sure of the container.

Identity: ``lxc-start -d -p LXCPATH/NAME/init.pid`` writes the pid of the
container's monitor, whose argv[0] is ``[lxc monitor] LXCPATH NAME``.  A
``Monitor`` is made only when that pid's command line names this lxcpath and
name, checked again after a pidfd is opened on it, so a pid that was reused
by another process is never signalled.  The container's init is the
monitor's child in the payload cgroup (``lxc.payload.NAME``, maybe with a
``-N`` suffix) beside the monitor's own (``lxc.monitor.NAME``); it too is
held by a pidfd once its parent is checked.

Everything here answers None or False when it cannot be sure (no pidfile,
another process, no cgroup v2, no ``cgroup.kill``): the caller then uses
the LXC tool.  Blocking calls are tiny reads and writes of /proc and
/sys/fs/cgroup; the only wait (``Monitor.wait_exit``) is cooperative.
``listing`` replaces ``lxc-ls`` the same way (about 0.4 ms of our CPU per
container where lxc-ls costs 2-3 ms and a wake-up of every monitor).
"""
from __future__ import annotations

import os
import select
import signal

import gevent.socket

MONITOR_PREFIX = "[lxc monitor] "
PAYLOAD_PREFIX = "lxc.payload."
PIDFILE = "init.pid"
#: Payload cgroups tried per container name: ``lxc.payload.NAME``, then the
#: ``-1``.. suffixes LXC picks when that name was taken.
PAYLOAD_SUFFIXES = 16


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (OSError, ValueError):
        return None


def _ppid(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat.rsplit(")", 1)[1].split()[1])
    except (IndexError, ValueError):
        return None


def _unified_cgroup(pid: int) -> str | None:
    """The cgroup v2 path of ``pid`` ("/lxc.monitor.web"), or None."""
    for line in (_read(f"/proc/{pid}/cgroup") or "").splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


class Monitor:
    """A running container's monitor, held by a pidfd (``close`` it).

    Attributes: pid (the monitor's), pidfd, lxcpath, name."""

    def __init__(self, pid: int, pidfd: int, lxcpath: str, name: str):
        self.pid, self.pidfd, self.lxcpath, self.name = pid, pidfd, lxcpath, name

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def __enter__(self) -> "Monitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def exited(self) -> bool:
        """Whether the monitor has exited (its pidfd is readable)."""
        poller = select.poll()  # not select(): the caller may hold fds past 1024
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(0))

    def wait_exit(self, timeout_s: float) -> bool:
        """Wait cooperatively, up to ``timeout_s`` seconds, for the monitor
        to exit: it exits once the container is down and torn down (veth,
        mounts, cgroups, its log closed).  Returns whether it exited."""
        if self.exited():
            return True
        try:
            gevent.socket.wait_read(self.pidfd, timeout=max(0.001, timeout_s))
        except TimeoutError:  # gevent's default timeout_exc: socket.timeout
            return self.exited()
        return True

    def payload(self, unified_root: str) -> tuple[int, int, str] | None:
        """The container's init and payload cgroup: (init pid, a pidfd on
        it, the payload cgroup's directory under ``unified_root``), or None
        when they cannot be told for sure (the container is going down, no
        cgroup v2).  The caller closes the pidfd."""
        mon_cg = _unified_cgroup(self.pid)
        if not mon_cg:
            return None
        base = os.path.join(unified_root, os.path.dirname(mon_cg).lstrip("/"))
        stem = PAYLOAD_PREFIX + self.name
        for i in range(PAYLOAD_SUFFIXES):
            cg = os.path.join(base, stem if i == 0 else f"{stem}-{i}")
            for word in (_read(os.path.join(cg, "cgroup.procs")) or "").split():
                pid = int(word)
                if _ppid(pid) != self.pid:
                    continue
                fd = _pidfd(pid)
                if fd is None:
                    return None
                if _ppid(pid) != self.pid:  # it died and the pid was taken between the two looks
                    os.close(fd)
                    return None
                return pid, fd, cg
        return None


def monitor(lxcpath: str, name: str) -> Monitor | None:
    """The running monitor of container ``name`` in ``lxcpath``, from the
    pid file that ``Lxc.start`` has ``lxc-start`` write, or None (not
    running, or the pid is not that container's monitor)."""
    text = _read(os.path.join(lxcpath, name, PIDFILE))
    if not text or not text.strip().isdigit():
        return None
    pid = int(text.strip())
    want = f"{MONITOR_PREFIX}{lxcpath} {name}"

    def is_ours() -> bool:
        argv = (_read(f"/proc/{pid}/cmdline") or "").split("\0")
        return argv[0] == want

    if not is_ours():
        return None
    fd = _pidfd(pid)
    if fd is None:
        return None
    if not is_ours():
        os.close(fd)
        return None
    return Monitor(pid, fd, lxcpath, name)


#: The longest ``LXCPATH/NAME/command`` that LXC names its command socket by
#: (an abstract unix socket "@LXCPATH/NAME/command"); past it LXC hashes the
#: name and ``listing`` cannot look for it.
COMMAND_SOCKET_MAX = 100


def _command_sockets() -> set[str] | None:
    """The abstract unix socket names in our network namespace
    (/proc/net/unix), or None when it cannot be read."""
    text = _read("/proc/net/unix")
    if text is None:
        return None
    names = set()
    for line in text.splitlines()[1:]:
        parts = line.split(None, 7)
        if len(parts) == 8 and parts[7].startswith("@"):
            names.add(parts[7][1:])
    return names


def listing(lxcpath: str, unified_root: str) -> list[dict] | None:
    """What ``lxc-ls -f -F NAME,STATE,PID`` says of ``lxcpath``, without a
    process: [{"name", "state": "RUNNING"|"FROZEN"|"STOPPED"|None, "pid":
    the init's host pid or None}] sorted by name, for every directory
    holding a ``config``; state None where this cannot be sure (the caller
    asks the tool about that container), and None for the whole listing
    when the directory or /proc/net/unix cannot be read:

    * a container whose pid file names its live monitor (see ``monitor``)
      is RUNNING (FROZEN when its payload cgroup says so) with the monitor's
      child in the payload cgroup as its pid; a live monitor without one is
      starting or stopping: None;
    * one without such a monitor is STOPPED only if no process serves its
      command socket (the abstract socket "@LXCPATH/NAME/command" every
      monitor listens on, looked up in /proc/net/unix): a container started
      without our pid file (by hand) is never reported stopped.

    Cooperative: a directory listing, then a few small reads of /proc and
    /sys/fs/cgroup per container, yielding to other greenlets between
    containers."""
    try:
        names = sorted(e.name for e in os.scandir(lxcpath)
                       if e.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(e.path, "config")))
    except FileNotFoundError:
        return []
    except OSError:
        return None
    rows, unsure = [], []
    for name in names:
        gevent.sleep(0)  # about 0.4 ms per container: other greenlets run between them
        mon = monitor(lxcpath, name)
        if mon is None:
            unsure.append(len(rows))
            rows.append({"name": name, "state": "STOPPED", "pid": None})
            continue
        with mon:
            found = mon.payload(unified_root)
        if found is None:
            rows.append({"name": name, "state": None, "pid": None})
            continue
        pid, fd, cg = found
        os.close(fd)
        frozen = "frozen 1" in (_read(os.path.join(cg, "cgroup.events")) or "").splitlines()
        rows.append({"name": name, "state": "FROZEN" if frozen else "RUNNING", "pid": pid})
    if unsure:
        sockets = _command_sockets()
        if sockets is None:
            return None
        for i in unsure:
            sock = f"{lxcpath}/{rows[i]['name']}/command"
            if len(sock) > COMMAND_SOCKET_MAX or sock in sockets:
                rows[i]["state"] = None
    return rows


def kill_cgroup(cgroup_dir: str) -> bool:
    """Kill every process in ``cgroup_dir`` and its descendants at once
    (``cgroup.kill``).  Returns False when the kernel has no cgroup.kill."""
    path = os.path.join(cgroup_dir, "cgroup.kill")
    if not os.path.exists(path):
        return False
    try:
        with open(path, "w") as f:
            f.write("1")
    except FileNotFoundError:  # the cgroup went as we wrote: nothing left to kill
        return True
    except OSError:
        return False
    return True


def send_signal(pidfd: int, sig: int) -> bool:
    """Signal the process held by ``pidfd``; False when it is gone."""
    try:
        signal.pidfd_send_signal(pidfd, sig)
        return True
    except ProcessLookupError:
        return False


def parse_signal(value: str) -> int | None:
    """An ``lxc.signal.halt`` value ("SIGPWR", "PWR", "SIGRTMIN+3", "30")
    as a signal number, or None when it is not one we can read."""
    v = value.strip().upper()
    if v.isdigit():
        return int(v)
    if not v.startswith("SIG"):
        v = "SIG" + v
    if v.startswith("SIGRTMIN"):
        rest = v[len("SIGRTMIN"):]
        if rest == "":
            return int(signal.SIGRTMIN)
        if rest.startswith("+") and rest[1:].isdigit():
            n = int(signal.SIGRTMIN) + int(rest[1:])
            return n if n <= int(signal.SIGRTMAX) else None
        return None
    try:
        return int(signal.Signals[v])
    except KeyError:
        return None


def halt_signal(config_path: str) -> int | None:
    """The container's halt signal from its LXC config (``lxc.signal.halt``;
    SIGPWR, LXC's default, when it sets none), or None if unreadable."""
    text = _read(config_path)
    if text is None:
        return None
    value = "SIGPWR"
    for line in text.splitlines():
        key, sep, rest = line.partition("=")
        if sep and key.strip() == "lxc.signal.halt":
            value = rest
    return parse_signal(value)
