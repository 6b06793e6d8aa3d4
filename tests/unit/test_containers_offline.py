"""ContainerManager and Supervisor without root: real files under tmp_path (the
image store, records, container dirs), LXC and the network tools through
lxcwrap's run seam, answered with what the real tools print (recorded
formats, as in tests/data/lxc)."""
from __future__ import annotations

import io
import os
import tarfile

import pytest

from agents import errmap
from agents.config import AgentConfig
from agents.containers import ContainerManager
from agents.network import Network
from agents.supervisor import Supervisor
from dcctl import errors
from images import ImageStore, InvalidImage
from lxcwrap import cgroup
from lxcwrap.lxc import Lxc
from lxcwrap.run import Completed
from tests.waiting import wait_for

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "lxc")
LS_HEADER = "NAME          STATE   PID \n"
INFO_MISSING = open(os.path.join(DATA, "info-missing.txt"), "rb").read()


class RecordedTools:
    """Answers the argv lists lxcwrap and agents.network build, the way the
    tools do: lxc-ls/lxc-info from a table of container states, lxc-start
    as a container whose command exits with ``exit_status`` at once (its run
    script writes /etc/dcfleet/exit and powers off), ip and iptables with
    success and no output.  ``calls`` keeps every argv."""

    def __init__(self, lxc_path: str):
        self.lxc_path = lxc_path
        self.states: dict[str, str] = {}
        self.exit_status = 1
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv, timeout_s=0, **kw) -> Completed:
        argv = tuple(argv)
        self.calls.append(argv)
        tool = argv[0]
        name = argv[argv.index("-n") + 1] if "-n" in argv else None
        if tool == "lxc-ls":
            rows = "".join(f"{n:<13} {s:<7} -   \n" for n, s in sorted(self.states.items()))
            return Completed(argv, 0, (LS_HEADER + rows).encode(), b"")
        if tool == "lxc-info":
            if not os.path.exists(os.path.join(self.lxc_path, name, "config")):
                return Completed(argv, 1, b"", INFO_MISSING.replace(b"nope", name.encode()))
            return Completed(argv, 0, f"State:          {self.states.get(name, 'STOPPED')}\n".encode(), b"")
        if tool == "lxc-start":
            exit_dir = os.path.join(self.lxc_path, name, "delta0", "etc", "dcfleet")
            os.makedirs(exit_dir, exist_ok=True)
            with open(os.path.join(exit_dir, "exit"), "w") as f:
                f.write(f"{self.exit_status} 0\n")
            self.states[name] = "STOPPED"  # its command ended: the container powered off
            return Completed(argv, 0, b"", b"")
        return Completed(argv, 0, b"", b"")


def _tar(path, members) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return str(path)


@pytest.fixture
def host(tmp_path):
    state = tmp_path / "agent"
    cfg = AgentConfig(state_dir=str(state), listen=[f"ipc://{tmp_path}/a.sock"], bridge="dcofftest0",
                      subnet="10.219.7.0/24", host_name="offline", lock_timeout_s=5)
    os.makedirs(cfg.lxc_path)
    tools = RecordedTools(cfg.lxc_path)
    images = ImageStore(str(state / "images"))
    rootfs = [("bin", None), ("etc", None), ("etc/hostname", b"{{ hostname }}\n"),
              ("etc/motd", b"{{ 2 ** 100000 }}\n")]
    images.import_tar(_tar(tmp_path / "good.tar", rootfs[:3]), "good", templates=["/etc/hostname"])
    images.import_tar(_tar(tmp_path / "bad.tar", rootfs), "badtemplate", templates=["/etc/motd"])
    manager = ContainerManager(cfg, Network(cfg.bridge, cfg.subnet, cfg.port_range, run=tools),
                               images, Lxc(cfg.lxc_path, run=tools))
    manager.recover()
    yield manager, tools
    for name in list(manager.records):  # whatever a failed test left
        manager.destroy(name, True)


def _files(manager) -> tuple[list[str], list[str]]:
    return sorted(os.listdir(manager.config.lxc_path)), \
        sorted(os.listdir(os.path.join(manager.config.state_dir, "containers")))


def test_a_create_that_fails_midway_leaves_nothing(host):
    manager, tools = host
    with pytest.raises(InvalidImage) as info:  # the template fails to render, after the dir was made
        manager.create("badtemplate", "off.bad", None)
    assert type(errmap.translate(info.value)) is errors.InvalidImage
    assert manager.records == {} and _files(manager) == ([], [])
    row = manager.create("good", "off.good", None)  # the address came back
    assert row["address"] == "10.219.7.2" and row["state"] == "stopped"
    assert _files(manager) == (["off.good"], ["off.good.json"])
    with open(os.path.join(manager.upper_dir("off.good"), "etc", "hostname")) as f:
        assert f.read() == "off.good\n"
    config = open(os.path.join(manager.config.lxc_path, "off.good", "config")).read()
    assert "lxc.net.0.ipv4.address = 10.219.7.2/24 10.219.7.255\n" in config
    assert not any(c[0].startswith("lxc-") and c[0] != "lxc-ls" for c in tools.calls)  # create starts no tool


def test_create_writes_the_pid_limit_and_bounded_tmpfs_sizes(host):
    """The config a create writes: pids.max from the agent's default or the
    create's pids_limit, for the host's pids hierarchy; each tmpfs with a
    size= (the agent's settings, or the memory limit when there is one);
    and what inspect reports, also for a record written before PID limits."""
    manager, _tools = host
    manager.layout = cgroup.Layout({"memory": "/m", "pids": "/p"}, None, frozenset())

    def entries(name):
        with open(os.path.join(manager.config.lxc_path, name, "config")) as f:
            lines = f.read().splitlines()
        pids = [ln for ln in lines if "pids" in ln]
        tmpfs = {ln.split()[3]: ln.split()[5] for ln in lines if ln.startswith("lxc.mount.entry = tmpfs ")}
        return pids, tmpfs

    manager.create("good", "off.lim", None)
    opts = "mode={},nosuid,nodev,size={},create=dir"
    assert entries("off.lim") == (["lxc.cgroup.pids.max = 4096"], {
        "tmp": opts.format("1777", 256 << 20), "run": opts.format("0755", 64 << 20),
        "run/lock": opts.format("1777", 64 << 20), "dev/shm": opts.format("1777", 64 << 20)})
    assert manager.inspect("off.lim")["pids_limit"] == 4096
    manager.create("good", "off.mem", {"pids_limit": 50, "memory_bytes": 32 << 20})
    pids, tmpfs = entries("off.mem")
    assert pids == ["lxc.cgroup.pids.max = 50"] and manager.inspect("off.mem")["pids_limit"] == 50
    assert all(f",size={32 << 20}," in o for o in tmpfs.values()) and len(tmpfs) == 4
    manager.layout = cgroup.Layout({}, "/sys/fs/cgroup", frozenset({"memory", "pids"}))  # cgroup v2
    manager.create("good", "off.v2", {"pids_limit": 100})
    assert entries("off.v2")[0] == ["lxc.cgroup2.pids.max = 100"]
    del manager.records["off.lim"]["pids_limit"]  # a record made before PID limits
    assert manager.inspect("off.lim")["pids_limit"] is None
    manager.start("off.lim")
    assert manager.records["off.lim"]["desired"] == "running"


def test_a_destroy_cut_short_stays_destroying_and_the_next_one_finishes(host):
    manager, _ = host
    manager.create("good", "off.cut", None)
    cdir = os.path.join(manager.config.lxc_path, "off.cut")
    os.rename(cdir, cdir + ".real")
    os.symlink(cdir + ".real", cdir)  # rmtree refuses a symlink: the removal fails
    with pytest.raises(errors.StoreError, match="cannot remove"):
        manager.destroy("off.cut", False)
    assert manager.records["off.cut"]["phase"] == "destroying"
    assert manager.ls()[0]["state"] == "destroying"
    with pytest.raises(errors.Busy):
        manager.start("off.cut")
    os.unlink(cdir)
    os.rename(cdir + ".real", cdir)
    assert manager.destroy("off.cut", False) == {"name": "off.cut", "destroyed": True}
    assert manager.records == {} and _files(manager) == ([], [])


def test_on_failure_n_restarts_with_backoff_then_gives_up(host):
    manager, tools = host
    manager.create("good", "off.fail", {"restart": "on-failure:2"})
    manager.start("off.fail")  # lxc-start's container exits 1 at once
    sup = Supervisor(manager, interval_s=0.05)

    def gave_up():
        sup.tick()
        return manager.records["off.fail"]["desired"] == "stopped"

    wait_for(gave_up, 30, "the supervisor gave up on off.fail", interval_s=0.05)
    rec = manager.records["off.fail"]
    kinds = [e["kind"] for e in rec["events"]]
    assert kinds == ["exited", "restarted", "exited", "restarted", "exited", "restart_gave_up"]
    assert rec["restart_count"] == 2 and rec["last_exit"]["status"] == 1
    exited = [e["at"] for e in rec["events"] if e["kind"] == "exited"]
    restarted = [e["at"] for e in rec["events"] if e["kind"] == "restarted"]
    assert restarted[0] - exited[0] >= 1.0 and restarted[1] - exited[1] >= 2.0  # 1 s, then 2 s
    assert sum(1 for c in tools.calls if c[0] == "lxc-start") == 3
    for _ in range(3):
        sup.tick()  # an operator-stopped or given-up container is left alone
    assert sum(1 for c in tools.calls if c[0] == "lxc-start") == 3


@pytest.mark.parametrize("policy, status, restarts", [("no", 1, False), ("on-failure", 0, False),
                                                      ("always", 0, True), ("on-failure", 137, True)])
def test_policies_decide_on_the_exit(host, policy, status, restarts):
    manager, tools = host
    tools.exit_status = status
    manager.create("good", "off.pol", {"restart": policy})
    manager.start("off.pol")
    sup = Supervisor(manager, interval_s=0.05)
    sup.tick()
    rec = manager.records["off.pol"]
    assert rec["last_exit"]["status"] == status
    assert (rec["desired"] == "running") is restarts
    assert [e["kind"] for e in rec["events"]] == ["exited"]
