"""ops/fleet on real namespaces, bridges and LXC: up, status, down.

Every fleet has a unique prefix (``dfl`` + 3 hex digits) and a random fleet
subnet 10.211.X.0/24; a finalizer runs ``down`` and fails the test if anything
is left.  Fleets of earlier runs whose test process died are swept first.
"""
from __future__ import annotations

import glob
import json
import os
import random
import re
import shutil
import subprocess
import time
import urllib.request

import pytest

from dcctl import procs, wire
from ops import fleet as fleetmod
from ops.fleetlib.down import netns_locks
from tests.agentproc import REPO

FLEET = os.path.join(REPO, "ops", "fleet")
TEST_PREFIX = "dfl"

pytestmark = [pytest.mark.lxc,
              pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("lxc-start"),
                                 reason="needs root and LXC (run .ci/run, which installs them)")]


def run_fleet(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([FLEET, *args], capture_output=True, text=True, timeout=timeout)


def _owner_dead(prefix: str) -> bool:
    state = fleetmod.load(prefix)
    pid = (state or {}).get("owner_pid")
    return not pid or (pid != os.getpid() and not os.path.exists(f"/proc/{pid}"))


def _sweep() -> None:
    """down the fleets of dead earlier runs (state file owner gone, or
    namespaces / dirs without a state file)."""
    rx = re.compile(rf"^({TEST_PREFIX}[0-9a-f]{{3}})(-host-\d+)?$")
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    names += [os.path.basename(d) for d in glob.glob(f"{fleetmod.RUN_ROOT}/{TEST_PREFIX}*")]
    seen = {m.group(1) for n in names if (m := rx.match(n))}
    for prefix in seen:
        if _owner_dead(prefix):
            fleetmod.down(prefix)


@pytest.fixture(scope="module", autouse=True)
def sweep_dead_fleets():
    _sweep()
    yield


class Fleet:
    """One test fleet: unique prefix, random subnet."""

    def __init__(self):
        self.prefix = f"{TEST_PREFIX}{random.randbytes(2).hex()[:3]}"
        self.pick_subnet()

    def pick_subnet(self) -> None:
        self.third = random.randint(0, 255)
        self.subnet = f"10.211.{self.third}.0/24"

    def addr(self, i: int) -> str:
        return f"10.211.{self.third}.{10 + i}"

    def up(self, n: int, *extra: str) -> subprocess.CompletedProcess:
        for _ in range(3):  # the random subnet may be in use by a concurrent run
            done = run_fleet("up", str(n), "--prefix", self.prefix, "--fleet-subnet", self.subnet, *extra)
            if "overlaps route" not in done.stderr:
                return done
            self.pick_subnet()
        return done

    def state(self) -> dict:
        return fleetmod.load(self.prefix)


def assert_nothing_left(prefix: str) -> None:
    p = fleetmod.paths(prefix)
    if os.path.isdir("/run/netns"):
        assert not [n for n in os.listdir("/run/netns") if n.startswith(f"{prefix}-")]
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    assert not (procs.pids_with(p["state"] + "/") + procs.pids_with(p["run"] + "/"))
    assert not [d for d in (p["state"], p["run"], p["log"]) if os.path.exists(d)]
    assert fleetmod.leftovers(prefix) == []


@pytest.fixture
def make_fleet():
    made: list[Fleet] = []

    def make() -> Fleet:
        f = Fleet()
        made.append(f)
        return f

    yield make
    for f in made:
        locks = fleet_locks(f.prefix)
        done = run_fleet("down", "--prefix", f.prefix)
        assert done.returncode == 0, f"down left things behind: {done.stderr}"
        assert_nothing_left(f.prefix)
        assert not [path for path in locks if os.path.exists(path)], "down left the agents' bridge lock files"


def fleet_locks(prefix: str) -> list[str]:
    """The bridge lock files the agents of fleet ``prefix`` took
    (/run/dcfleet/locks/net-<netns inode>-<bridge>.lock), found while its
    namespaces exist."""
    names = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    return [path for n in names if n.startswith(f"{prefix}-") for path in netns_locks(n)]


def wait_http(url: str, timeout_s: float = 15.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def call(endpoint: str, method: str, *args, timeout_s: float = 60):
    """Call as the operator would: tcp:// endpoints with the operator's
    CURVE key and the server key the fleet recorded for dcctl."""
    from dcctl.cli import client_keys
    with wire.connect(endpoint, timeout_s=timeout_s, keys=client_keys(endpoint, None, None)) as c:
        return c.call(method, *args)


def test_two_hosts_answer_over_ipc_and_tcp_and_serve_http(make_fleet):
    f = make_fleet()
    done = f.up(2, "--no-hub")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines == [f"export DCCTL_HOST=tcp://{f.addr(1)}:7000",
                     f"# host-1 {f.addr(1)} tcp://{f.addr(1)}:7000",
                     f"# host-2 {f.addr(2)} tcp://{f.addr(2)}:7000"]
    state = f.state()
    assert state["status"] == "up" and state["bridge"] == f"{f.prefix}fleet0" and state["hub"] is None
    assert [h["netns"] for h in state["hosts"]] == [f"{f.prefix}-host-1", f"{f.prefix}-host-2"]
    for i, h in enumerate(state["hosts"], 1):
        assert call(h["ipc"], "_zerorpc_ping")[0] == "pong"
        assert call(f"tcp://{f.addr(i)}:7000", "_zerorpc_ping")[0] == "pong"
        assert call(f"tcp://{f.addr(i)}:7000", "hostinfo")["host"] == f"host-{i}"
        assert os.path.exists(f"/proc/{h['pid']}")

    h1 = f"tcp://{f.addr(1)}:7000"
    name = f"{f.prefix}.web"
    call(h1, "container_create", "busybox", name)
    call(h1, "container_start", name)
    m = call(h1, "container_connection_add", name, "tcp", 80)
    assert m["host_address"] == f.addr(1)
    assert name in wait_http(f"http://{f.addr(1)}:{m['host_port']}/")
    # host-2 reaches host-1's mapped port across the fleet bridge
    peek = subprocess.run(["ip", "netns", "exec", f"{f.prefix}-host-2", "python3", "-c",
                           f"import urllib.request;print(urllib.request.urlopen("
                           f"'http://{f.addr(1)}:{m['host_port']}/', timeout=5).read().decode())"],
                          capture_output=True, text=True, timeout=30)
    assert name in peek.stdout, peek.stderr

    st = run_fleet("status", "--prefix", f.prefix)
    assert st.returncode == 0, st.stdout + st.stderr
    assert st.stdout.count("alive ping ok") == 2
    js = json.loads(run_fleet("status", "--prefix", f.prefix, "--json").stdout)
    assert [(h["alive"], h["ping"]) for h in js["hosts"]] == [(True, True), (True, True)]

    done = run_fleet("down", "--prefix", f.prefix)
    assert done.returncode == 0, done.stderr
    assert_nothing_left(f.prefix)
    assert run_fleet("status", "--prefix", f.prefix).returncode == 1


def test_up_twice_is_refused_and_leaves_the_first_fleet_alone(make_fleet):
    f = make_fleet()
    first = f.up(1, "--no-hub", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) == {**f.state(), "status": "up"}
    again = run_fleet("up", "1", "--prefix", f.prefix, "--fleet-subnet", f.subnet, "--no-hub")
    assert again.returncode != 0 and again.stdout == ""
    assert len(again.stderr.strip().splitlines()) == 1 and f"down --prefix {f.prefix}" in again.stderr
    # another prefix on the same subnet is refused too, and makes nothing
    other = make_fleet()
    clash = run_fleet("up", "1", "--prefix", other.prefix, "--fleet-subnet", f.subnet, "--no-hub")
    assert clash.returncode != 0 and "overlaps" in clash.stderr
    assert fleetmod.leftovers(other.prefix) == []
    assert call(f.state()["hosts"][0]["ipc"], "_zerorpc_ping")[0] == "pong"


def test_down_on_nothing_exits_0():
    prefix = f"{TEST_PREFIX}{random.randbytes(2).hex()[:3]}"
    done = run_fleet("down", "--prefix", prefix)
    assert done.returncode == 0, done.stderr
    assert "no such fleet" in done.stdout and "removed" not in done.stdout.replace("nothing removed", "")
    assert_nothing_left(prefix)


def test_down_without_state_file_finds_everything_by_prefix(make_fleet):
    f = make_fleet()
    assert f.up(1, "--no-hub").returncode == 0
    ipc = f.state()["hosts"][0]["ipc"]
    call(ipc, "container_create", "busybox", "scratch.web")
    call(ipc, "container_start", "scratch.web")
    os.unlink(fleetmod.paths(f.prefix)["state_file"])
    done = run_fleet("down", "--prefix", f.prefix)
    assert done.returncode == 0, done.stderr
    assert_nothing_left(f.prefix)


def test_failed_up_undoes_everything(make_fleet):
    f = make_fleet()
    done = f.up(2, "--no-hub", "--agent-arg=--no-such-flag")
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "--no-such-flag" in done.stderr
    assert_nothing_left(f.prefix)


def test_sigterm_during_up_undoes_everything(make_fleet):
    f = make_fleet()
    proc = subprocess.Popen([FLEET, "up", "2", "--prefix", f.prefix, "--fleet-subnet", f.subnet, "--no-hub"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (f.state() or {}).get("hosts", [{}])[-1].get("pid"):  # agents starting
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.terminate()
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out) == (1, "") and "up failed: interrupted" in err, err
    assert_nothing_left(f.prefix)


@pytest.mark.parametrize("args, code", [(("up", "1", "--prefix", "waytoolongprefix"), 2),
                                        (("up", "9", "--fleet-subnet", "10.211.0.0/28"), 1),
                                        (("up", "1", "--fleet-subnet", "10.211.0.1/24"), 1)])
def test_bad_arguments_make_nothing(make_fleet, args, code):
    f = make_fleet()
    argv = list(args) if "--prefix" in args else [*args, "--prefix", f.prefix]
    done = run_fleet(*argv, "--no-hub")
    assert done.returncode == code and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert fleetmod.leftovers(f.prefix) == []


def test_forward_rule_only_where_the_policy_drops(make_fleet):
    """Run in a namespace of our own (named like a fleet host, so the
    finalizer's down removes it) with FORWARD policy DROP, then ACCEPT."""
    f = make_fleet()
    ns, bridge = f"{f.prefix}-host-99", f"{f.prefix}fleet0"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    ipt = ["ip", "netns", "exec", ns, "iptables", "-w"]
    subprocess.run([*ipt, "-P", "FORWARD", "DROP"], check=True)
    assert fleetmod.ensure_forward_rule(bridge, f.prefix, ns) is True
    assert fleetmod.ensure_forward_rule(bridge, f.prefix, ns) is False  # once only
    rules = subprocess.run([*ipt, "-S", "FORWARD"], capture_output=True, text=True).stdout.splitlines()
    assert [r for r in rules if f"dcfleet:{f.prefix}" in r] == [
        f'-A FORWARD -i {bridge} -o {bridge} -m comment --comment "dcfleet:{f.prefix}" -j ACCEPT']
    fleetmod.remove_forward_rule(bridge, f.prefix, ns)
    rules = subprocess.run([*ipt, "-S", "FORWARD"], capture_output=True, text=True).stdout.splitlines()
    assert rules == ["-P FORWARD DROP"]
    subprocess.run([*ipt, "-P", "FORWARD", "ACCEPT"], check=True)
    assert fleetmod.ensure_forward_rule(bridge, f.prefix, ns) is False


@pytest.mark.skipif(not os.path.exists(os.path.join(REPO, "hub", "main.py")), reason="hub/main.py not written yet")
def test_with_hub(make_fleet):
    f = make_fleet()
    done = f.up(2)
    assert done.returncode == 0, done.stderr
    gw = f"10.211.{f.third}.1"
    assert done.stdout.splitlines()[0] == f"export DCCTL_HOST=tcp://{gw}:7100"
    state = f.state()
    assert state["hub"]["tcp"] == f"tcp://{gw}:7100"
    assert call(state["hub"]["ipc"], "_zerorpc_ping")[0] == "pong"
    assert call(f"tcp://{gw}:7100", "_zerorpc_ping")[0] == "pong"
    st = run_fleet("status", "--prefix", f.prefix)
    assert st.returncode == 0 and st.stdout.count("alive ping ok") == 3, st.stdout
    deadline = time.monotonic() + 30  # the agents register over the fleet bridge
    while True:
        hosts = {h["name"]: h for h in call(f"tcp://{gw}:7100", "hosts")}
        if sorted(hosts) == ["host-1", "host-2"] and all(h["state"] == "alive" for h in hosts.values()):
            break
        assert time.monotonic() < deadline, hosts
        time.sleep(0.5)
    assert [hosts[f"host-{i}"]["endpoint"] for i in (1, 2)] == [f"tcp://{f.addr(i)}:7000" for i in (1, 2)]


def test_with_router(make_fleet):
    """--router: a dc-router in its own namespace, announced for eval; the
    default route domain is <prefix>.test; down removes it and its HAProxy."""
    f = make_fleet()
    done = f.up(1, "--router")
    assert done.returncode == 0, done.stderr
    gw = f.addr(1).rsplit(".", 1)[0]
    assert done.stdout.splitlines()[:2] == [f"export DCCTL_HOST=tcp://{gw}.1:7100", f"export DCF_ROUTER={gw}.5:80"]
    assert all(line.startswith(("export ", "# ")) for line in done.stdout.splitlines())
    state = f.state()
    assert state["route_domain"] == f"{f.prefix}.test" and state["router"]["netns"] == f"{f.prefix}-router"
    st = run_fleet("status", "--prefix", f.prefix)
    assert st.returncode == 0 and st.stdout.count("alive ping ok") == 3, st.stdout
    assert netns_locks(state["hosts"][0]["netns"])  # the agent's bridge lock: down must remove it (make_fleet)
    call(state["hub"]["ipc"], "create_container", "busybox", "lr.web")
    body = wait_http_host(f"http://{gw}.5/", f"lr.web.{f.prefix}.test")
    assert "lr.web" in body
    cfg = os.path.join(state["router"]["state_dir"], "haproxy.cfg")
    assert procs.pids_with(cfg)


def wait_http_host(url: str, host: str, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": host}), timeout=2) as r:
                return r.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_kill_and_start_one_host_keeps_its_containers_and_arguments(make_fleet):
    """``ops/fleet kill HOST`` SIGKILLs that agent only (its container runs
    on); ``ops/fleet start HOST`` runs it again with up's agent arguments."""
    f = make_fleet()
    done = f.up(2, "--no-hub", "--agent-arg=--label=zone=obs")
    assert done.returncode == 0, done.stderr
    h1, h2 = f.state()["hosts"]
    name = f"{f.prefix}.k"
    call(h1["ipc"], "container_create", "busybox", name)
    call(h1["ipc"], "container_start", name)
    old = h1["pid"]

    k = run_fleet("kill", "host-1", "--prefix", f.prefix, "--json")
    assert k.returncode == 0, k.stderr
    assert json.loads(k.stdout) == {"host": "host-1", "pid": old, "killed": True, "kind": "host"}
    assert not procs.alive(old) and not fleetmod.ping(h1["ipc"], timeout_s=1)
    assert fleetmod.ping(h2["ipc"]) and procs.alive(h2["pid"])  # the other host is untouched
    lxc = subprocess.run(["nsenter", f"--net=/run/netns/{h1['netns']}", "lxc-info", "-P", h1["lxc_path"],
                          "-n", name, "-s"], capture_output=True, text=True)
    assert "RUNNING" in lxc.stdout, lxc.stdout + lxc.stderr
    again = run_fleet("kill", "1", "--prefix", f.prefix, "--json")  # N names host-N; a dead agent is no error
    assert again.returncode == 0 and json.loads(again.stdout)["killed"] is False

    s = run_fleet("start", "host-1", "--prefix", f.prefix, "--json")
    assert s.returncode == 0, s.stderr
    out = json.loads(s.stdout)
    assert out["started"] is True and out["kind"] == "host" and out["pid"] != old
    assert f.state()["hosts"][0]["pid"] == out["pid"]
    assert "--label=zone=obs" in [w.decode() for w in procs.cmdline(out["pid"])]
    assert [c["state"] for c in call(h1["ipc"], "container_ls") if c["name"] == name] == ["running"]
    assert json.loads(run_fleet("start", "host-1", "--prefix", f.prefix, "--json").stdout)["started"] is False

    bad = run_fleet("kill", "host-9", "--prefix", f.prefix)
    assert bad.returncode == 1 and "no host 'host-9'" in bad.stderr
