"""Fleet events on real LXC, a local fleet of 2 hosts: ``events_follow``
sees create, start, die with the exit code, and oom for a memory hog, in
order; a follower that disconnects and resumes from its last index gets
every event exactly once; a hub restarted keeps the history; ``dcctl
--json events --since 0`` is a list of {index, at, type, ...}."""
from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time

import gevent
import pytest

from dcctl import auth, errors, wire
from ops import fleet as fleetmod
from tests.fleet.conftest import hub_session, local_fleet
from tests.waiting import wait_for

HEARTBEAT_S = 1.0


@pytest.fixture(scope="module")
def fleet():
    with local_fleet("evt", 2, 212, agent_args=[f"--reservable-memory-bytes={1 << 30}"]) as state:
        yield state


@pytest.fixture
def hub(fleet):
    yield from hub_session(fleet)


def take(items, n: int, timeout_s: float = 120) -> list[dict]:
    """The next ``n`` items of a follower, within a deadline."""
    got: list[dict] = []
    try:
        with gevent.Timeout(timeout_s):
            while len(got) < n:
                got.append(next(items))
    except gevent.Timeout:
        raise AssertionError(f"fewer than {n} events in {timeout_s} s: {got}") from None
    return got


def test_follow_sees_create_start_die_and_oom_in_order(hub):
    last = hub.call("events", "0")[-1]["index"] if hub.call("events", "0") else 0
    with hub.stream("events_follow", str(last), ["container=evt.exit", "container=evt.hog",
                                                  "type=created", "type=started", "type=died", "type=oom"]) as items:
        hub.call("create_container", "busybox", "evt.exit", {"command": "sleep 1; exit 3", "no_route": True})
        got = take(items, 3)
        assert [(e["type"], e["container"]) for e in got] == [("created", "evt.exit"), ("started", "evt.exit"),
                                                              ("died", "evt.exit")]
        assert got[2]["exit_code"] == 3 and got[2]["oom_killed"] is False and got[2]["source"] == "agent"
        assert got[0]["host"] == got[2]["host"] and got[0]["image"] == "busybox"
        hub.call("create_container", "busybox", "evt.hog", {
            "memory_bytes": 32 << 20, "no_route": True,
            "command": "sleep 0.5; dd if=/dev/zero of=/dev/null bs=200M count=1"})
        try:
            got = take(items, 4)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the hog: {hub.call('container_inspect', 'evt.hog')}") from None
        assert [(e["type"], e["container"]) for e in got] == [("created", "evt.hog"), ("started", "evt.hog"),
                                                              ("oom", "evt.hog"), ("died", "evt.hog")]
        assert got[3]["exit_code"] == 137 and got[3]["oom_killed"] is True
    indexes = [e["index"] for e in hub.call("events", str(last))]
    assert indexes == sorted(indexes) and len(set(indexes)) == len(indexes)


def test_a_follower_that_resumes_from_its_last_index_misses_nothing_and_repeats_nothing(hub):
    start = max([e["index"] for e in hub.call("events", "0")] or [0])
    names = [f"evt.r{i}" for i in range(3)]
    seen = []
    with hub.stream("events_follow", str(start), ["type=created", "type=destroyed"]) as items:
        for name in names[:2]:
            hub.call("create_container", "busybox", name, {"no_start": True, "no_route": True})
        seen += take(items, 2)
    # the follower is gone; more happens meanwhile
    hub.call("container_destroy", names[0], True)
    hub.call("create_container", "busybox", names[2], {"no_start": True, "no_route": True})
    with hub.stream("events_follow", str(seen[-1]["index"]), ["type=created", "type=destroyed"]) as items:
        hub.call("container_destroy", names[1], True)
        seen += take(items, 3)
    assert [(e["type"], e["container"]) for e in seen] == [
        ("created", "evt.r0"), ("created", "evt.r1"), ("destroyed", "evt.r0"), ("created", "evt.r2"),
        ("destroyed", "evt.r1")]
    assert len({e["index"] for e in seen}) == 5
    assert seen == hub.call("events", str(start), ["type=created", "type=destroyed"])


def test_a_restarted_hub_keeps_the_history(hub, fleet):
    before = hub.call("events", "0")
    assert before
    hd = fleet["hub"]
    os.kill(int(open(hd["pid_file"]).read()), signal.SIGKILL)
    argv = [sys.executable, "-m", "hub.main", "--listen", hd["tcp"], "--listen", hd["ipc"],
            "--state-dir", hd["state_dir"], "--heartbeat-s", str(HEARTBEAT_S)]
    with open(hd["log"], "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True,
                                cwd=fleetmod.REPO, env={**os.environ, "PYTHONPATH": fleetmod.REPO})
    with open(hd["pid_file"], "w") as f:
        f.write(str(proc.pid))
    with wire.connect(hd["ipc"], timeout_s=10) as again:
        after = wait_for(lambda: again.call("events", "0"), 60, "the restarted hub to answer",
                         ignore=(errors.Unreachable, errors.CallTimeout))
        assert after[:len(before)] == before
        # events go on after the restart, with new indexes, agents' included
        again.call("create_container", "busybox", "evt.after", {"no_start": True, "no_route": True})
        made = wait_for(lambda: [e for e in again.call("events", str(before[-1]["index"]), ["container=evt.after",
                                                                                              "type=created"])],
                        60, "the agent's created event after the restart")
        assert made[0]["index"] > before[-1]["index"]


def test_dcctl_json_events_since_0_is_a_list(hub, fleet):
    env = {**os.environ, "DCCTL_HOST": fleet["hub"]["ipc"]}
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "--json", "events", "--since", "0"], cwd=fleetmod.REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert isinstance(listed, list) and listed and all({"index", "at", "type"} <= set(e) for e in listed)
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "events", "--filter", "colour=red"], cwd=fleetmod.REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "InvalidArgument: unknown events filter 'colour'" in done.stderr
    future = str(listed[-1]["index"] + 1000)
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "events", "--since", future], cwd=fleetmod.REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "in the future" in done.stderr


def test_dcctl_image_pull_on_a_host_streams_progress_through_the_hub(hub, fleet):
    env = {**os.environ, "DCCTL_HOST": fleet["hub"]["ipc"]}
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "--json", "image_pull", "busybox", "--host", "host-1"],
                          cwd=fleetmod.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    items = [json.loads(line) for line in done.stdout.splitlines()]
    assert items[-1]["phase"] == "done" and items[-1]["host"] == "host-1"
    assert items[-1]["result"]["manifest"]["name"] == "busybox"
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "image_pull", "busybox", "--host", "host-1"],
                          cwd=fleetmod.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "image: busybox" in done.stdout, done.stderr
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "image_pull", "nosuchimage", "--host", "host-1"],
                          cwd=fleetmod.REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "ImageNotFound" in done.stderr


def test_image_push_progress_streams_a_hosts_image_into_the_registry(hub):
    items = list(hub.stream("image_push_progress", "host-1", "busybox"))
    assert items[0]["phase"] == "running" and items[-1]["phase"] == "done" and items[-1]["host"] == "host-1"
    assert items[-1]["result"]["name"] == "busybox"  # the registry has it already: nothing moved
    assert items[-1]["bytes_done"] == items[-1]["bytes_total"] == 0
    with pytest.raises(errors.ImageNotFound):
        next(hub.stream("image_push_progress", "host-1", "nosuchimage"))


def _ev(index: int, type_: str, container: str, **extra) -> dict:
    return {"index": index, "at": time.time(), "type": type_, "container": container, **extra}


def test_a_host_key_cannot_forge_events_and_since_goes_by_the_hubs_time(hub, fleet):
    """Last in this module: it takes host-1's next two agent indexes."""
    victim, stray = f"evt.v{secrets.token_hex(2)}", f"evt.u{secrets.token_hex(2)}"
    placed = hub.call("create_container", "busybox", victim, {"host": "host-2", "no_start": True, "no_route": True})
    assert placed["host"] == "host-2"
    wait_for(lambda: any(e.get("source") == "agent" for e in hub.call("events", "0", [f"container={victim}"])),
             60, "host-2's created event")
    h = fleet["hosts"][0]  # host-1's real key, as its agent holds it
    keys = auth.ClientKeys.from_files(os.path.join(h["state_dir"], "keys", "server.key_secret"),
                                      fleet["hub"]["public_key"])
    with wire.connect(fleet["hub"]["tcp"], 30, keys) as h1:
        cursor = h1.call("host_events", "host-1", [])["cursor"]
        for batch, head, match in (
                ([_ev(cursor + 1, "host_lost", victim)], cursor + 1, "not an agent's"),
                ([_ev(cursor + 2, "died", stray), _ev(cursor + 1, "died", stray)], cursor + 2, "must rise"),
                ([_ev(cursor + 5000, "oom", stray)], cursor + 1, "past the head"),
                ([_ev(cursor + 1, "oom", "")], cursor + 1, "names its container"),
                ([_ev(cursor + 1 + i, "oom", stray) for i in range(1001)], cursor + 1001, "at most 1000")):
            with pytest.raises(errors.InvalidArgument, match=match):
                h1.call("host_events", "host-1", batch, head)
        assert h1.call("host_events", "host-1", [])["cursor"] == cursor  # nothing taken
        an_hour_ago = time.time() - 3600  # an agent's clock (or a forger) an hour behind
        got = h1.call("host_events", "host-1", [_ev(cursor + 1, "died", stray, at=an_hour_ago, exit_code=1),
                                                _ev(cursor + 2, "oom", victim)], cursor + 2)
        assert got == {"cursor": cursor + 2}  # the agent goes on; the oom of host-2's container is not recorded
    recent = [e for e in hub.call("events", "5m") if e.get("source") == "agent"]
    mine = [(e["type"], e["host"], e["container"], e.get("unknown_to_hub")) for e in recent
            if e["container"] in (victim, stray)]
    assert mine == [("created", "host-2", victim, None), ("died", "host-1", stray, True)]
    died = next(e for e in recent if e["container"] == stray)
    assert died["agent_at"] == an_hour_ago and died["at"] > an_hour_ago + 3000  # the hub's receive time
    assert not [e for e in hub.call("events", "0", [f"container={victim}", "type=oom"])]
