"""A container fills the agent's state dir (its rootfs lives there, as in the
default layout): start, stop and destroy keep every record true to LXC,
destroy always finishes, and a destroy cut short is finished later."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from dcctl import errors
from tests.agentproc import AgentProcess
from tests.conftest import _need_lxc

pytestmark = pytest.mark.lxc


@pytest.fixture
def small_agent():
    """A real agent whose state dir (with its LXC path inside, the default)
    is a 24 MiB tmpfs."""
    _need_lxc()
    agent = AgentProcess()
    agent.lxc_path = os.path.join(agent.state_dir, "lxc")
    os.makedirs(agent.state_dir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", agent.state_dir], check=True)
    try:
        yield agent.start()
    finally:
        agent.cleanup()
        subprocess.run(["umount", "-l", agent.state_dir], capture_output=True)
        shutil.rmtree(agent.root, ignore_errors=True)


def record(agent, name):
    """The record on disk, or None."""
    try:
        with open(os.path.join(agent.state_dir, "containers", name + ".json")) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def lxc_state(agent, name) -> str:
    out = subprocess.run(["lxc-info", "-P", agent.lxc_path, "-n", name, "-s"], capture_output=True, text=True)
    return out.stdout.split()[-1] if out.returncode == 0 and out.stdout.split() else "MISSING"


def assert_true_to_lxc(agent, name):
    rec, state = record(agent, name), lxc_state(agent, name)
    assert rec is not None and rec["phase"] == "ready", rec
    assert (rec["desired"] == "running") == (state == "RUNNING"), (rec["desired"], state)
    return state


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_from_inside(agent, name, target):
    """dd in the container, into its rootfs (in the agent's state dir), until the disk is full."""
    out = agent.call("container_exec", name, ["dd", "if=/dev/zero", f"of={target}", "bs=4k"], timeout_s=120)
    assert out["exit_code"] != 0 and b"No space left" in out["stderr"], out["stderr"]
    assert free_bytes(agent.state_dir) < 64 << 10


def nothing_left(agent):
    assert agent.call("container_ls") == []
    assert os.listdir(agent.lxc_path) == []
    assert os.listdir(os.path.join(agent.state_dir, "containers")) == []
    links = subprocess.run(["ip", "-o", "link", "show", "master", agent.bridge], capture_output=True, text=True)
    assert ": dcv" not in links.stdout
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    assert not [ln for ln in rules.splitlines() if f"DCF-{agent.bridge}" in ln and "-j DNAT" in ln]


def test_start_stop_destroy_on_a_disk_the_container_filled(small_agent):
    agent = small_agent
    agent.call("container_create", "busybox", "fill.er")
    agent.call("container_start", "fill.er")
    agent.call("container_connection_add", "fill.er", "tcp", 80)
    fill_from_inside(agent, "fill.er", "/fill")
    # stop and start on the full disk, until the state store's reserve runs
    # out: each call succeeds or fails with StoreError, and the record on
    # disk says what LXC does after every one of them
    outcomes = []
    for _ in range(12):
        for method in ("container_stop", "container_start"):
            try:
                agent.call(method, "fill.er", *((2,) if method == "container_stop" else ()))
                outcomes.append((method, "ok"))
            except (errors.StoreError, errors.ContainerRunning, errors.ContainerNotRunning) as exc:
                outcomes.append((method, type(exc).__name__))  # a StoreError changed nothing
            assert_true_to_lxc(agent, "fill.er")
    print(f"\nstop/start on a full disk: {outcomes}")
    assert outcomes[:4] == [("container_stop", "ok"), ("container_start", "ok")] * 2, outcomes
    # the agent restarts and finds its records true: nothing is restarted or lost
    state = lxc_state(agent, "fill.er")
    agent.kill9()
    agent.start()
    view = agent.call("container_inspect", "fill.er")
    assert view["state"] == state.lower() and view["desired"] == ("running" if state == "RUNNING" else "stopped")
    # destroy always finishes, running or not, and leaves nothing
    if state != "RUNNING":
        try:
            agent.call("container_start", "fill.er")
        except errors.StoreError:
            pass
    agent.call("container_destroy", "fill.er", True)
    nothing_left(agent)
    # the space is back: the disk takes new containers again
    agent.call("container_create", "busybox", "after.fill")
    agent.call("container_start", "after.fill")
    assert agent.call("container_exec", "after.fill", ["hostname"])["stdout"] == b"after.fill\n"
    agent.call("container_destroy", "after.fill", True)
    nothing_left(agent)


def test_a_running_container_that_filled_the_disk_is_destroyed_at_once(small_agent):
    agent = small_agent
    agent.call("container_create", "busybox", "fill.fast")
    agent.call("container_start", "fill.fast")
    agent.call("container_connection_add", "fill.fast", "tcp", 80)
    # it keeps filling whatever space frees up, in the background
    agent.call("container_exec", "fill.fast",
               ["sh", "-c", "(i=0; while true; do dd if=/dev/zero of=/f$i bs=4k 2>/dev/null; i=$((i+1)); "
                            "sleep 0.01; done) >/dev/null 2>&1 &"])
    deadline = time.monotonic() + 60
    while free_bytes(agent.state_dir) >= 64 << 10:
        assert time.monotonic() < deadline, "the container did not fill the disk"
        time.sleep(0.1)
    agent.call("container_destroy", "fill.fast", True)
    nothing_left(agent)
    assert agent.call("ops_cleanup")["destroy_finished"] == []


def test_a_destroy_cut_short_is_finished_by_ops_cleanup_and_by_destroy(small_agent, tmp_path):
    agent = small_agent
    for name in ("stuck.one", "stuck.two"):
        agent.call("container_create", "busybox", name)
    # something holds a file of each container (a mount left under its rootfs)
    held = []
    for name in ("stuck.one", "stuck.two"):
        target = os.path.join(agent.lxc_path, name, "delta0", "held")
        os.makedirs(target)
        (tmp_path / name).mkdir()
        subprocess.run(["mount", "--bind", str(tmp_path / name), target], check=True)
        held.append(target)
    try:
        for name in ("stuck.one", "stuck.two"):
            with pytest.raises(errors.StoreError, match="held"):
                agent.call("container_destroy", name)
            assert agent.call("container_inspect", name)["state"] == "destroying"
            assert record(agent, name)["phase"] == "destroying"
            with pytest.raises(errors.Busy, match="destroying"):
                agent.call("container_start", name)
        # while it is held, a retry fails the same way (not Busy) and cleanup reports it
        with pytest.raises(errors.StoreError):
            agent.call("container_destroy", "stuck.one")
        assert set(agent.call("ops_cleanup")["destroy_failed"]) == {"stuck.one", "stuck.two"}
    finally:
        for target in held:
            subprocess.run(["umount", target], capture_output=True)
    assert agent.call("container_destroy", "stuck.one") == {"name": "stuck.one", "destroyed": True}
    found = agent.call("ops_cleanup")
    assert found["destroy_finished"] == ["stuck.two"] and found["destroy_failed"] == {}
    nothing_left(agent)
