"""Restart policies and OOM kills on one host, real LXC."""
from __future__ import annotations

import time

import pytest

from dcctl import errors

pytestmark = pytest.mark.lxc


def wait_until(fn, timeout_s: float = 30.0, step_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(step_s)


def test_on_failure_restarts_with_a_limit_and_then_stays_stopped(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "flaky.one", {"command": "sleep 0.2; exit 3",
                                                            "restart": "on-failure:2"})
    agent.call("container_start", "flaky.one")

    def gave_up():
        info = agent.call("container_inspect", "flaky.one")
        return info if any(e["kind"] == "restart_gave_up" for e in info["events"]) else None

    info = wait_until(gave_up, 40)
    assert info["restart_count"] == 2 and info["state"] == "stopped" and info["desired"] == "stopped"
    assert info["last_exit"]["status"] == 3 and info["last_exit"]["oom_killed"] is False
    kinds = [e["kind"] for e in info["events"]]
    assert kinds.count("exited") == 3 and kinds.count("restarted") == 2


def test_no_policy_stays_stopped_and_always_restarts(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "once.only", {"command": "exit 0"})
    agent.call("container_create", "busybox", "always.back", {"command": "sleep 0.3; exit 0", "restart": "always"})
    agent.call("container_start", "once.only")
    agent.call("container_start", "always.back")
    wait_until(lambda: agent.call("container_inspect", "always.back")["restart_count"] >= 2, 30)
    once = agent.call("container_inspect", "once.only")
    assert once["state"] == "stopped" and once["desired"] == "stopped" and once["restart_count"] == 0
    assert once["last_exit"]["status"] == 0


def test_operator_stop_is_never_undone(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "stopped.by.me", {"restart": "always"})
    agent.call("container_start", "stopped.by.me")
    agent.call("container_stop", "stopped.by.me", 5.0)
    agent.stop()
    agent.start()  # an agent restart, as after a reboot
    time.sleep(3)
    info = agent.call("container_inspect", "stopped.by.me")
    assert info["state"] == "stopped" and info["restart_count"] == 0


def test_oom_kill_is_reported_and_the_policy_applies(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "mem.hog",
               {"memory_bytes": 32 << 20, "restart": "on-failure:1",
                "command": "sleep 0.5; dd if=/dev/zero of=/dev/null bs=200M count=1"})
    agent.call("container_start", "mem.hog")

    def oomed():
        info = agent.call("container_inspect", "mem.hog")
        return info if any(e["kind"] == "oom" for e in info["events"]) else None

    info = wait_until(oomed, 30)
    assert info["last_exit"]["status"] == 137
    info = wait_until(lambda: (lambda i: i if i["restart_count"] == 1 and i["desired"] == "stopped" else None)(
        agent.call("container_inspect", "mem.hog")), 40)
    assert info["oom_killed"] is True and info["state"] == "stopped"
    assert [e["kind"] for e in info["events"]] == ["oom", "restarted", "oom", "restart_gave_up"]
    with pytest.raises(errors.ContainerNotRunning):
        agent.call("container_exec", "mem.hog", ["true"])
    listed = {c["name"]: c for c in agent.call("container_ls")}
    assert listed["mem.hog"]["oom_killed"] is True
