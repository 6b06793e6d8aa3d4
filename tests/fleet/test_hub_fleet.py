"""The hub and a fleet of real agents, each in its own network namespace,
on real LXC: placement, routing, pulls, broadcast, worker queue, restarts."""
from __future__ import annotations

import os
import secrets
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
from tests.fleet.conftest import HEARTBEAT_S, RESERVABLE, MiB, agent
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc


def test_create_spreads_by_free_capacity_and_serves_http(hub, fleet):
    placed = [hub.call("create_container", "busybox", f"spread.{i}", {"memory_bytes": 256 * MiB})
              for i in range(4)]
    assert sorted(p["host"] for p in placed) == ["host-1", "host-2", "host-3", "host-4"]
    web = placed[0]
    assert web["ports"][0]["container_port"] == 80
    url = f"http://{web['address']}:{web['ports'][0]['host_port']}/"
    deadline = time.monotonic() + 10
    while True:
        try:
            page = urllib.request.urlopen(url, timeout=2).read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert "spread.0" in page and web["host"] in page
    listed = {c["name"]: c["host"] for c in hub.call("container_ls")}
    assert listed == {p["name"]: p["host"] for p in placed}
    out = hub.call("container_exec", "spread.2", ["hostname"])
    assert out["stdout"] == b"spread.2\n"


def test_dcctl_listings_fit_100_columns(hub, fleet):
    """``dcctl container_ls`` and ``dcctl hosts`` against the hub: every line
    fits 100 columns, with the fleet's real rows (long names, mapped ports)."""
    names = [f"jerome.awesome.frontend-{i}" for i in range(3)]
    for name in names:
        hub.call("create_container", "busybox", name, {"memory_bytes": 64 * MiB})
    hub.call("container_connection_add", names[0], "udp", 53)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "DCCTL_HOST": fleet["hub"]["ipc"]}

    def dcctl(*args):
        done = subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True,
                              env=env, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    for method in ("container_ls", "hosts"):
        lines = dcctl(method)
        assert [line for line in lines if len(line) > 100] == [], "\n".join(lines)
        assert len(lines) > 1
    rows = dcctl("container_ls")
    assert rows[0].split() == ["host", "name", "state", "image", "address", "ports", "age"]
    first = next(line for line in rows if names[0] in line)
    assert "->80/tcp" in first and "running" in first
    hosts = dcctl("hosts")
    assert hosts[0].split()[:2] == ["name", "state"] and len(hosts) == 1 + len(fleet["hosts"])
    assert max(map(len, dcctl("--wide", "hosts"))) > 100  # every column, uncut
    picked = dcctl("container_ls", "--filter", f"name={names[1]}", "--filter", "state=running")
    assert len(picked) == 2 and names[1] in picked[1]


def test_full_host_is_never_chosen_and_nocapacity_names_each_host(hub):
    for i in range(4):
        assert hub.call("create_container", "busybox", f"full.{i}",
                        {"memory_bytes": 256 * MiB, "host": "host-1", "no_start": True})["host"] == "host-1"
    with pytest.raises(errors.NoCapacity, match="host-1"):
        hub.call("create_container", "busybox", "full.more", {"memory_bytes": 256 * MiB, "host": "host-1"})
    others = [hub.call("create_container", "busybox", f"other.{i}", {"memory_bytes": 256 * MiB, "no_start": True})
              for i in range(6)]
    assert "host-1" not in {p["host"] for p in others}
    with pytest.raises(errors.NoCapacity) as info:
        hub.call("create_container", "busybox", "too.big", {"memory_bytes": 2048 * MiB})
    for host in ("host-1", "host-2", "host-3", "host-4"):
        assert f"{host}: needs" in str(info.value)
    rows = {h["name"]: h for h in hub.call("hosts")}
    assert rows["host-1"]["memory_free_bytes"] == 0


def test_concurrent_creates_never_overcommit(hub, fleet):
    clients = [wire.connect(fleet["hub"]["ipc"], timeout_s=120) for _ in range(20)]

    def create(i):
        try:
            return clients[i].call("create_container", "busybox", f"race.{i}",
                                   {"memory_bytes": 300 * MiB, "no_start": True})["host"]
        except errors.NoCapacity:
            return None

    hosts = [g.value for g in gevent.joinall([gevent.spawn(create, i) for i in range(20)])]
    for c in clients:
        c.close()
    placed = [h for h in hosts if h]
    assert len(placed) == 12  # three 300 MiB containers fit in each host's 1 GiB
    for host in ("host-1", "host-2", "host-3", "host-4"):
        assert placed.count(host) == 3
        with agent(fleet, host) as a:
            reserved = sum(c["memory_limit_bytes"] or 0 for c in a.call("container_ls"))
        assert reserved <= RESERVABLE


def test_one_name_created_ten_times_succeeds_once(hub, fleet):
    clients = [wire.connect(fleet["hub"]["ipc"], timeout_s=120) for _ in range(10)]
    results = []

    def create(i):
        started = time.monotonic()
        try:
            clients[i].call("create_container", "busybox", "same.name", {"no_start": True})
            results.append(("ok", time.monotonic() - started))
        except errors.ContainerExists:
            results.append(("exists", time.monotonic() - started))

    gevent.joinall([gevent.spawn(create, i) for i in range(10)])
    for c in clients:
        c.close()
    assert sorted(r for r, _ in results) == ["exists"] * 9 + ["ok"]
    # refused at the claim: before the one that won had even created its container
    assert max(t for r, t in results if r == "exists") < next(t for r, t in results if r == "ok")
    assert [c["name"] for c in hub.call("container_ls")] == ["same.name"]


def test_a_host_without_the_image_pulls_it(hub, fleet, tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "motd").write_text(f"pulled {secrets.token_hex(4)}\n")
    tar = tmp_path / "tiny.tar.gz"
    with tarfile.open(tar, "w:gz") as t:
        t.add(rootfs, arcname=".")
    with agent(fleet, "host-1") as a1:
        made = a1.call("image_import", str(tar), "tiny")
    pushed = hub.call("image_push", "host-1", "tiny")
    assert pushed["id"] == made["id"]
    with agent(fleet, "host-3") as a3:
        assert "tiny" not in [i["name"] for i in a3.call("image_ls")]
    placed = hub.call("create_container", "tiny", "tiny.one", {"host": "host-3", "no_start": True})
    assert placed["host"] == "host-3"
    with agent(fleet, "host-3") as a3:
        local = {i["name"]: i for i in a3.call("image_ls")}["tiny"]
    assert local["id"] == made["id"] and local["layers"] == made["layers"]
    # two pulls of one new image on one host download it once
    hub.call("image_push", "host-1", "tiny")
    with agent(fleet, "host-2") as a2:
        clients = [agent(fleet, "host-2") for _ in range(2)]
        pulls = [g.value for g in gevent.joinall([gevent.spawn(c.call, "image_pull", "tiny") for c in clients])]
        for c in clients:
            c.close()
        assert sorted(p["pulled"] for p in pulls) == [False, True]
        assert [i["id"] for i in a2.call("image_ls") if i["name"] == "tiny"] == [made["id"]]


def test_broadcast_with_a_frozen_host_returns_within_its_timeout(hub, fleet):
    frozen = next(h for h in fleet["hosts"] if h["name"] == "host-4")
    os.kill(frozen["pid"], signal.SIGSTOP)
    try:
        started = time.monotonic()
        out = hub.call("broadcast", "ops_facts", [], {"timeout_s": 2.0})
        elapsed = time.monotonic() - started
    finally:
        os.kill(frozen["pid"], signal.SIGCONT)
    assert elapsed < 60  # the frozen host never answers: only the broadcast's own timeout ends it
    assert out["results"]["host-4"]["status"] == "timeout"
    assert [out["results"][h]["status"] for h in ("host-1", "host-2", "host-3")] == ["ok"] * 3
    assert out["summary"]["targeted"] == 4 and out["summary"]["ok"] == 3 and out["summary"]["timeout"] == 1
    targeted = hub.call("broadcast", "ops_run", ["hostname"], {"target": "host-[12]"})
    assert sorted(targeted["results"]) == ["host-1", "host-2"]
    _wait_all_alive(hub)


def _wait_all_alive(hub, timeout_s: float = 60.0) -> None:
    wait_for(lambda: (lambda rows: len(rows) == 4 and all(h["state"] == "alive" for h in rows))(hub.call("hosts")),
             timeout_s, "every host alive")


def test_worker_queue_runs_one_call_per_idle_host(hub, fleet):
    _wait_all_alive(hub)
    clients = [wire.connect(fleet["hub"]["ipc"], timeout_s=120) for _ in range(8)]
    script = "date +%s.%N; sleep 1; date +%s.%N"
    runs = [g.value for g in gevent.joinall(
        [gevent.spawn(c.call, "queue", "ops_run", [script], {"timeout_s": 60}) for c in clients])]
    for c in clients:
        c.close()
    per_host = sorted(r["host"] for r in runs)
    assert per_host == sorted(["host-1", "host-2", "host-3", "host-4"] * 2)
    # never two calls at once on a host: its two runs do not overlap
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        began, ended = (float(t) for t in r["result"]["stdout"].split())
        spans.setdefault(r["host"], []).append((began, ended))
    for host, (first, second) in ((h, sorted(s)) for h, s in spans.items()):
        assert first[1] <= second[0], f"{host} ran two queued calls at once: {first} {second}"


def test_hub_restart_loses_nothing(hub, fleet):
    placed = hub.call("create_container", "busybox", "survive.hub", {"no_start": True})
    hd = fleet["hub"]
    killed_at = time.time()
    pid = int(open(hd["pid_file"]).read())
    os.kill(pid, signal.SIGKILL)
    argv = [sys.executable, "-m", "hub.main", "--listen", hd["tcp"], "--listen", hd["ipc"],
            "--state-dir", hd["state_dir"], "--heartbeat-s", str(HEARTBEAT_S)]
    with open(hd["log"], "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True,
                                cwd=fleetmod.REPO, env={**os.environ, "PYTHONPATH": fleetmod.REPO})
    with open(hd["pid_file"], "w") as f:
        f.write(str(proc.pid))
    with wire.connect(hd["ipc"], timeout_s=10) as again:
        def whole():
            hosts, listed = again.call("hosts"), again.call("container_ls")
            return len(hosts) == 4 and all(h["state"] == "alive" for h in hosts) and \
                [c["name"] for c in listed] == ["survive.hub"] and listed
        listed = wait_for(whole, 60, "the restarted hub's fleet views whole", ignore=(errors.DcError,))
        assert listed[0]["host"] == placed["host"]
        # no host was judged lost in the restarted hub's start-up grace
        assert "host_lost" not in [e["kind"] for e in again.call("events", killed_at)]  # events persist
        # a second hub on the same store is refused
        done = subprocess.run([sys.executable, "-m", "hub.main", "--listen", "ipc:///tmp/dft-second.sock",
                               "--state-dir", hd["state_dir"]], capture_output=True, text=True, timeout=30,
                              cwd=fleetmod.REPO, env={**os.environ, "PYTHONPATH": fleetmod.REPO})
        assert done.returncode == 1 and "HubBusy" in done.stderr


@pytest.mark.parametrize("call, exc", [
    (("container_start", "no.such"), errors.NoSuchContainer),
    (("container_exec", "no.such", ["true"]), errors.NoSuchContainer),
    (("create_container", "busybox", "bad name"), errors.InvalidArgument),
    (("create_container", "nosuchimage", "ok.name"), errors.ImageNotFound),
    (("create_container", "busybox", "ok.name", {"host": "host-99"}), errors.NoSuchHost),
    (("create_container", "busybox", "ok.name", {"strategy": "random"}), errors.InvalidArgument),
    (("image_push", "host-99", "busybox"), errors.NoSuchHost),
    (("broadcast", "no_such_method"), None),
])
def test_bad_input_through_the_hub(hub, call, exc):
    if exc is None:
        out = hub.call(*call)
        assert {r["error"] for r in out["results"].values()} == {"NoSuchMethod"}
    else:
        with pytest.raises(exc):
            hub.call(*call)
    assert hub.call("container_ls") == []


def test_enter_through_the_hub_is_a_tty_on_the_owning_host(hub, fleet):
    from tests.terminal import run_in_pty
    placed = hub.call("create_container", "busybox", "enter.fleet", {"host": "host-2"})
    assert placed["host"] == "host-2"
    env = {**os.environ, "PYTHONPATH": fleetmod.REPO, "DCCTL_HOST": fleet["hub"]["tcp"], "TERM": "xterm"}
    code, screen = run_in_pty([sys.executable, "-m", "dcctl.cli", "container_enter", "enter.fleet"], env,
                               [b"hostname\r", b"exit 3\r"])
    text = screen.decode(errors="replace")
    assert "enter.fleet" in text and code == 3, text


def test_broadcast_and_queue_take_arguments_typed_as_text(hub, fleet):
    hub.call("create_container", "busybox", "typed.args", {"host": "host-1", "no_start": True})
    out = hub.call("broadcast", "container_logs", ["typed.args", '{"tail": 100}'], {"target": "host-1"})
    assert out["results"]["host-1"]["status"] == "ok", out
    done = hub.call("queue", "ops_run", ["echo $DC_HOST_NAME", "5"])
    assert done["result"]["stdout"] == f"{done['host']}\n"
