"""A real etcd on loopback for tests (ops.fleetlib.etcd.local_etcd): its own
data dir under the test's tmp dir and a free port pair in 23790-23799,
always stopped and removed, even when the test fails."""
from __future__ import annotations

import contextlib
import shutil

import pytest

from ops.fleetlib.etcd import ETCD_BINARY, local_etcd


def need_etcd() -> None:
    if not shutil.which(ETCD_BINARY):
        pytest.skip("needs Debian's etcd-server (ops/setup installs it)")


@contextlib.contextmanager
def running_etcd(tmp_dir: str):
    """A started EtcdServer on 127.0.0.1; stopped and removed on exit."""
    need_etcd()
    with local_etcd(tmp_dir) as server:
        yield server
