"""A container cannot use up the host's PIDs or RAM through its tmpfs mounts:
real containers get the pids cgroup's pids.max (the agent's
default_pids_limit, or the create's pids_limit), a fork loop inside stops
at it, and /tmp, /run, /run/lock and /dev/shm are tmpfs of a bounded size
(the memory limit when there is one, else the agent's settings).  Figures
are read from the kernel: the container's cgroup and its /proc/mounts."""
from __future__ import annotations

import json
import os
import signal

import pytest

from lxcwrap import cgroup
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc

MiB = 1 << 20
TMPFS_DIRS = ("/tmp", "/run", "/run/lock", "/dev/shm")


def _sh(agent, name, script, timeout_s=60):
    return agent.call("container_exec", name, ["/bin/sh", "-c", script], {"timeout_s": timeout_s})


def _pids_dir(agent, name) -> str:
    """The container's pids cgroup dir, from its init's /proc/PID/cgroup."""
    pid = agent.call("container_inspect", name)["pid"]
    layout = cgroup.detect()
    dirs = cgroup.cgroup_dirs(layout, pid)
    return dirs["unified"] if layout.version("pids") == 2 else dirs["pids"]


def _read(path) -> str:
    with open(path) as f:
        return f.read().strip()


def _tmpfs_sizes(agent, name) -> dict:
    """{mount point: size in bytes} of the container's tmpfs mounts (its /proc/mounts)."""
    out = _sh(agent, name, "cat /proc/mounts")
    assert out["exit_code"] == 0, out
    sizes = {}
    for line in out["stdout"].decode().splitlines():
        _dev, mnt, fstype, opts = line.split()[:4]
        if fstype == "tmpfs" and mnt in TMPFS_DIRS:
            size = [o for o in opts.split(",") if o.startswith("size=")]
            sizes[mnt] = int(size[0][5:-1]) * 1024 if size and size[0].endswith("k") else None
    return sizes


@pytest.fixture
def made(shared_agent):
    """Create containers on the module's agent; every one is destroyed at the end."""
    names = []

    def make(name, options=None, start=True):
        shared_agent.call("container_create", "busybox", name, options)
        names.append(name)
        if start:
            shared_agent.call("container_start", name)
        return name

    yield make
    for n in names:
        shared_agent.call("container_destroy", n, True)


def test_default_pid_limit_and_tmpfs_sizes(shared_agent, made):
    name = made("lmx.default")
    assert _read(os.path.join(_pids_dir(shared_agent, name), "pids.max")) == "4096"
    assert shared_agent.call("container_inspect", name)["pids_limit"] == 4096
    assert _tmpfs_sizes(shared_agent, name) == {"/tmp": 256 * MiB, "/run": 64 * MiB, "/run/lock": 64 * MiB,
                                                "/dev/shm": 64 * MiB}


def test_a_fork_loop_stops_at_pids_limit_and_the_container_recovers(shared_agent, made):
    name = made("lmx.forks", {"pids_limit": 50, "memory_bytes": 96 * MiB})
    cg = _pids_dir(shared_agent, name)
    assert _read(os.path.join(cg, "pids.max")) == "50"
    # 200 sleeps: the forks past the limit fail (EAGAIN); busybox sh may give up at the first one.
    # Their output goes to /dev/null so that the exec ends with the shell, not with the sleeps
    out = _sh(shared_agent, name, "i=0; while [ $i -lt 200 ]; do sleep 30 >/dev/null 2>&1 & i=$((i+1)); done")
    try:
        procs = [int(p) for p in _read(os.path.join(cg, "cgroup.procs")).split()]
        sleeps = [p for p in procs if _comm(p) == "sleep"]
        assert int(_read(os.path.join(cg, "pids.current"))) <= 50
        assert 20 <= len(sleeps) < 50, (len(sleeps), out)
        assert int(_read(os.path.join(cg, "pids.events")).split()[-1]) > 0  # "max N": forks refused
        assert b"fork" in out["stderr"].lower() or out["exit_code"] != 0, out
    finally:
        for p in _pids_in(cg):
            if _comm(p) == "sleep":
                _kill(p)
    wait_for(lambda: not [p for p in _pids_in(cg) if _comm(p) == "sleep"], 30, "the sleeps were killed")
    assert _sh(shared_agent, name, "echo ok")["stdout"] == b"ok\n"  # forks work again
    # with a memory limit, each tmpfs is as large as the limit
    assert _tmpfs_sizes(shared_agent, name) == {d: 96 * MiB for d in TMPFS_DIRS}


def _pids_in(cg) -> list[int]:
    return [int(p) for p in _read(os.path.join(cg, "cgroup.procs")).split()]


def _comm(pid) -> str | None:
    try:
        return _read(f"/proc/{pid}/comm")
    except OSError:
        return None


def _kill(pid) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_agent_settings_bound_tmpfs_and_pids_and_old_containers_still_start(agent_factory):
    agent = agent_factory(extra_args=("--default-pids-limit", "64", "--tmpfs-tmp-size-bytes", str(16 * MiB),
                                      "--tmpfs-size-bytes", str(4 * MiB)))
    name = "lmx.set"
    agent.call("container_create", "busybox", name)
    agent.call("container_start", name)
    assert _read(os.path.join(_pids_dir(agent, name), "pids.max")) == "64"
    assert _tmpfs_sizes(agent, name) == {"/tmp": 16 * MiB, "/run": 4 * MiB, "/run/lock": 4 * MiB,
                                         "/dev/shm": 4 * MiB}
    # writing past the size fails with ENOSPC and the file stays at the bound
    out = _sh(agent, name, "dd if=/dev/zero of=/tmp/fill bs=1M count=40; wc -c < /tmp/fill")
    assert b"no space" in out["stderr"].lower(), out
    assert int(out["stdout"].split()[-1]) <= 16 * MiB, out
    agent.call("container_stop", name, 5.0)
    # a container made before PID limits: no pids_limit in its record, no pids.max or size= in its config
    agent.stop()
    rec_path = os.path.join(agent.state_dir, "containers", f"{name}.json")
    with open(rec_path) as f:
        rec = json.load(f)
    del rec["pids_limit"]
    with open(rec_path, "w") as f:
        json.dump(rec, f)
    cfg_path = os.path.join(agent.lxc_path, name, "config")
    with open(cfg_path) as f:
        lines = [ln for ln in f.read().splitlines() if ".pids.max" not in ln]
    with open(cfg_path, "w") as f:
        f.write("\n".join(ln.replace(f",size={16 * MiB}", "").replace(f",size={4 * MiB}", "")
                          for ln in lines) + "\n")
    agent.start()
    agent.call("container_start", name)
    assert agent.call("container_inspect", name)["pids_limit"] is None
    assert _sh(agent, name, "echo ok")["stdout"] == b"ok\n"
    assert _read(os.path.join(_pids_dir(agent, name), "pids.max")) == "max"
    agent.call("container_destroy", name, True)
