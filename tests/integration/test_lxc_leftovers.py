"""What LXC leaves behind.  liblxc's lock file per container name
(/run/lxc/lock/LXCPATH/.NAME), which LXC never removes: destroy does.
Cgroups a dead LXC monitor leaves behind (lxcwrap.cgroup.remove_stale_lxc_cgroups,
run by the agent's ops_cleanup): a monitor killed -9 takes its container down
(the init's parent-death signal) but leaves ``lxc.monitor.NAME`` and
``lxc.payload.NAME`` in every hierarchy for good; each one left makes later
cgroup work slower and gives the next start of that name a ``-N`` suffix.
Real cgroupfs and real LXC containers; every cgroup a test makes is named by a
unique tag and removed at the end, also when it fails."""
from __future__ import annotations

import fcntl
import os
import secrets
import signal
import subprocess
import time

import pytest

from lxcwrap import cgroup


def _tagged(tag: str) -> list[str]:
    """Every cgroup directory under any hierarchy base whose name holds ``tag``."""
    return sorted(os.path.join(b, e) for b in cgroup.hierarchy_bases() if os.path.isdir(b)
                  for e in os.listdir(b) if tag in e)


def _remove_tagged(tag: str) -> None:
    for top in _tagged(tag):
        for d, _subdirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(d)
            except OSError:
                pass


@pytest.fixture
def tag():
    t = "dct" + secrets.token_hex(3)
    try:
        yield t
    finally:
        _remove_tagged(t)


def test_hierarchy_bases_follow_init_cgroup_and_mount_roots():
    mountinfo = "\n".join([
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw",
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
        "33 31 0:30 /lxc/outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory",
        "34 31 0:31 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd",
        "35 31 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw",
        "36 31 0:32 / /mnt/again rw - cgroup2 cgroup2 rw",
        "37 31 0:33 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids",
    ])
    init = "\n".join(["4:cpu,cpuacct:/", "3:memory:/lxc/outer/inner", "2:name=systemd:/init.scope",
                      "1:pids:/elsewhere", "0::/init.scope"])
    assert cgroup.hierarchy_bases(mountinfo, init) == [
        "/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/memory/inner", "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids/elsewhere"]
    # a v2-only host (Debian 12's default) under systemd
    assert cgroup.hierarchy_bases("30 23 0:27 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate",
                                  "0::/init.scope") == ["/sys/fs/cgroup"]
    # a hierarchy mounted twice: the read-write mount, its octal escapes decoded
    assert cgroup.hierarchy_bases("30 23 0:27 / /ro ro,relatime - cgroup2 cgroup2 rw\n"
                                  "31 23 0:27 / /my\\040cg rw,relatime - cgroup2 cgroup2 rw", "0::/") == ["/my cg"]
    # our cgroup outside what a mount shows: not a base
    assert cgroup.hierarchy_bases("33 31 0:30 /a /m rw - cgroup cgroup rw,memory", "3:memory:/b") == []


def test_only_old_empty_lxc_cgroups_are_removed_with_their_children(tag):
    bases = [b for b in cgroup.hierarchy_bases() if b.endswith(("/unified", "/memory")) or b == "/sys/fs/cgroup"]
    if not bases:
        pytest.skip("no cgroup v2 or v1 memory hierarchy mounted")
    base = os.path.join(bases[0], tag)  # a parent of our own: the sweep looks nowhere else
    os.mkdir(base)
    stale_mon, stale_pay = f"lxc.monitor.{tag}", f"lxc.payload.{tag}"
    busy, other = f"lxc.payload.{tag}-busy", f"{tag}.not-lxc"
    for name in (stale_mon, stale_pay, busy, other):
        os.mkdir(os.path.join(base, name))
    os.mkdir(os.path.join(base, stale_pay, "nested"))
    os.mkdir(os.path.join(base, busy, "leaf"))  # empty, but its parent holds a process
    holder = subprocess.Popen(["sleep", "60"])
    try:
        with open(os.path.join(base, busy, "cgroup.procs"), "w") as f:
            f.write(str(holder.pid))
        # young: a start may just have made them
        assert cgroup.remove_stale_lxc_cgroups([base]) == []
        assert os.path.isdir(os.path.join(base, stale_mon))
        later = time.time() + cgroup.STALE_MIN_AGE_SECONDS + 1
        with open(cgroup.SWEEP_LOCK) as held:  # another sweep runs: this one removes nothing
            fcntl.flock(held, fcntl.LOCK_EX)
            assert cgroup.remove_stale_lxc_cgroups([base], now=later) == []
        assert cgroup.remove_stale_lxc_cgroups([base], now=later) == [stale_mon, stale_pay]
        left = sorted(e for e in os.listdir(base) if os.path.isdir(os.path.join(base, e)))
        assert left == sorted([busy, other])
        assert os.path.isdir(os.path.join(base, busy, "leaf"))  # a live cgroup's child is never touched
    finally:
        holder.kill()
        holder.wait()


def test_ops_cleanup_removes_what_a_monitor_killed_9_left_and_keeps_running_ones(agent_factory, tag):
    agent = agent_factory(extra_args=("--stale-cgroup-age-s", "5"))
    dead, alive = f"{tag}d", f"{tag}a"
    with agent.client(60) as c:
        for name in (dead, alive):
            c.call("container_create", "busybox", name)
            c.call("container_start", name)
        with open(os.path.join(agent.lxc_path, dead, "init.pid")) as f:
            os.kill(int(f.read()), signal.SIGKILL)  # the monitor: its container dies with it
        deadline = time.monotonic() + 20
        while c.call("container_inspect", dead)["state"] != "stopped":
            assert time.monotonic() < deadline, "the container outlived its monitor"
            time.sleep(0.2)
        c.call("container_destroy", dead)
        left = {os.path.basename(p) for p in _tagged(dead)}
        assert left == {f"lxc.monitor.{dead}", f"lxc.payload.{dead}"}, left  # LXC's own teardown never ran
        time.sleep(5.2)
        found = c.call("ops_cleanup")
        assert {f"lxc.monitor.{dead}", f"lxc.payload.{dead}"} <= set(found["cgroups_removed"])
        assert _tagged(dead) == []
        assert not any(alive in n for n in found["cgroups_removed"])
        assert c.call("container_exec", alive, ["hostname"])["stdout"] == alive.encode() + b"\n"
        # the name starts again under its own cgroup names, not a -1 suffix
        c.call("container_create", "busybox", dead)
        c.call("container_start", dead)
        names = {os.path.basename(p) for p in _tagged(dead)}
        assert f"lxc.monitor.{dead}" in names and not any(n.endswith("-1") for n in names), names
        for name in (dead, alive):
            c.call("container_destroy", name, True)


def test_destroy_removes_liblxc_lock_file_of_the_name(agent_factory, tag):
    from lxcwrap.lxc import Lxc
    agent = agent_factory()
    lx = Lxc(agent.lxc_path)
    with agent.client(60) as c:
        ran, never = f"{tag}r", f"{tag}n"
        for name in (ran, never):
            c.call("container_create", "busybox", name)
        c.call("container_start", ran)
        c.call("container_stop", ran, 0.0)
        assert os.path.exists(lx.lock_path(ran))  # lxc-start took it
        subprocess.run(["lxc-info", "-P", agent.lxc_path, "-n", never], capture_output=True)
        assert os.path.exists(lx.lock_path(never))  # any tool's first look makes it
        for name in (ran, never):
            c.call("container_destroy", name)
            assert not os.path.exists(lx.lock_path(name))
    agent.cleanup()
    assert not os.path.exists(os.path.dirname(lx.lock_path(ran)))  # the test's own clean-up: the lxcpath's lock dir


def test_a_lock_file_another_process_holds_is_kept(tag):
    """liblxc locks its file with fcntl(2): one held by another process stays, one free goes."""
    import shutil
    import sys
    from lxcwrap.lxc import LOCK_ROOT, Lxc
    lx = Lxc(f"/tmp/{tag}-lk/lxc")  # only its lock dir is made, and removed at the end
    name = f"{tag}h"
    path = lx.lock_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").close()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR); "
                               "fcntl.lockf(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(30)", path],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        lx.remove_lock(name)
        assert os.path.exists(path)  # held: kept
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    try:
        lx.remove_lock(name)
        assert not os.path.exists(path)
    finally:
        shutil.rmtree(os.path.join(LOCK_ROOT, "tmp", f"{tag}-lk"), ignore_errors=True)
