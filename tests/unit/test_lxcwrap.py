"""lxcwrap parsing, config rendering and cgroup detection, on recorded data."""
import os

import pytest

from lxcwrap import cgroup, lxc
from lxcwrap.config import ContainerConfig

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "lxc")


def _read(name):
    with open(os.path.join(DATA, name)) as f:
        return f.read()


def test_detect_hybrid_host_puts_memory_on_v1():
    layout = cgroup.detect(_read("mountinfo-hybrid.txt"))
    assert layout.v1["memory"] == "/sys/fs/cgroup/memory"
    assert layout.v2 == "/sys/fs/cgroup/unified"


def test_detect_v2_only_host():
    layout = cgroup.detect(_read("mountinfo-v2.txt"))
    assert layout.v1 == {}
    assert layout.v2 == "/sys/fs/cgroup"
    assert layout.version("memory") == 2


def test_limit_keys_follow_the_controller_version():
    v1 = cgroup.Layout({"memory": "/m", "cpu": "/c"}, "/u", frozenset({"hugetlb"}))
    v2 = cgroup.Layout({}, "/sys/fs/cgroup", frozenset({"memory", "cpu"}))
    assert cgroup.limit_config(v1, 64 << 20, 0.5, 512) == [
        ("lxc.cgroup.memory.limit_in_bytes", str(64 << 20)),
        ("lxc.cgroup.cpu.cfs_period_us", "100000"), ("lxc.cgroup.cpu.cfs_quota_us", "50000"),
        ("lxc.cgroup.cpu.shares", "512")]
    keys = dict(cgroup.limit_config(v2, 64 << 20, 0.5, 1024))
    assert keys["lxc.cgroup2.memory.max"] == str(64 << 20)
    assert keys["lxc.cgroup2.cpu.max"] == "50000 100000"
    assert 30 < int(keys["lxc.cgroup2.cpu.weight"]) < 50  # runc's conversion of 1024
    assert not any(k.startswith("lxc.cgroup.") for k in keys)


def _cfg(**kw):
    base = dict(name="a.b", hostname="a.b", lower_dirs=["/l/top", "/l/bottom"], upper_dir="/c/a.b/delta0",
                bridge="br0", veth_name="dcv0123", address="10.0.0.5", prefixlen=24, gateway="10.0.0.1",
                console_log="/c/console.log", lxc_log="/c/lxc.log", halt_signal="SIGUSR1")
    base.update(kw)
    return ContainerConfig(**base)


def test_config_renders_overlay_network_and_unconfined():
    text = _cfg(memory_bytes=1 << 27).render(cgroup.Layout({"memory": "/m"}, None, frozenset()))
    assert "lxc.rootfs.path = overlay:/l/top:/l/bottom:/c/a.b/delta0\n" in text
    assert "lxc.apparmor.profile = unconfined\n" in text
    assert "lxc.net.0.ipv4.address = 10.0.0.5/24 10.0.0.255\n" in text
    assert "lxc.net.0.veth.pair = dcv0123\n" in text
    assert "lxc.signal.halt = SIGUSR1\n" in text
    assert "lxc.cgroup.memory.limit_in_bytes = 134217728\n" in text


def test_config_gives_the_subnets_broadcast_address():
    layout = cgroup.Layout({}, None, frozenset())
    assert "lxc.net.0.ipv4.address = 10.220.1.2/24 10.220.1.255\n" in _cfg(address="10.220.1.2").render(layout)
    text = _cfg(address="172.16.5.9", prefixlen=20).render(layout)
    assert "lxc.net.0.ipv4.address = 172.16.5.9/20 172.16.15.255\n" in text
    assert "lxc.net.0.ipv4.address = 10.0.0.5/32\n" in _cfg(prefixlen=32).render(layout)


def test_config_keeps_docker_caps_and_device_rules_for_the_devices_hierarchy():
    v1 = _cfg().render(cgroup.Layout({"devices": "/d"}, None, frozenset()))
    caps = [ln for ln in v1.splitlines() if ln.startswith("lxc.cap.")]
    assert caps == ["lxc.cap.keep = chown dac_override fsetid fowner mknod net_raw setgid setuid setfcap "
                    "setpcap net_bind_service sys_chroot kill audit_write sys_boot"]
    assert "lxc.cgroup.devices.deny = a\n" in v1 and "lxc.cgroup.devices.allow = b *:* m\n" in v1
    assert "lxc.cgroup.devices.allow = c 1:3 rwm\n" in v1 and "b 254" not in v1
    v2 = _cfg(tmpfs_dirs=("/tmp", "/run"), tmpfs_size_bytes={"/tmp": 1 << 28, "/run": 1 << 26}).render(
        cgroup.Layout({}, "/sys/fs/cgroup", frozenset({"memory"})))
    assert "lxc.cgroup2.devices.deny = a\n" in v2 and "lxc.cgroup.devices" not in v2
    assert "lxc.mount.entry = tmpfs tmp tmpfs mode=1777,nosuid,nodev,size=268435456,create=dir 0 0\n" in v2
    assert "lxc.mount.entry = tmpfs run tmpfs mode=0755,nosuid,nodev,size=67108864,create=dir 0 0\n" in v2


@pytest.mark.parametrize("sizes", [{}, {"/tmp": 1 << 20}, {"/tmp": 1 << 20, "/dev/shm": 0},
                                   {"/tmp": 1 << 20, "/dev/shm": None}, {"/tmp": 1 << 20, "/dev/shm": "64M"}])
def test_every_tmpfs_needs_a_size(sizes):
    """A tmpfs without size= may fill half the host's RAM: the config refuses one."""
    with pytest.raises(ValueError, match="needs a size"):
        _cfg(tmpfs_dirs=("/tmp", "/dev/shm"), tmpfs_size_bytes=sizes).render(cgroup.Layout({}, None, frozenset()))


def test_pids_limit_key_follows_the_pids_controller():
    v1 = cgroup.Layout({"memory": "/m", "pids": "/sys/fs/cgroup/pids"}, "/u", frozenset())
    v2 = cgroup.Layout({}, "/sys/fs/cgroup", frozenset({"memory", "pids"}))
    assert cgroup.limit_config(v1, None, None, None, 4096) == [("lxc.cgroup.pids.max", "4096")]
    assert cgroup.limit_config(v2, None, None, None, 50) == [("lxc.cgroup2.pids.max", "50")]
    assert "lxc.cgroup.pids.max = 64\n" in _cfg(pids_limit=64).render(v1)
    # no pids controller: no key (LXC would refuse to start the container); none without a limit
    assert cgroup.limit_config(cgroup.Layout({"memory": "/m"}, "/u", frozenset()), None, None, None, 64) == []
    assert cgroup.limit_config(v1, None, None, None, None) == []
    assert cgroup.detect(_read("mountinfo-hybrid.txt")).has("pids")
    assert not cgroup.Layout({"memory": "/m"}, "/u", frozenset({"memory"})).has("pids")


def test_config_refuses_injected_newlines():
    with pytest.raises(ValueError):
        _cfg(hostname="x\nlxc.apparmor.profile = evil").render(cgroup.Layout({}, None, frozenset()))


def test_parse_ls_and_info():
    text = "NAME        STATE   PID  \nweb.a       RUNNING 4242 \nweb.b       STOPPED -    \n"
    assert lxc.parse_ls(text) == [{"name": "web.a", "state": "RUNNING", "pid": 4242},
                                  {"name": "web.b", "state": "STOPPED", "pid": None}]
    assert lxc.parse_ls(_read("ls-empty.txt")) == []
    assert lxc.parse_info("State:          RUNNING\nPID:            3468\n") == {"state": "RUNNING", "pid": 3468}
    assert lxc.parse_info("State:          STOPPED\n") == {"state": "STOPPED", "pid": None}


def test_missing_container_maps_to_lxc_not_found():
    from lxcwrap import errors
    from lxcwrap.run import Completed

    def recorded(argv, timeout_s=0, **kw):
        return Completed(tuple(argv), 1, b"", _read("info-missing.txt").encode())

    with pytest.raises(errors.LxcNotFound):
        lxc.Lxc("/tmp", run=recorded).info("nope")


def test_attach_argv_is_a_list_with_clear_env():
    argv = lxc.Lxc("/p").attach_argv("c", ["sh", "-c", "echo $X; rm -rf /"], {"X": "1; reboot"})
    assert argv[:6] == ["lxc-attach", "-P", "/p", "-n", "c", "--clear-env"]
    assert argv[-4:] == ["--", "sh", "-c", "echo $X; rm -rf /"]
    assert "X=1; reboot" in argv
    with pytest.raises(ValueError):
        lxc.Lxc("/p").attach_argv("c", ["true"], {"BAD-KEY": "x"})


def test_version_through_the_run_seam():
    from lxcwrap.run import Completed, ToolNotFound

    def recorded(argv, timeout_s=0, **kw):
        assert list(argv) == ["lxc-start", "--version"]
        return Completed(tuple(argv), 0, b"5.0.2\n", b"")

    def missing(argv, timeout_s=0, **kw):
        raise ToolNotFound("lxc-start: not installed", argv)

    assert lxc.Lxc("/p", run=recorded).version() == "5.0.2"
    assert lxc.Lxc("/p", run=missing).version() is None


def test_exec_goes_through_the_spawner_seam():
    """lxc-attach's recorded failure for a missing command, replayed by a
    real process that the spawner seam starts in its place."""
    from lxcwrap import errors, spawn

    seen = []

    def replay(stderr: bytes, code: int):
        def spawner(argv, env, **kw):
            seen.append(list(argv))
            script = f"printf '%s' '{stderr.decode()}' >&2; exit {code}"
            return spawn.Child(["/bin/sh", "-c", script], {"PATH": "/usr/bin:/bin"}, **kw)
        return spawner

    missing = b"lxc-attach: web: attach.c: lxc_attach_run_command: 1841 Failed to exec \"nope\"\n"
    with pytest.raises(errors.LxcExecNotFound, match="'nope'"):
        lxc.Lxc("/p", spawner=replay(missing, 127)).exec("web", ["nope"], timeout_s=10)
    assert seen[0][:5] == ["lxc-attach", "-P", "/p", "-n", "web"] and seen[0][-2:] == ["--", "nope"]
    stopped = b"lxc-attach: web: attach.c: get_attach_context: 405 Connection refused - Failed to get init pid\n"
    with pytest.raises(errors.LxcNotRunning):
        lxc.Lxc("/p", spawner=replay(stopped, 1)).exec("web", ["true"], timeout_s=10)


def test_lxc_owns_the_container_dir(tmp_path):
    tools = lxc.Lxc(str(tmp_path))
    upper = tools.prepare("a.b")
    assert upper == str(tmp_path / "a.b" / "delta0") and os.path.isdir(tmp_path / "a.b" / "olwork")
    with pytest.raises(FileExistsError):
        tools.prepare("a.b")
    assert not tools.has_config("a.b")
    path = tools.write_config("a.b", _cfg(upper_dir=upper), cgroup.Layout({}, None, frozenset()))
    assert tools.has_config("a.b") and open(path).read().startswith("# Written by dcfleet")
    assert tools.destroy("a.b") is True and os.listdir(tmp_path) == []
    assert tools.destroy("a.b") is False


def test_blocking_runner_prefixes_and_reports_like_run():
    from lxcwrap import errors
    from lxcwrap.run import ToolNotFound, blocking_runner

    # the prefix stands in for nsenter: a shell that answers as lxc-stop does for a stopped container
    answer = blocking_runner(["/bin/sh", "-c", 'echo "$0 $*" >&1; echo "$1 is not running" >&2; exit 2'])
    with pytest.raises(errors.LxcNotRunning):
        lxc.Lxc("/p", run=answer).stop("web", kill=True)
    done = answer(["lxc-stop", "-P", "/p", "-n", "web", "-k"], 10)
    assert done.argv == ("lxc-stop", "-P", "/p", "-n", "web", "-k") and done.returncode == 2
    assert done.stdout_text == "lxc-stop -P /p -n web -k\n"
    with pytest.raises(ToolNotFound):
        blocking_runner()(["/nonexistent/lxc-stop"], 10)


def test_destroy_removes_a_directory_that_something_still_writes_into(tmp_path):
    """The container's monitor can still append to its log as lxc-stop -k
    returns: a file made during the removal must not leave the directory
    (rmtree's "Directory not empty")."""
    import threading
    import time

    lx = lxc.Lxc(str(tmp_path))
    cdir = tmp_path / "web"
    for i in range(200):
        (cdir / f"sub{i % 20}").mkdir(parents=True, exist_ok=True)
        (cdir / f"sub{i % 20}" / f"f{i}").write_bytes(b"x" * 100)
    stop = time.monotonic() + 0.3

    def writer():
        n = 0
        while time.monotonic() < stop:
            try:
                (cdir / f"web.log.{n}").write_bytes(b"late line\n")
            except OSError:
                pass
            n += 1
            time.sleep(0.002)

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.01)
        assert lx.destroy("web")
    finally:
        t.join()
    # whatever the writer made after the last removal went with a later attempt, or none was left
    assert not cdir.exists() or lx.destroy("web")
    assert not cdir.exists()


def test_stop_is_done_in_process_only_with_lxcwraps_own_runner(tmp_path):
    """Lxc.stop kills through cgroup.kill only when the tools would have
    run here as ourselves: an injected runner (a recording, nsenter, a
    hollow agent's) gets lxc-stop as before."""
    from lxcwrap import direct
    from lxcwrap.run import hollow_run

    assert lxc.Lxc(str(tmp_path)).direct is True
    assert lxc.Lxc(str(tmp_path), run=hollow_run).direct is False
    assert lxc.Lxc(str(tmp_path), run=hollow_run, direct=True).direct is True
    seen = []

    def recorded(argv, timeout_s=0, **kw):
        seen.append(list(argv))
        return hollow_run(argv, timeout_s)

    lxc.Lxc(str(tmp_path), run=recorded).stop("web", kill=True)
    assert seen == [["lxc-stop", "-P", str(tmp_path), "-n", "web", "-k"]]
    # no pid file, or one that is not a number, or names no LXC monitor: not ours
    (tmp_path / "web").mkdir()
    assert direct.monitor(str(tmp_path), "web") is None
    (tmp_path / "web" / "init.pid").write_text("garbage\n")
    assert direct.monitor(str(tmp_path), "web") is None
    (tmp_path / "web" / "init.pid").write_text(f"{os.getpid()}\n")
    assert direct.monitor(str(tmp_path), "web") is None


def test_halt_signal_is_read_from_the_config(tmp_path):
    import signal

    from lxcwrap import direct

    cfg = tmp_path / "config"
    cfg.write_text("lxc.uts.name = web\n")
    assert direct.halt_signal(str(cfg)) == signal.SIGPWR  # LXC's default
    cfg.write_text("lxc.signal.halt = SIGUSR1\nlxc.signal.halt = SIGRTMIN+3\n")
    assert direct.halt_signal(str(cfg)) == signal.SIGRTMIN + 3  # the last one counts, as for LXC
    cfg.write_text("lxc.signal.halt = SIGWHAT\n")
    assert direct.halt_signal(str(cfg)) is None
    assert direct.halt_signal(str(tmp_path / "missing")) is None
