"""Containers are not privileged: a real container keeps only the capability
set lxcwrap renders (Docker's default plus SYS_BOOT), cannot mount, and
cannot open a block device it made with mknod (devices cgroup)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.lxc

#: capability numbers from linux/capability.h, written out here on purpose
#: (not taken from lxcwrap): the test checks the kernel's view against them
_CAP_BITS = {"chown": 0, "dac_override": 1, "fowner": 3, "fsetid": 4, "kill": 5, "setgid": 6, "setuid": 7,
             "setpcap": 8, "net_bind_service": 10, "net_raw": 13, "sys_chroot": 18, "sys_boot": 22,
             "mknod": 27, "audit_write": 29, "setfcap": 31}
_KEPT_MASK = sum(1 << b for b in _CAP_BITS.values())
_FORBIDDEN = {"sys_module": 16, "sys_rawio": 17, "sys_admin": 21, "net_admin": 12, "sys_ptrace": 19,
              "sys_time": 25, "mac_admin": 33, "bpf": 39}


@pytest.fixture
def running(shared_agent):
    name = "capstest.web"
    shared_agent.call("container_create", "busybox", name)
    try:
        shared_agent.call("container_start", name)
        yield shared_agent, name
    finally:
        shared_agent.call("container_destroy", name, True)


def _sh(agent, name, script):
    return agent.call("container_exec", name, ["/bin/sh", "-c", script])


def _caps(agent, name, path):
    out = _sh(agent, name, f"grep -E '^Cap(Eff|Bnd|Prm):' {path}")
    assert out["exit_code"] == 0, out
    return {k.rstrip(":"): int(v, 16) for k, v in (ln.split() for ln in out["stdout"].decode().splitlines())}


def test_init_and_exec_keep_only_the_default_caps(running):
    agent, name = running
    for path in ("/proc/1/status", "/proc/self/status"):
        caps = _caps(agent, name, path)
        assert caps == {"CapEff": _KEPT_MASK, "CapPrm": _KEPT_MASK, "CapBnd": _KEPT_MASK}, (path, caps)
        for cap, bit in _FORBIDDEN.items():
            assert not caps["CapBnd"] & (1 << bit), (path, cap)


def test_mount_is_refused_and_a_made_block_device_cannot_be_opened(running):
    agent, name = running
    out = _sh(agent, name, "mkdir -p /mnt/x && mount -t tmpfs x /mnt/x")
    assert out["exit_code"] != 0, out
    assert b"tmpfs" not in _sh(agent, name, "grep ' /mnt/x ' /proc/mounts")["stdout"]
    # Docker's rule: mknod is allowed (m), opening the node is not (EPERM from the
    # devices cgroup; /root is on the overlay, not a nodev tmpfs)
    out = _sh(agent, name, "mknod /root/vda b 254 0 && dd if=/root/vda of=/dev/null bs=512 count=1")
    assert out["exit_code"] != 0 and b"not permitted" in out["stderr"].lower(), out
    # the devices a container needs still open
    out = _sh(agent, name, "head -c 4 /dev/urandom | wc -c && echo ok > /dev/null")
    assert out == {**out, "exit_code": 0, "stdout": b"4\n"}


def test_system_image_gets_tmpfs_tmp_and_run(running):
    agent, name = running
    mounts = _sh(agent, name, "cat /proc/mounts")["stdout"].decode().splitlines()
    types = {ln.split()[1]: ln.split()[2] for ln in mounts}
    assert types.get("/tmp") == "tmpfs" and types.get("/run") == "tmpfs", mounts
