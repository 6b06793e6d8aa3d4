"""One host under faults: agent restarts under load, a full disk during a
pull, and interleaved calls on one name from many clients."""
from __future__ import annotations

import os
import random
import subprocess
import time
import urllib.request

import gevent
import pytest

from dcctl import errors
from tests.agentproc import AgentProcess

pytestmark = pytest.mark.lxc
SOAK = os.environ.get("DCF_SOAK") == "1"


def test_agent_restarts_under_http_load_fail_no_request(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "steady.web")
    agent.call("container_start", "steady.web")
    port = agent.call("container_connection_add", "steady.web", "tcp", 80)["host_port"]
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 10
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    # an HTTP client in its own process, hammering the mapping the whole time
    script = ("import sys, time, urllib.request\n"
              "ok = bad = 0\n"
              "end = time.monotonic() + float(sys.argv[2])\n"
              "while time.monotonic() < end:\n"
              "    try:\n"
              "        urllib.request.urlopen(sys.argv[1], timeout=2).read(); ok += 1\n"
              "    except OSError:\n"
              "        bad += 1\n"
              "print(ok, bad)\n")
    restarts = 100 if SOAK else 20
    load = subprocess.Popen(["python3", "-c", script, url, str(restarts * 1.5 + 5)], stdout=subprocess.PIPE,
                            text=True)
    for i in range(restarts):
        if i % 2:
            agent.kill9()
        else:
            agent.stop()
        agent.start()
    ok, bad = map(int, load.communicate(timeout=restarts * 3 + 60)[0].split())
    print(f"\n{restarts} agent restarts under load: {ok} requests answered, {bad} failed")
    assert ok > 0 and bad == 0
    assert agent.call("container_inspect", "steady.web")["state"] == "running"


def test_disk_full_during_a_pull_leaves_nothing_and_keeps_serving(agent_factory, tmp_path):
    source = agent_factory()
    big = tmp_path / "rootfs"
    (big / "data").mkdir(parents=True)
    (big / "data" / "blob").write_bytes(os.urandom(24 << 20))
    tar = tmp_path / "big.tar"
    subprocess.run(["tar", "-C", str(big), "-cf", str(tar), "."], check=True)
    source.call("image_import", str(tar), "big")
    small = AgentProcess()
    os.makedirs(small.state_dir, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", small.state_dir], check=True)
    try:
        small.start()
        images_dir = os.path.join(small.state_dir, "images")

        def listing():
            return sorted(os.path.relpath(os.path.join(d, f), images_dir)
                          for d, _, fs in os.walk(images_dir) for f in fs)

        before = listing()
        with pytest.raises(errors.StoreError, match="(?i)space|full"):
            small.call("image_pull", "big", source.endpoint)
        assert listing() == before
        assert [i["name"] for i in small.call("image_ls")] == ["busybox"]
        small.call("container_create", "busybox", "still.works")
        small.call("container_destroy", "still.works")
        # now fill the disk to the brim: a create fails cleanly and leaves nothing
        filler = os.path.join(small.state_dir, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        with pytest.raises(errors.StoreError, match="(?i)space|full"):
            small.call("container_create", "busybox", "no.room")
        assert small.call("container_ls") == []
        assert os.listdir(small.lxc_path) == []
        assert not os.path.exists(os.path.join(small.state_dir, "containers", "no.room.json"))
        os.unlink(filler)
        small.call("container_create", "busybox", "room.again")
        small.call("container_destroy", "room.again")
    finally:
        small.cleanup()
        subprocess.run(["umount", "-l", small.state_dir], capture_output=True)


def test_interleaved_calls_on_one_name_lose_nothing_and_leave_no_stuck_lock(agent_factory):
    agent = agent_factory()
    rounds = 200 if SOAK else 40
    rng = random.Random(7)
    clients = [agent.client(60) for _ in range(8)]
    results: dict[str, int] = {}

    def worker(c):
        for _ in range(rounds // 8):
            op = rng.choice(["create", "start", "stop", "destroy", "destroy_force"])
            try:
                if op == "create":
                    c.call("container_create", "busybox", "contended")
                elif op == "start":
                    c.call("container_start", "contended")
                elif op == "stop":
                    c.call("container_stop", "contended", 0.0)
                elif op == "destroy":
                    c.call("container_destroy", "contended")
                else:
                    c.call("container_destroy", "contended", True)
                results[op] = results.get(op, 0) + 1
            except (errors.ContainerExists, errors.NoSuchContainer, errors.ContainerRunning,
                    errors.ContainerNotRunning, errors.Busy) as exc:
                results[type(exc).__name__] = results.get(type(exc).__name__, 0) + 1

    gevent.joinall([gevent.spawn(worker, c) for c in clients], raise_error=True)
    # a caller that gives up mid-call: its shielded work completes and frees the lock
    with agent.client(0.005) as quick:
        try:
            quick.call("container_create", "busybox", "contended.two")
        except errors.CallTimeout:
            pass
        gevent.sleep(0.5)
    listed = {c["name"]: c for c in agent.call("container_ls")}
    lxc = subprocess.run(["lxc-ls", "-P", agent.lxc_path], capture_output=True, text=True).stdout.split()
    assert sorted(listed) == sorted(lxc)  # records and LXC agree: no lost update
    for name in listed:  # and no lock is stuck
        agent.call("container_destroy", name, True)
    agent.call("container_create", "busybox", "contended")
    agent.call("container_destroy", "contended")
    for c in clients:
        c.close()
    assert sum(results.values()) == (rounds // 8) * 8
