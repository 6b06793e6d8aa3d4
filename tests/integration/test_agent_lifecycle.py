"""The host agent end to end on real LXC: lifecycle, exec, port mappings,
limits, enter, bad input, and leaving nothing behind."""
from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import pytest

from dcctl import errors
from tests.agentproc import REPO
from tests.terminal import run_in_pty

pytestmark = pytest.mark.lxc


def snapshot(agent) -> dict:
    """Everything a failed or completed call could have left behind."""
    lxc_dirs = sorted(os.listdir(agent.lxc_path)) if os.path.isdir(agent.lxc_path) else []
    state = sorted(os.listdir(os.path.join(agent.state_dir, "containers")))
    # this agent's veths: the ports of its bridge (other tests run beside us)
    links = subprocess.run(["ip", "-o", "link", "show", "master", agent.bridge], capture_output=True, text=True).stdout
    veths = sorted(ln.split(":")[1].strip().split("@")[0] for ln in links.splitlines() if ": dcv" in ln)
    rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
    ours = sorted(ln for ln in rules.splitlines() if f"DCF-{agent.bridge}" in ln)
    lxcls = subprocess.run(["lxc-ls", "-P", agent.lxc_path], capture_output=True, text=True).stdout.split()
    return {"ls": agent.call("container_ls"), "net": agent.call("network_ls"), "lxc_dirs": lxc_dirs,
            "state": state, "veths": veths, "rules": ours, "lxc_ls": sorted(lxcls)}


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


def wait_http(url: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return http_get(url, 2)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_busybox_image_is_there(agent):
    images = agent.call("image_ls")
    assert [i["name"] for i in images] == ["busybox"]
    assert images[0]["exposed_ports"] == [{"proto": "tcp", "port": 80}]


def test_results_have_the_documented_keys(agent):
    """container_create/start/stop answer with the container_ls row (as
    their docstrings say), ops_facts with the keys its docstring names."""
    name = "docs.keys"
    made = agent.call("container_create", "busybox", name)
    row = lambda: next(c for c in agent.call("container_ls") if c["name"] == name)  # noqa: E731
    assert set(made) == set(row()) and made["state"] == "stopped"
    started = agent.call("container_start", name)
    assert set(started) == set(row()) and started["state"] == "running"
    stopped = agent.call("container_stop", name)
    assert set(stopped) == set(row()) and stopped["state"] == "stopped"
    assert "events" not in made and "usage" not in started  # not container_inspect's dict
    facts = agent.call("ops_facts")
    assert set(facts) == {"host", "os", "kernel", "python", "agent_version", "lxc_version", "lxc_path",
                          "bridge", "subnet"}
    assert facts["lxc_version"] and facts["lxc_version"][0].isdigit()


def test_full_lifecycle_leaves_nothing(agent):
    before = snapshot(agent)
    c = agent.call("container_create", "busybox", "jerome.awesome.web")
    assert c["state"] == "stopped" and c["address"].startswith(agent.subnet.rsplit(".", 2)[0])
    c = agent.call("container_start", "jerome.awesome.web")
    assert c["state"] == "running" and c["pid"]
    out = agent.call("container_exec", "jerome.awesome.web", ["hostname"])
    assert out == {**out, "exit_code": 0, "stdout": b"jerome.awesome.web\n"}
    hosts = agent.call("container_exec", "jerome.awesome.web", ["cat", "/etc/hosts"])["stdout"].decode()
    assert f"{c['address']} jerome.awesome.web" in " ".join(hosts.split())
    started = time.monotonic()
    c = agent.call("container_stop", "jerome.awesome.web", 120.0)
    assert time.monotonic() - started < 60, "busybox must stop on the halt signal, not be killed after 120 s"
    assert c["state"] == "stopped"
    agent.call("container_destroy", "jerome.awesome.web")
    assert snapshot(agent) == before


def test_port_mapping_serves_http_on_localhost(agent):
    agent.call("container_create", "busybox", "web.http")
    agent.call("container_start", "web.http")
    m = agent.call("container_connection_add", "web.http", "tcp", 80)
    lo, hi = agent.port_range
    assert lo <= m["host_port"] <= hi and m["dynamic"] is True
    page = wait_http(f"http://127.0.0.1:{m['host_port']}/")
    assert "web.http" in page
    net = agent.call("network_ls")
    assert {"container": "web.http", "proto": "tcp", "host_port": m["host_port"],
            "container_address": m["container_address"], "container_port": 80} in net["mappings"]
    # the port stays the same across stop/start
    agent.call("container_stop", "web.http", 5.0)
    agent.call("container_start", "web.http")
    assert agent.call("container_inspect", "web.http")["ports"][0]["host_port"] == m["host_port"]
    assert "web.http" in wait_http(f"http://127.0.0.1:{m['host_port']}/")
    agent.call("container_connection_rm", "web.http", "tcp", 80)
    with pytest.raises(OSError):
        http_get(f"http://127.0.0.1:{m['host_port']}/", 2)


def test_explicit_port_is_never_picked_dynamically(agent):
    lo, hi = agent.port_range
    agent.call("container_create", "busybox", "web.explicit")
    m = agent.call("container_connection_add", "web.explicit", "tcp", 80, lo)
    assert m["host_port"] == lo and m["dynamic"] is False
    with pytest.raises(errors.PortInUse):
        agent.call("container_connection_add", "web.explicit", "tcp", 8080, lo)
    ports = {agent.call("container_connection_add", "web.explicit", "tcp", p)["host_port"] for p in range(81, 101)}
    assert lo not in ports and len(ports) == 20


def test_exec_carries_megabytes_exactly(agent):
    agent.call("container_create", "busybox", "exec.big")
    agent.call("container_start", "exec.big")
    script = "head -c 5242880 /dev/zero | tr '\\0' 'a'; head -c 1048576 /dev/zero | tr '\\0' 'b' >&2; exit 3"
    out = agent.call("container_exec", "exec.big", ["sh", "-c", script])
    assert out["exit_code"] == 3
    assert out["stdout"] == b"a" * 5242880 and out["stderr"] == b"b" * 1048576
    assert not out["stdout_truncated"]
    capped = agent.call("container_exec", "exec.big", ["sh", "-c", script], {"max_output_bytes": 1000})
    assert capped["stdout"] == b"a" * 1000 and capped["stdout_truncated"]


def test_exec_returns_when_the_command_exits_and_its_background_child_lives_on(agent):
    agent.call("container_create", "busybox", "exec.bg")
    agent.call("container_start", "exec.bg")
    # the child holds stdout and stderr open for 1000 s; the call ends with sh
    out = agent.call("container_exec", "exec.bg", ["sh", "-c", "sleep 1000 & echo started"])
    assert out["exit_code"] == 0 and out["stdout"] == b"started\n" and not out["timed_out"]
    assert out["stdout_incomplete"] and out["stderr_incomplete"]
    assert out["duration_s"] < 60  # not the sleep's 1000 s
    ps = agent.call("container_exec", "exec.bg", ["ps", "-o", "args"])["stdout"].decode()
    assert "sleep 1000" in ps, ps
    # a command whose streams close with it is read to the end, flags off
    out = agent.call("container_exec", "exec.bg", ["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo ok; exit 5"])
    assert out["exit_code"] == 5 and out["stdout"] == b"ok\n"
    assert not out["stdout_incomplete"] and not out["stderr_incomplete"]


def test_eth0_has_the_subnets_broadcast_address(agent):
    c = agent.call("container_create", "busybox", "net.brd")
    agent.call("container_start", "net.brd")
    text = agent.call("container_exec", "net.brd", ["ip", "-4", "addr", "show", "eth0"])["stdout"].decode()
    prefix = agent.subnet.rsplit(".", 1)[0]
    assert f"inet {c['address']}/24 brd {prefix}.255 " in text, text


def test_an_imported_rootfs_gets_its_hostname_rendered(agent, tmp_path):
    # a rootfs exported from the busybox image carries the templates' literal
    # text; this one also sets its hostname from /etc/hostname at boot, as
    # systemd does
    busybox = next(i for i in agent.call("image_ls") if i["name"] == "busybox")
    layer = os.path.join(agent.state_dir, "images", "layers", busybox["layers"][-1])
    root = tmp_path / "rootfs"
    subprocess.run(["cp", "-a", layer, str(root)], check=True)
    assert (root / "etc/hostname").read_text() == "{{ hostname }}\n"
    with open(root / "etc/init.d/rcS", "r+") as f:
        text = f.read().replace("exit 0\n", "hostname -F /etc/hostname\nexit 0\n")
        f.seek(0)
        f.write(text)
    tar = tmp_path / "rootfs.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tar), "."], check=True)
    agent.call("image_import", str(tar), "imported.bb", {"command": ["httpd", "-f", "-p", "80", "-h", "/var/www"],
                                                          "stop_signal": "SIGUSR1"})
    try:
        c = agent.call("container_create", "imported.bb", "imp.host")
        agent.call("container_start", "imp.host")
        assert agent.call("container_exec", "imp.host", ["hostname"])["stdout"] == b"imp.host\n"
        assert agent.call("container_exec", "imp.host", ["cat", "/etc/hostname"])["stdout"] == b"imp.host\n"
        hosts = agent.call("container_exec", "imp.host", ["cat", "/etc/hosts"])["stdout"].decode()
        assert f"{c['address']}\timp.host" in hosts
        ifaces = agent.call("container_exec", "imp.host", ["cat", "/etc/network/interfaces"])["stdout"].decode()
        assert "{{" not in ifaces and f"address {c['address']}/24" in ifaces
    finally:
        agent.call("container_destroy", "imp.host", True)
        agent.call("image_rm", "imported.bb")


def test_memory_limit_is_applied_in_the_cgroup(agent):
    agent.call("container_create", "busybox", "mem.limited", {"memory_bytes": 64 << 20, "cpus": 0.5})
    agent.call("container_start", "mem.limited")
    usage = agent.call("container_inspect", "mem.limited")["usage"]
    assert usage["memory_limit_bytes"] == 64 << 20
    assert usage["memory_bytes"] > 0
    info = agent.call("hostinfo")
    assert info["capacity"]["memory_reserved_bytes"] >= 64 << 20
    row = next(c for c in info["containers"] if c["name"] == "mem.limited")
    assert row["memory_limit_bytes"] == 64 << 20


def test_hostinfo_shape(agent):
    info = agent.call("hostinfo")
    assert info["metrics"]["cpu_count"] >= 1 and info["metrics"]["memory_total_bytes"] > 0
    cap = info["capacity"]
    assert cap["memory_unreserved_bytes"] == cap["memory_reservable_bytes"] - cap["memory_reserved_bytes"]
    assert cap["container_slots_free"] == cap["container_slots"] - cap["containers"]


def test_command_and_env_from_create(agent):
    agent.call("container_create", "busybox", "env.cmd",
               {"env": {"GREETING": "hi there"}, "command": "echo \"$GREETING\" > /tmp/out; sleep 1000"})
    agent.call("container_start", "env.cmd")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        out = agent.call("container_exec", "env.cmd", ["cat", "/tmp/out"])
        if out["exit_code"] == 0:
            break
        time.sleep(0.1)
    assert out["stdout"] == b"hi there\n"
    env = agent.call("container_exec", "env.cmd", ["env"])["stdout"].decode()
    assert "GREETING=hi there" in env


BAD_CALLS = [
    (("container_create", "busybox", "a b"), errors.InvalidArgument),
    (("container_create", "busybox", "a/b"), errors.InvalidArgument),
    (("container_create", "busybox", ".."), errors.InvalidArgument),
    (("container_create", "busybox", ""), errors.InvalidArgument),
    (("container_create", "busybox", "x" * 65), errors.InvalidArgument),
    (("container_create", "nosuchimage", "ok.name"), errors.ImageNotFound),
    (("container_create", "busybox@ffff0000", "ok.name"), errors.ImageNotFound),
    (("container_create", "busybox", "ok.name", {"memory_bytes": 5}), errors.InvalidArgument),
    (("container_create", "busybox", "ok.name", {"bogus": 1}), errors.InvalidArgument),
    (("container_create", "busybox"), errors.InvalidArgument),
    (("container_create", 1, 2, 3, 4), errors.InvalidArgument),
    (("container_start", "nosuch"), errors.NoSuchContainer),
    (("container_stop", "nosuch"), errors.NoSuchContainer),
    (("container_destroy", "nosuch"), errors.NoSuchContainer),
    (("container_exec", "nosuch", ["true"]), errors.NoSuchContainer),
    (("container_connection_add", "nosuch", "tcp", 80), errors.NoSuchContainer),
    (("no_such_method",), errors.NoSuchMethod),
]


def test_bad_input_is_typed_and_changes_nothing(agent):
    agent.call("container_create", "busybox", "bad.input")
    agent.call("container_start", "bad.input")
    agent.call("container_connection_add", "bad.input", "tcp", 80)
    before = snapshot(agent)
    calls = BAD_CALLS + [
        (("container_create", "busybox", "bad.input"), errors.ContainerExists),
        (("container_start", "bad.input"), errors.ContainerRunning),
        (("container_destroy", "bad.input"), errors.ContainerRunning),
        (("container_exec", "bad.input", ["/no/such/binary"]), errors.CommandNotFound),
        (("container_exec", "bad.input", "echo a\x00b"), errors.InvalidArgument),  # was InternalError
        (("container_connection_add", "bad.input", "sctp", 80), errors.InvalidArgument),
        (("container_connection_add", "bad.input", "tcp", 0), errors.InvalidArgument),
        (("container_connection_add", "bad.input", "tcp", 70000), errors.InvalidArgument),
        (("container_connection_add", "bad.input", "tcp", 80), errors.PortInUse),
        (("container_connection_add", "bad.input", "tcp", 81, before["net"]["mappings"][0]["host_port"]),
         errors.PortInUse),
        (("container_connection_add", "bad.input", "tcp", "80"), errors.InvalidArgument),
        (("container_connection_rm", "bad.input", "udp", 80), errors.NoSuchPortMapping),
        (("image_rm", "busybox"), errors.ImageInUse),
        (("image_import", "relative/path.tar", "x"), errors.InvalidArgument),
    ]
    for call, exc in calls:
        with pytest.raises(exc):
            agent.call(*call)
    assert snapshot(agent) == before
    agent.call("container_stop", "bad.input", 5.0)
    stopped = snapshot(agent)
    with pytest.raises(errors.ContainerNotRunning):
        agent.call("container_stop", "bad.input")
    with pytest.raises(errors.ContainerNotRunning):
        agent.call("container_exec", "bad.input", ["true"])
    assert snapshot(agent) == stopped


def test_dcctl_against_the_agent(agent):
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": agent.endpoint}

    def dcctl(*args):
        return subprocess.run(["python3", "-m", "dcctl.cli", *args], capture_output=True, env=env, timeout=60)

    assert dcctl("container_create", "busybox", "cli.web", "--memory-bytes", "64M").returncode == 0
    assert dcctl("container_start", "cli.web").returncode == 0
    done = dcctl("container_exec", "cli.web", "cat", "/etc/hostname")
    assert done.returncode == 0 and done.stdout == b"cli.web\n"
    assert dcctl("container_exec", "cli.web", "sh", "-c", "exit 4").returncode == 4
    done = dcctl("container_start", "cli.web")
    assert done.returncode == 1 and done.stderr.decode().startswith("dcctl: ContainerRunning:")
    done = dcctl("--json", "container_connection_add", "cli.web", "tcp", "80")
    assert done.returncode == 0 and b'"host_port"' in done.stdout
    assert b"cli.web" in dcctl("network_ls").stdout
    assert b"cli.web" in dcctl("container_ls").stdout
    assert dcctl("hostinfo").returncode == 0


def test_stock_zerorpc_cli_and_dcctl_call_reach_the_agent(agent):
    from tests import zerorpc39
    try:
        zerorpc39.ensure_zerorpc39()
    except zerorpc39.Python39Missing as exc:
        pytest.skip(str(exc))
    listing = zerorpc39.stock_zerorpc(agent.endpoint)
    assert listing.returncode == 0, listing.stderr
    assert "container_create" in listing.stdout and "Create a container from an image" in listing.stdout
    done = zerorpc39.stock_zerorpc(agent.endpoint, "container_ls")
    assert done.returncode == 0, done.stderr
    done = zerorpc39.stock_zerorpc(agent.endpoint, "hostinfo")
    assert done.returncode == 0 and "capacity" in done.stdout
    done = zerorpc39.stock_zerorpc(agent.endpoint, "container_start", "nosuch")
    assert done.returncode != 0 and "NoSuchContainer" in done.stderr
    env = {**os.environ, "PYTHONPATH": REPO}
    for args in ([], ["hostinfo"], ["container_ls"]):
        done = subprocess.run(["python3", "-m", "dcctl.cli", "call", agent.endpoint, *args],
                              capture_output=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr
    assert b"container_connection_add" in subprocess.run(
        ["python3", "-m", "dcctl.cli", "call", agent.endpoint], capture_output=True, env=env).stdout


@pytest.mark.slow
def test_debian_image_build_boots_with_systemd(agent, tmp_path):
    """image_build debian (debootstrap minbase from apt's mirror), then a
    container from it boots, runs systemd, execs, and stops gracefully; its
    OCI export, unpacked by umoci, is the store's tree (built once, checked
    here: tests/integration/test_oci_images.py)."""
    manifest = agent.call("image_build", "debian", "debian", timeout_s=1800)
    try:
        assert manifest["stop_signal"] == "SIGRTMIN+3"
        from tests.integration.test_oci_images import check_debian_export
        check_debian_export(agent, "debian", str(tmp_path))
        agent.call("container_create", "debian", "deb.box")
        agent.call("container_start", "deb.box")
        out = agent.call("container_exec", "deb.box", ["cat", "/etc/os-release"])
        assert b"Debian" in out["stdout"]
        assert agent.call("container_exec", "deb.box", ["hostname"])["stdout"] == b"deb.box\n"
        started = time.monotonic()
        agent.call("container_stop", "deb.box", 20.0)
        assert time.monotonic() - started < 20
        agent.call("container_destroy", "deb.box")
    finally:
        try:
            agent.call("container_destroy", "deb.box", True)
        except errors.NoSuchContainer:
            pass
        agent.call("image_rm", "debian")


def test_container_enter_gives_an_interactive_tty(agent):
    agent.call("container_create", "busybox", "enter.me")
    agent.call("container_start", "enter.me")
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": agent.endpoint, "TERM": "xterm"}
    code, screen = run_in_pty(["python3", "-m", "dcctl.cli", "container_enter", "enter.me"], env,
                               [b"hostname\r", b"tty\r", b"exit 7\r"])
    text = screen.decode(errors="replace")
    assert "enter.me" in text, text
    assert "/dev/pts/" in text, text  # a real terminal inside the container
    assert code == 7, text


def test_container_enter_with_piped_input_runs_it_and_ends(agent):
    agent.call("container_create", "busybox", "enter.pipe")
    agent.call("container_start", "enter.pipe")
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": agent.endpoint}
    done = subprocess.run(["python3", "-m", "dcctl.cli", "container_enter", "enter.pipe"], input=b"hostname\n",
                          capture_output=True, env=env, timeout=30)
    assert done.returncode == 0, done.stderr
    assert b"enter.pipe" in done.stdout
    # nothing is left running in the container once the session ends
    time.sleep(1)
    ps = agent.call("container_exec", "enter.pipe", ["ps"])["stdout"].decode()
    assert "/bin/sh -l" not in ps, ps
