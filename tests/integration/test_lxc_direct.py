"""lxcwrap's in-process stop (lxcwrap.direct) on real LXC: the kill through
``cgroup.kill``, the graceful stop through a pidfd, the wait on the
monitor's pidfd, and what each leaves behind (nothing).  The containers are
made by a real agent; the stops run here through ``Lxc`` with a runner that
fails the test if any LXC tool is started."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from dcctl import procs
from lxcwrap import cgroup, direct, errors
from lxcwrap.lxc import LOCK_ROOT, Lxc
from lxcwrap.run import run

pytestmark = pytest.mark.lxc


def no_tool(argv, timeout_s=0, **kw):
    raise AssertionError(f"a tool ran: {argv}")


def running(agent, name: str) -> dict:
    """Start ``name`` and return what must be gone after its stop."""
    agent.call("container_create", "busybox", name)
    agent.call("container_start", name)
    # a process attached from outside, in the .lxc sub-cgroup (lxc/lxc#3373), that outlives its exec
    out = agent.call("container_exec", name, ["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
    assert out["exit_code"] == 0
    layout = cgroup.detect()
    mon = direct.monitor(agent.lxc_path, name)
    assert mon is not None, "the pid file names the container's monitor"
    with mon:
        init_pid, fd, payload = mon.payload(layout.v2)
        os.close(fd)
        monitor_pid = mon.pid
    pids = _subtree_procs(payload)
    assert str(init_pid) in pids and len(set(pids)) >= 3  # init, its service, the attached sleep
    veth = agent.call("container_inspect", name)["veth"]
    assert os.path.lexists(f"/sys/class/net/{veth}")
    return {"payload": payload, "procs": sorted(set(pids)), "monitor": monitor_pid, "veth": veth}


def _subtree_procs(cg: str) -> list[str]:
    out = []
    for d, _subdirs, files in os.walk(cg):
        if "cgroup.procs" in files:
            out += open(os.path.join(d, "cgroup.procs")).read().split()
    return out


def assert_gone(agent, name: str, left: dict) -> None:
    assert not os.path.exists(left["payload"]), "the payload cgroup is removed"
    for pid in left["procs"] + [str(left["monitor"])]:
        assert not procs.alive(int(pid)), f"pid {pid} of the container is gone (a zombie at most)"
    assert not os.path.lexists(f"/sys/class/net/{left['veth']}"), "the host-side veth is gone"
    mounts = open("/proc/self/mountinfo").read()
    assert os.path.join(agent.lxc_path, name) not in mounts
    state = subprocess.run(["lxc-info", "-P", agent.lxc_path, "-n", name, "-s"], capture_output=True, text=True)
    assert re.search(r"State:\s+STOPPED", state.stdout), state.stdout + state.stderr


def test_kill_goes_through_cgroup_kill_and_leaves_nothing(agent):
    left = running(agent, "lfc.kill")
    Lxc(agent.lxc_path, run=no_tool, direct=True).stop("lfc.kill", kill=True)
    assert_gone(agent, "lfc.kill", left)
    # and the container starts again (no veth, cgroup or lock left behind)
    agent.call("container_start", "lfc.kill")
    assert agent.call("container_exec", "lfc.kill", ["true"])["exit_code"] == 0


def test_graceful_stop_uses_the_halt_signal(agent):
    """busybox's init halts on the image's stop signal: the container is
    down well before the timeout, without a kill."""
    left = running(agent, "lfc.halt")
    started = time.monotonic()
    Lxc(agent.lxc_path, run=no_tool, direct=True).stop("lfc.halt", timeout_s=60)
    assert time.monotonic() - started < 60, "halted by its signal, not killed after the 60 s timeout"
    assert_gone(agent, "lfc.halt", left)


def test_a_container_that_ignores_the_halt_signal_is_killed_after_the_timeout(agent):
    left = running(agent, "lfc.deaf")
    cfg = os.path.join(agent.lxc_path, "lfc.deaf", "config")
    text = open(cfg).read()
    # busybox init takes SIGHUP as "re-read inittab": it does not stop
    with open(cfg, "w") as f:
        f.write(re.sub(r"(?m)^lxc\.signal\.halt = .*$", "lxc.signal.halt = SIGHUP", text))
    started = time.monotonic()
    Lxc(agent.lxc_path, run=no_tool, direct=True).stop("lfc.deaf", timeout_s=1.5)
    assert time.monotonic() - started >= 1.5, "the graceful timeout ran out before the kill"
    assert_gone(agent, "lfc.deaf", left)


def test_a_stopped_container_is_left_to_the_tool_and_says_not_running(agent):
    agent.call("container_create", "busybox", "lfc.cold")
    assert direct.monitor(agent.lxc_path, "lfc.cold") is None
    with pytest.raises(errors.LxcNotRunning):
        Lxc(agent.lxc_path).stop("lfc.cold", kill=True)


def test_a_pid_file_naming_another_process_is_not_trusted(agent, tmp_path):
    """A stale pid file (its pid now another process's) never gets that
    process signalled: direct.monitor refuses it and the tool decides."""
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cdir = tmp_path / "ghost"
        cdir.mkdir()
        (cdir / "init.pid").write_text(f"{sleeper.pid}\n")
        assert direct.monitor(str(tmp_path), "ghost") is None
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_parse_signal_reads_lxc_halt_values():
    import signal
    assert direct.parse_signal("SIGPWR") == signal.SIGPWR
    assert direct.parse_signal("USR1") == signal.SIGUSR1
    assert direct.parse_signal("SIGRTMIN+3") == signal.SIGRTMIN + 3
    assert direct.parse_signal("15") == 15
    assert direct.parse_signal("SIGNOPE") is None
    assert direct.parse_signal("SIGRTMIN+99") is None


def test_start_sets_hairpin_through_sysfs_and_destroy_stops_the_log_writer(agent):
    """The agent's start turns hairpin on without ``ip`` (sysfs brport),
    spawns the log writer without forking itself (the writer's daemon is in
    "/", not the agent's cwd), and destroy leaves neither the writer nor
    the veth."""
    agent.call("container_create", "busybox", "lfc.pin")
    agent.call("container_start", "lfc.pin")
    veth = agent.call("container_inspect", "lfc.pin")["veth"]
    with open(f"/sys/class/net/{veth}/brport/hairpin_mode") as f:
        assert f.read().strip() == "1"
    with open(os.path.join(agent.state_dir, "logs", "lfc.pin", "logger.pid")) as f:
        writer = int(f.read())
    assert procs.alive(writer) and os.readlink(f"/proc/{writer}/cwd") == "/"
    agent.call("container_destroy", "lfc.pin", True)
    assert not procs.alive(writer)
    assert not os.path.lexists(f"/sys/class/net/{veth}")
    assert not os.path.exists(os.path.join(agent.lxc_path, "lfc.pin"))


def test_start_returns_the_containers_init_pid_not_its_monitors(agent):
    """``container_start``'s pid is the container's init on the host (what
    ``lxc-info`` and ``container_ls`` report), not the pid file's monitor."""
    agent.call("container_create", "busybox", "lfc.pid")
    started = agent.call("container_start", "lfc.pid")
    info = subprocess.run(["lxc-info", "-P", agent.lxc_path, "-n", "lfc.pid", "-p", "-H"], capture_output=True,
                          text=True)
    assert started["pid"] == int(info.stdout.strip()), (started, info.stdout)
    mon = direct.monitor(agent.lxc_path, "lfc.pid")
    with mon:
        assert started["pid"] != mon.pid
    listed = [c for c in agent.call("container_ls") if c["name"] == "lfc.pid"]
    assert listed[0]["pid"] == started["pid"]


def _attach_children(name: str) -> list[int]:
    """This process's lxc-attach children for container ``name``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
            ppid = int(open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and argv[0] == b"lxc-attach" and name.encode() in argv:
            found.append(int(entry))
    return found


def _status_field(pid: int, key: str) -> str:
    return [ln for ln in open(f"/proc/{pid}/status") if ln.startswith(key + ":")][0].split()[1]


def test_exec_runs_lxc_attach_from_one_sealed_copy_with_every_guarantee(agent):
    """lxc-attach runs from the one sealed memfd copy (spawn.sealed_exe):
    its /proc/PID/exe is that copy (the same inode: no re-exec of its own
    made another), it cannot be opened for writing, and the command still
    runs in the container's namespaces and cgroup subtree, with the
    container's capability bounding set and a cleared environment."""
    import fcntl

    import gevent

    from lxcwrap import spawn

    agent.call("container_create", "busybox", "lfc.seal")
    agent.call("container_start", "lfc.seal")
    layout = cgroup.detect()
    mon = direct.monitor(agent.lxc_path, "lfc.seal")
    with mon:
        init_pid, fd, payload = mon.payload(layout.v2)
        os.close(fd)
    lxc = Lxc(agent.lxc_path)
    assert lxc.sealed_attach
    job = gevent.spawn(lxc.exec, "lfc.seal", ["sh", "-c", "sleep 31 || echo released"], timeout_s=60)
    sleeper = None
    try:
        deadline = time.monotonic() + 30
        while sleeper is None and time.monotonic() < deadline and not job.ready():
            gevent.sleep(0.02)
            for pid in _subtree_procs(payload):
                try:
                    if open(f"/proc/{pid}/cmdline", "rb").read() == b"sleep\x0031\x00":
                        sleeper = int(pid)
                except OSError:
                    pass
        assert sleeper is not None, "the command runs in the container's cgroup subtree"
        # the command: in every namespace of the container's init, its capabilities, a cleared env
        for kind in ("mnt", "pid", "net", "uts", "ipc", "cgroup", "user"):
            assert os.readlink(f"/proc/{sleeper}/ns/{kind}") == os.readlink(f"/proc/{init_pid}/ns/{kind}"), kind
        assert _status_field(sleeper, "CapBnd") == _status_field(init_pid, "CapBnd")
        environ = open(f"/proc/{sleeper}/environ", "rb").read().split(b"\0")
        assert {e.split(b"=", 1)[0].decode() for e in environ if e} <= {"PATH", "HOME", "TERM", "PWD", "SHLVL",
                                                                    "container"}  # lxc-attach sets container=lxc
        # lxc-attach itself: exec'ed once, from our sealed copy, not writable
        pids = _attach_children("lfc.seal")
        assert pids, "lxc-attach is running"
        copy = spawn.sealed_exe("lxc-attach")
        copy_fd = int(copy.rsplit("/", 1)[1])
        for pid in pids:
            assert os.readlink(f"/proc/{pid}/exe").startswith("/memfd:lxc-attach")
            with open(f"/proc/{pid}/exe", "rb") as exe:
                assert os.fstat(exe.fileno()).st_ino == os.fstat(copy_fd).st_ino, "exec'ed from our copy only"
                assert fcntl.fcntl(exe.fileno(), fcntl.F_GET_SEALS) == spawn.SEALS
                assert exe.read() == open(shutil.which("lxc-attach"), "rb").read()
            for flags in (os.O_WRONLY, os.O_RDWR):
                with pytest.raises(OSError):
                    os.open(f"/proc/{pid}/exe", flags)
    finally:
        if sleeper is not None:
            os.kill(sleeper, 9)
        out = job.get(timeout=60)
    assert out["exit_code"] == 0 and out["stdout"] == b"released\n", out


def test_ls_without_a_process_says_what_lxc_ls_says(agent):
    """``Lxc.ls`` lists in process (direct.listing) what ``lxc-ls -f``
    reports: running containers with their init pid, stopped and never
    started ones, and starts no tool."""
    agent.call("container_create", "busybox", "lfc.ls1")
    agent.call("container_start", "lfc.ls1")
    agent.call("container_create", "busybox", "lfc.ls2")
    agent.call("container_start", "lfc.ls2")
    agent.call("container_stop", "lfc.ls2", 0.0)
    agent.call("container_create", "busybox", "lfc.ls3")
    by_tool = {r["name"]: r for r in Lxc(agent.lxc_path, direct=False).ls()}
    mine = Lxc(agent.lxc_path, run=no_tool, direct=True).ls()
    assert [r["name"] for r in mine] == sorted(by_tool)
    for row in mine:
        assert row == by_tool[row["name"]], row
    assert {r["name"]: r["state"] for r in mine if r["name"].startswith("lfc.ls")} == \
        {"lfc.ls1": "RUNNING", "lfc.ls2": "STOPPED", "lfc.ls3": "STOPPED"}


def test_ls_asks_the_tool_for_a_container_started_without_our_pid_file(agent):
    """A container started by hand (no pid file naming its monitor) is not
    reported stopped: its command socket is seen and lxc-info answers for
    it alone."""
    agent.call("container_create", "busybox", "lfc.hand")
    subprocess.run(["lxc-start", "-P", agent.lxc_path, "-n", "lfc.hand", "-d"], check=True, timeout=60)
    try:
        assert not os.path.exists(os.path.join(agent.lxc_path, "lfc.hand", "init.pid"))
        rows = {r["name"]: r for r in direct.listing(agent.lxc_path, cgroup.detect().v2)}
        assert rows["lfc.hand"]["state"] is None
        ran = []

        def counting(argv, timeout_s=0, **kw):
            ran.append(argv[0])
            return run(argv, timeout_s, **kw)

        rows = {r["name"]: r for r in Lxc(agent.lxc_path, run=counting, direct=True).ls()}
        assert ran == ["lxc-info"] and rows["lfc.hand"]["state"] == "RUNNING"
        assert rows["lfc.hand"]["pid"] == int(subprocess.run(
            ["lxc-info", "-P", agent.lxc_path, "-n", "lfc.hand", "-p", "-H"], capture_output=True,
            text=True).stdout)
    finally:
        subprocess.run(["lxc-stop", "-P", agent.lxc_path, "-n", "lfc.hand", "-k"], timeout=60)


def test_ls_asks_the_tool_about_a_monitor_without_an_init(tmp_path):
    """A live monitor with no init in its payload cgroup (a container
    starting or stopping) is not guessed at: lxc-info answers for it."""
    name = "lfc.between"
    cdir = tmp_path / name
    cdir.mkdir()
    (cdir / "config").write_text(f"lxc.uts.name = lfcb\nlxc.rootfs.path = dir:{cdir}/rootfs\n")
    # a process that looks like the container's monitor, as the pid file names it
    fake = subprocess.Popen(["bash", "-c", f'exec -a "[lxc monitor] {tmp_path} {name}" sleep 60'])
    try:
        deadline = time.monotonic() + 10
        while not open(f"/proc/{fake.pid}/cmdline").read().startswith("[lxc monitor]"):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        (cdir / "init.pid").write_text(f"{fake.pid}\n")
        rows = direct.listing(str(tmp_path), cgroup.detect().v2)
        assert rows == [{"name": name, "state": None, "pid": None}]
        ran = []

        def counting(argv, timeout_s=0, **kw):
            ran.append(argv[0])
            return run(argv, timeout_s, **kw)

        assert Lxc(str(tmp_path), run=counting, direct=True).ls() == [{"name": name, "state": "STOPPED", "pid": None}]
        assert ran == ["lxc-info"]
    finally:
        fake.kill()
        fake.wait()
        shutil.rmtree(os.path.join(LOCK_ROOT, str(tmp_path).lstrip("/")), ignore_errors=True)  # lxc-info's lock file
