"""A real etcd on loopback for tests: its own data dir under the test's
tmp dir and a free port pair in 23790-23799 (client port P, peer port
P+5), always stopped and removed, even when the test fails."""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import uuid

import pytest

from ops.fleetlib.etcd import ETCD_BINARY, EtcdServer, port_free

CLIENT_PORTS = range(23790, 23795)  # peer port: client port + 5
LOCK_DIR = "/run/dcfleet/locks"


def need_etcd() -> None:
    if not shutil.which(ETCD_BINARY):
        pytest.skip("needs Debian's etcd-server (ops/setup installs it)")


@contextlib.contextmanager
def running_etcd(tmp_dir: str):
    """A started EtcdServer on 127.0.0.1; stopped and removed on exit.
    A port is held by a lock file while in use, so parallel tests never
    share one."""
    need_etcd()
    os.makedirs(LOCK_DIR, exist_ok=True)
    for port in CLIENT_PORTS:
        fd = os.open(os.path.join(LOCK_DIR, f"etcd-test-{port}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        if not (port_free("127.0.0.1", port) and port_free("127.0.0.1", port + 5)):
            os.close(fd)
            continue
        server = EtcdServer(os.path.join(tmp_dir, f"etc-{uuid.uuid4().hex[:8]}"), "127.0.0.1", port, port + 5)
        try:
            yield server.start()
        finally:
            server.remove()
            os.close(fd)
        return
    pytest.skip(f"no free etcd port in {CLIENT_PORTS.start}-{CLIENT_PORTS.stop - 1}")
