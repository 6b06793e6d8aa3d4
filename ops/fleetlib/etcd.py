"""A local etcd (Debian's ``etcd-server`` 3.4 binary, never its system
service) with its own data dir and ports, for ``ops/fleet up --store etcd``,
the tests and the benchmarks.

The flags keep the store from filling (PITFALLS.md, "etcd"): revision
auto-compaction keeps the last ``KEEP_REVISIONS`` revisions, and the
backend quota is set explicitly (``QUOTA_BYTES``) rather than left to the
default.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request

ETCD_BINARY = "/usr/bin/etcd"
KEEP_REVISIONS = 10000
QUOTA_BYTES = 2 << 30


def argv(name: str, data_dir: str, address: str, client_port: int, peer_port: int) -> list[str]:
    """The etcd command line: one member ``name`` serving clients on
    http://ADDRESS:CLIENT_PORT, its peer port on the same address."""
    client, peer = f"http://{address}:{client_port}", f"http://{address}:{peer_port}"
    return [ETCD_BINARY, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"{name}={peer}", "--initial-cluster-state", "new",
            "--auto-compaction-mode", "revision", "--auto-compaction-retention", str(KEEP_REVISIONS),
            "--quota-backend-bytes", str(QUOTA_BYTES), "--snapshot-count", "10000",
            "--logger", "zap", "--log-level", "warn"]


def port_free(address: str, port: int) -> bool:
    """True when nothing listens on ADDRESS:PORT (tcp)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError:
            return False
    return True


LOCK_DIR = "/run/dcfleet/locks"
#: dcfleet's own etcd ports on loopback (tests, benchmarks): client P, peer P + 5
LOOPBACK_CLIENT_PORTS = range(23790, 23795)


@contextlib.contextmanager
def local_etcd(tmp_dir: str, address: str = "127.0.0.1", ports=LOOPBACK_CLIENT_PORTS):
    """A started EtcdServer on ``address`` with a free port pair from
    ``ports`` (client P, peer P + 5) and its data dir under ``tmp_dir``;
    stopped and removed on exit.  A lock file holds the port pair while in
    use, so parallel runs never share one.
    Raises: RuntimeError (no free port pair; etcd did not start)."""
    import uuid
    os.makedirs(LOCK_DIR, exist_ok=True)
    for port in ports:
        fd = os.open(os.path.join(LOCK_DIR, f"etcd-{port}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not (port_free(address, port) and port_free(address, port + 5)):
            os.close(fd)
            continue
        server = EtcdServer(os.path.join(tmp_dir, f"etc-{uuid.uuid4().hex[:8]}"), address, port, port + 5)
        try:
            yield server.start()
        finally:
            server.remove()
            os.close(fd)
        return
    raise RuntimeError(f"no free etcd port pair in {ports.start}-{ports.stop - 1} on {address}")


class EtcdServer:
    """One etcd process.

    Args:
        data_dir: its data dir (made; removed by ``remove``).
        address: the address it listens on (loopback or a fleet bridge's).
        client_port, peer_port: its two ports.
        log_path: where its output goes (default DATA_DIR.log).
    """

    def __init__(self, data_dir: str, address: str, client_port: int, peer_port: int,
                 log_path: str | None = None, name: str = "dcf"):
        self.data_dir, self.address = data_dir, address
        self.client_port, self.peer_port, self.name = client_port, peer_port, name
        self.log_path = log_path or data_dir.rstrip("/") + ".log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.client_port}"

    def start(self, timeout_s: float = 30.0) -> "EtcdServer":
        """Start etcd and wait until it answers /health.
        Raises: RuntimeError (it exited, or did not answer in ``timeout_s``)."""
        os.makedirs(os.path.dirname(self.data_dir.rstrip("/")) or ".", exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv(self.name, self.data_dir, self.address, self.client_port,
                                              self.peer_port), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited ({self.proc.returncode}); see {self.log_path}")
            if self.healthy():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"etcd did not answer on {self.url} within {timeout_s:g} s; see {self.log_path}")

    def healthy(self) -> bool:
        """True when etcd answers /health with health true."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def pause(self) -> None:
        """SIGSTOP: etcd holds its sockets and answers nothing."""
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop etcd (SIGTERM, then SIGKILL after ``timeout_s``); idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout_s)
        except ProcessLookupError:
            pass

    def remove(self) -> None:
        """Stop it and remove its data dir and log."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        try:
            os.unlink(self.log_path)
        except FileNotFoundError:
            pass
