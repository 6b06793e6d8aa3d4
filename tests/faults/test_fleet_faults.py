"""Fault injection on a local fleet: hosts that die or freeze, a hub killed
during creates, and the invariants that must hold through it all.

Each scenario runs in a short form in CI; DCF_SOAK=1 makes the loops longer
(a long soak by hand: DCF_SOAK=1 ops/test tests/faults).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request

import gevent
import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.fleet.conftest import HEARTBEAT_S, agent
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc
SOAK = os.environ.get("DCF_SOAK") == "1"


def running_names(fleet) -> dict[str, list[str]]:
    """name -> hosts where it runs, asking every live agent directly."""
    out: dict[str, list[str]] = {}
    for h in fleet["hosts"]:
        if not _alive(h):
            continue
        try:
            with wire.connect(h["ipc"], 5) as c:
                for ct in c.call("container_ls"):
                    if ct["state"] == "running":
                        out.setdefault(ct["name"], []).append(h["name"])
        except errors.DcError:
            continue
    return out


def _alive(h) -> bool:
    try:
        os.kill(h["pid"], 0)
        with open(f"/proc/{h['pid']}/stat") as f:
            return f.read().split()[2] not in ("T", "Z")
    except (OSError, IndexError):
        return False


def _get(url: str) -> str | None:
    try:
        return urllib.request.urlopen(url, timeout=1).read().decode()
    except OSError:
        return None


def _kill_host(fleet, host: dict) -> None:
    """The host dies: its agent is SIGKILLed and its containers stop dead."""
    os.kill(host["pid"], signal.SIGKILL)
    lxc_path = os.path.join(host["state_dir"], "lxc")
    for name in os.listdir(lxc_path):
        subprocess.run(["nsenter", f"--net=/run/netns/{host['netns']}", "lxc-stop", "-P", lxc_path,
                        "-n", name, "-k"], capture_output=True, timeout=60)


def _restart_agent(fleet, host: dict) -> None:
    """Start the host's agent again and wait until it answers and the hub
    has heard it since (it registered again: until then the hub still
    counts the beats of the agent that died, and judges it lost when they
    run out, which would fail the next test's calls to it)."""
    started = time.time()
    proc = fleetmod._spawn(fleetmod.agent_argv(fleet, host, []), host["log"], host["pid_file"])
    host["pid"] = proc.pid
    deadline = time.monotonic() + 60
    while not fleetmod.ping(host["ipc"]):
        assert time.monotonic() < deadline, "agent did not come back"
        time.sleep(0.2)
    with wire.connect(fleet["hub"]["ipc"], 30) as hub:
        wait_for(lambda: [h for h in hub.call("hosts") if h["name"] == host["name"] and h["state"] == "alive"
                          and h["last_heartbeat"] >= started], 60, f"the hub to hear {host['name']} again",
                 interval_s=0.2, ignore=(errors.Unreachable, errors.CallTimeout))


def test_killed_host_containers_come_back_elsewhere(hub, fleet):
    victim = fleet["hosts"][1]
    names = [f"failover.{i}" for i in range(2)]
    for n in names:
        placed = hub.call("create_container", "busybox", n, {"restart": "always", "host": victim["name"]})
        assert placed["host"] == victim["name"]
    died = time.monotonic()
    _kill_host(fleet, victim)
    back = {}
    while len(back) < len(names):
        assert time.monotonic() - died < 60, f"not back in time: {hub.call('events')}"
        for name, hosts in running_names(fleet).items():
            assert len(hosts) == 1, f"{name} runs on {hosts}"
        for n in names:
            if n in back:
                continue
            try:
                info = hub.call("container_inspect", n, timeout_s=5)
            except errors.DcError:
                continue
            if info["host"] != victim["name"] and info["ports"]:
                addr = next(h["address"] for h in fleet["hosts"] if h["name"] == info["host"])
                page = _get(f"http://{addr}:{info['ports'][0]['host_port']}/")
                if page and n in page:
                    back[n] = time.monotonic() - died
        time.sleep(0.2)
    print(f"\nfailover: host death to containers answering elsewhere: "
          f"{', '.join(f'{n} {t:.1f} s' for n, t in back.items())}")
    kinds = [e["kind"] for e in hub.call("events")]
    assert "host_lost" in kinds and kinds.count("rescheduled") >= 2
    # the host comes back (a reboot): its stale copies are removed, never run twice
    _restart_agent(fleet, victim)
    deadline = time.monotonic() + 10 * HEARTBEAT_S + 10
    while True:
        with wire.connect(victim["ipc"], 10) as c:
            left = [ct["name"] for ct in c.call("container_ls") if ct["name"] in names]
        for name, hosts in running_names(fleet).items():
            assert len(hosts) == 1, f"{name} runs on {hosts}"
        if not left:
            break
        assert time.monotonic() < deadline, f"stale copies not removed: {left}"
        time.sleep(0.2)


def test_frozen_host_thawed_never_runs_a_name_twice(hub, fleet):
    victim = fleet["hosts"][2]
    name = "frozen.web"
    assert hub.call("create_container", "busybox", name, {"restart": "always", "host": victim["name"]})["host"] \
        == victim["name"]
    os.kill(victim["pid"], signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if hub.call("container_inspect", name, timeout_s=10)["host"] != victim["name"]:
                    break
            except (errors.Unreachable, errors.CallTimeout):
                pass  # the frozen host does not answer
            assert time.monotonic() < deadline, hub.call("events")
            time.sleep(0.2)
    finally:
        os.kill(victim["pid"], signal.SIGCONT)
    # after reconciliation (a heartbeat or two), the name runs on one host only
    deadline = time.monotonic() + 10 * HEARTBEAT_S + 10
    while True:
        where = running_names(fleet).get(name, [])
        if len(where) == 1 and where[0] != victim["name"]:
            break
        assert time.monotonic() < deadline, f"{name} runs on {where}"
        time.sleep(0.2)
    time.sleep(3 * HEARTBEAT_S)
    assert len(running_names(fleet).get(name, [])) == 1
    assert "stale_copy_removed" in [e["kind"] for e in hub.call("events")]


def test_hub_killed_during_concurrent_creates_keeps_the_store_true(hub, fleet):
    count = 50
    clients = [wire.connect(fleet["hub"]["ipc"], 30) for _ in range(count)]
    outcome: dict[str, str] = {}

    def create(i):
        name = f"storm.{i}"
        try:
            clients[i].call("create_container", "busybox", name, {"no_start": True})
            outcome[name] = "ok"
        except errors.DcError as exc:
            outcome[name] = type(exc).__name__

    workers = [gevent.spawn(create, i) for i in range(count)]
    gevent.sleep(0.3)
    hd = fleet["hub"]
    os.kill(int(open(hd["pid_file"]).read()), signal.SIGKILL)
    gevent.joinall(workers, timeout=60)
    for c in clients:
        c.close()
    argv = [sys.executable, "-m", "hub.main", "--listen", hd["tcp"], "--listen", hd["ipc"],
            "--state-dir", hd["state_dir"], "--heartbeat-s", str(HEARTBEAT_S)]
    proc = fleetmod._spawn(argv, hd["log"], hd["pid_file"])
    hd["pid"] = proc.pid
    with wire.connect(hd["ipc"], 30) as again:
        storm_rows, storm_real = wait_for(lambda: _store_and_reality_agree(again, fleet, "storm."), 120,
                                          "the store and the hosts to agree", interval_s=0.3,
                                          ignore=(errors.DcError,))
    assert all(len(hs) == 1 for hs in storm_real.values())
    assert all(storm_rows[n]["host"] == hs[0] for n, hs in storm_real.items())
    for name, result in outcome.items():
        if result == "ok":
            assert name in storm_real
    print(f"\nhub killed mid-storm: {sum(r == 'ok' for r in outcome.values())} created, "
          f"{len(storm_real)} exist, {len(outcome) - sum(r == 'ok' for r in outcome.values())} failed with errors")


def _store_and_reality_agree(hub, fleet, prefix: str):
    """(store rows, {name: [hosts]}) for names starting with ``prefix``
    once every row is decided (not reserved or unknown) and the same names
    exist on the hosts; None before."""
    rows = {c["name"]: c for c in hub.call("container_ls") if c["name"].startswith(prefix)}
    reality: dict[str, list[str]] = {}
    for h in fleet["hosts"]:
        if _alive(h):
            with wire.connect(h["ipc"], 10) as a:
                for ct in a.call("container_ls"):
                    if ct["name"].startswith(prefix):
                        reality.setdefault(ct["name"], []).append(h["name"])
    if all(r["state"] not in ("reserved", "unknown") for r in rows.values()) and set(rows) == set(reality):
        return rows, reality
    return None


@pytest.mark.parametrize("restart", ["now", "later"])
def test_agent_killed_and_restarted_during_creates_never_stalls_them(hub, fleet, tmp_path, restart):
    """kill -9 an agent while creates (pulls of a new image, creates) are
    in flight to it, and restart it at once (the hub sees a new boot id) or
    only once the creates ended (the dead agent's calls are known dead by
    their heartbeats): every create ends (on another host or on the
    restarted one, or with a typed error) well under a client's 60 s, and no
    reservation stays "reserved"."""
    image = f"bulky{restart}"  # new each time: the victim has to pull it
    roomiest = max(hub.call("hosts"), key=lambda h: (h["memory_free_bytes"], h["name"]))["name"]
    victim = next(h for h in fleet["hosts"] if h["name"] == roomiest)  # where spread places first
    rootfs = tmp_path / "rootfs"
    (rootfs / "srv").mkdir(parents=True)
    (rootfs / "srv" / "blob").write_bytes(os.urandom(24 << 20))  # a pull that takes a while
    tar = tmp_path / f"{image}.tar"
    with tarfile.open(tar, "w") as t:
        t.add(rootfs, arcname=".")
    source = next(h["name"] for h in fleet["hosts"] if h is not victim)
    with agent(fleet, source) as a:
        a.call("image_import", str(tar), image)
    hub.call("image_push", source, image)
    count = 12
    clients = [wire.connect(fleet["hub"]["ipc"], 120) for _ in range(count)]
    outcome: dict[str, str] = {}

    def create(i):
        # half pinned to the victim, so creates are surely in flight to it when it is killed (spread
        # alone placed all twelve elsewhere in one suite run); the others are placed as spread likes
        options = {"no_start": True, **({"host": victim["name"]} if i % 2 == 0 else {})}
        try:
            outcome[f"restart.{i}"] = clients[i].call("create_container", image, f"restart.{i}", options)["host"]
        except errors.DcError as exc:
            outcome[f"restart.{i}"] = f"{type(exc).__name__}: {exc}"

    workers = [gevent.spawn(create, i) for i in range(count)]
    try:
        wait_for(lambda: all(w.ready() for w in workers) or [
            c for c in hub.call("container_ls") if c["host"] == victim["name"] and c["state"] == "reserved"],
            60, "creates in flight to the victim", interval_s=0.02)
        assert not all(w.ready() for w in workers), f"every create ended before the kill: {outcome}"
        os.kill(victim["pid"], signal.SIGKILL)
        killed = time.monotonic()
        if restart == "now":
            _restart_agent(fleet, victim)
        gevent.joinall(workers, timeout=45)
        ended_s = time.monotonic() - killed
        if restart == "later":
            _restart_agent(fleet, victim)
        waiting = sorted({f"restart.{i}" for i in range(count)} - set(outcome))
        assert not waiting, f"creates still waiting {ended_s:.0f} s after the kill: {waiting}"
    finally:
        gevent.killall(workers)
        for c in clients:
            c.close()
    print(f"\nagent killed mid-create, restarted {restart}: every create ended {ended_s:.1f} s after the kill:",
          outcome)
    assert not [r for r in outcome.values() if r.startswith(("CallTimeout", "InternalError"))], outcome
    rows, reality = wait_for(lambda: _store_and_reality_agree(hub, fleet, "restart."), 60,
                             "no reservation left and the store true to the hosts", interval_s=0.3,
                             ignore=(errors.DcError,))
    assert all(len(hs) == 1 for hs in reality.values()), reality
    assert all(rows[n]["host"] == hs[0] for n, hs in reality.items())
    for name, result in outcome.items():
        if result in {h["name"] for h in fleet["hosts"]}:
            assert reality.get(name) == [result], (name, result, reality.get(name))
