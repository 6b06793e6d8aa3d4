"""A real ``dc-agent`` in a subprocess, with its own state dir, LXC path,
bridge, subnet and port range, all named by a unique prefix so that cleanup
finds everything it made even after a failure (or a previous crashed run).
"""
from __future__ import annotations

import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import time

from dcctl import errors, procs, wire
from lxcwrap import cgroup
from lxcwrap.lxc import LOCK_ROOT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_PREFIX = "dct"  # bridges dctXXXX, chains DCF-dctXXXX-*, dirs /tmp/dct-*
_used_subnets: set[int] = set()


def _unique_subnet() -> str:
    while True:
        n = random.randint(0, 255)
        if n not in _used_subnets:
            _used_subnets.add(n)
            return f"10.213.{n}.0/24"


class AgentProcess:
    """Start/stop/kill a real agent; ``client()`` gives an RpcClient."""

    def __init__(self, prefix: str | None = None, extra_args: tuple[str, ...] = ()):
        self.prefix = prefix or f"{TEST_PREFIX}{random.randbytes(3).hex()}"
        self.root = f"/tmp/{self.prefix[:3]}-{self.prefix[3:]}"
        self.state_dir = os.path.join(self.root, "state")
        self.lxc_path = os.path.join(self.root, "lxc")
        self.socket = os.path.join(self.root, "agent.sock")
        self.endpoint = f"ipc://{self.socket}"
        self.bridge = self.prefix
        self.subnet = _unique_subnet()
        low = 31000 + random.randint(0, 300) * 100
        self.port_range = (low, low + 99)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.root, "agent.log")

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "agents.main", "--listen", self.endpoint,
                "--state-dir", self.state_dir, "--lxc-path", self.lxc_path, "--bridge", self.bridge,
                "--subnet", self.subnet, "--port-range", f"{self.port_range[0]}-{self.port_range[1]}",
                "--host-name", self.prefix, "--metrics-listen=127.0.0.1:0", *self.extra_args]

    def start(self, timeout_s: float = 60.0) -> "AgentProcess":
        os.makedirs(self.root, exist_ok=True)
        with open(os.path.join(self.root, "owner"), "w") as f:
            f.write(str(os.getpid()))  # sweep() leaves roots of live test runs alone
        env = {**os.environ, "PYTHONPATH": REPO}
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}: {self.log_tail()}")
            if os.path.exists(self.socket):
                try:
                    with wire.connect(self.endpoint, timeout_s=2) as c:
                        c.call("_zerorpc_ping")
                    return self
                except errors.DcError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"agent did not answer in {timeout_s} s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def client(self, timeout_s: float = 60.0) -> wire.RpcClient:
        return wire.connect(self.endpoint, timeout_s=timeout_s)

    def call(self, method: str, *args, timeout_s: float = 60.0):
        with self.client(timeout_s) as c:
            return c.call(method, *args)

    def kill9(self) -> None:
        """SIGKILL the agent only (its containers' monitors are not in its
        process group: lxc-start daemonizes)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill9()

    def cleanup(self) -> None:
        """Remove everything this agent made, whatever state it is in."""
        self.kill9()
        cleanup_prefix(self.prefix, self.root)


def _quiet(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, timeout=120)


def cleanup_prefix(prefix: str, root: str) -> None:
    """Stop and destroy containers under ROOT/lxc (and ROOT/state/lxc, the
    default layout), remove the bridge, netfilter chains and bridge lock
    named by ``prefix``, and the dir."""
    for lxc_path in (os.path.join(root, "lxc"), os.path.join(root, "state", "lxc"),
                     os.path.join(root, "state", "builds")):  # agents/build.py's build containers
        for cdir in glob.glob(os.path.join(lxc_path, "*", "config")):
            name = os.path.basename(os.path.dirname(cdir))
            _quiet(["lxc-stop", "-P", lxc_path, "-n", name, "-k"])
    from agents.logs import is_writer
    for pid, args in procs.processes():  # containers' log writers (agents/logger.py, logwriter.py) under ROOT
        if is_writer(args) and any(a.startswith(root.encode() + b"/") for a in args):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    from agents.network import Network
    try:
        Network(prefix, "10.213.0.0/24", (1, 2)).teardown()
    except Exception as exc:  # keep going: best effort
        print(f"teardown of {prefix}: {exc}", file=sys.stderr)
    _quiet(["ip", "link", "del", prefix])
    from agents.decommission import bridge_lock_path
    try:  # agents.main.lock_bridge's lock file (one per bridge, else they pile up)
        os.unlink(bridge_lock_path(prefix))
    except FileNotFoundError:
        pass
    state_dir = os.path.join(root, "state")
    if os.path.ismount(state_dir):  # a small tmpfs of a disk-full test
        _quiet(["umount", "-l", state_dir])
    shutil.rmtree(root, ignore_errors=True)
    # liblxc's lock files of those lxcpaths (lxcwrap.lxc.LOCK_ROOT/ROOT/...), one per container name used
    shutil.rmtree(os.path.join(LOCK_ROOT, root.lstrip("/")), ignore_errors=True)


def _owner_alive(root: str) -> bool:
    try:
        with open(os.path.join(root, "owner")) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return False
    return pid != os.getpid() and os.path.exists(f"/proc/{pid}")


def sweep() -> None:
    """Remove leftovers of earlier runs that died before their cleanup
    (roots whose owning test process is gone), and the cgroups that LXC
    monitors killed by the fault tests left (empty, a minute old: what the
    agents' own ops_cleanup removes, lxcwrap.cgroup)."""
    for root in glob.glob(f"/tmp/{TEST_PREFIX}-*"):
        if _owner_alive(root):
            continue
        prefix = TEST_PREFIX + os.path.basename(root)[len(TEST_PREFIX) + 1:]
        for pid in _agent_pids(root):
            os.kill(pid, signal.SIGKILL)
        cleanup_prefix(prefix, root)
    try:
        cgroup.remove_stale_lxc_cgroups()
    except Exception as exc:  # noqa: BLE001 - best effort, as the agents' own sweep
        print(f"stale cgroup sweep: {exc}", file=sys.stderr)


def _agent_pids(root: str) -> list[int]:
    return [pid for pid, args in procs.processes()
            if b"agents.main" in args and root.encode() + b"/state" in args]
