"""Hosts' keys shared by the hubs of one etcd (issue 15, items 1 and 3): a
real etcd on loopback, two real ``dc-hub --store etcd`` processes with
**separate keys dirs** (as on two machines: only the server key pair is
copied), and a real CURVE client holding a host's key pair.

* ``host_add`` through hub A: the host registers and beats through hub B
  (no file written on B's machine, no host_add on B);
* ``host_remove`` through hub A: hub B refuses that key within the bound,
  new handshakes and calls on a connection already open alike;
* etcd stopped: the known host still reaches hub B (a new connection and
  a heartbeat), and a ``host_add`` is StoreUnavailable.

No root needed.  Everything is under /tmp/ksy-<random>/ and removed, and
both hubs are killed, even when the test fails."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from dcctl import auth, errors, wire
from tests.etcdkit import running_etcd
from tests.ports import free_port
from tests.waiting import wait_for

BOUND_SECONDS = 2.0  # a host_remove on one hub is refused by the others within this
SUMMARY = {"capacity": {"memory_reservable_bytes": 1 << 30, "container_slots": 4}, "containers": []}


class TwoHubs:
    """Hubs ksy-a and ksy-b on one etcd prefix, each with its own keys dir."""

    def __init__(self, root: str, etcd):
        self.root, self.etcd = root, etcd
        self.prefix = f"/ksy-{uuid.uuid4().hex[:8]}/"
        self.procs: dict[str, subprocess.Popen] = {}
        self.tcp = {n: f"tcp://127.0.0.1:{free_port()}" for n in ("ksy-a", "ksy-b")}
        self.ipc = {n: f"ipc://{root}/{n}.sock" for n in self.tcp}
        self.keys = {n: os.path.join(root, n, "keys") for n in self.tcp}
        public, _ = auth.ensure_server_pair(self.keys["ksy-a"])
        os.makedirs(self.keys["ksy-b"], mode=0o700)
        for f in ("server.key", "server.key_secret"):  # the one step per hub machine: the server key pair
            shutil.copy2(os.path.join(self.keys["ksy-a"], f), os.path.join(self.keys["ksy-b"], f))
        self.server_public = public.decode()
        for name in self.tcp:
            self.start(name)

    def start(self, name: str) -> None:
        argv = [sys.executable, "-m", "hub.main", "--store", "etcd", "--etcd", self.etcd.url,
                "--etcd-prefix", self.prefix, "--hub-name", name, "--listen", self.ipc[name],
                "--listen", self.tcp[name], "--keys-dir", self.keys[name],
                "--state-dir", os.path.join(self.root, name), "--heartbeat-s", "1", "--lease-s", "2",
                "--metrics-listen", "off"]
        with open(os.path.join(self.root, f"{name}.log"), "ab") as log:
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                                stdin=subprocess.DEVNULL)

        def answers():
            with wire.connect(self.ipc[name], timeout_s=2) as c:
                return c.call("hub_info")["name"] == name
        wait_for(answers, 30, f"hub {name} to serve", ignore=(errors.DcError,))

    def admin(self, name: str) -> wire.RpcClient:
        return wire.connect(self.ipc[name], timeout_s=10)  # the local endpoint: the operator as root

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait(10)

    def log_tail(self) -> str:
        return "\n".join(f"--- {n}\n" + open(os.path.join(self.root, f"{n}.log"), errors="replace").read()[-3000:]
                         for n in self.procs)


@pytest.fixture
def two_hubs(tmp_path):
    root = f"/tmp/ksy-{uuid.uuid4().hex[:8]}"
    os.makedirs(root, mode=0o700)
    hubs = None
    try:
        with running_etcd(str(tmp_path)) as etcd:
            hubs = TwoHubs(root, etcd)
            yield hubs
    finally:
        if hubs is not None:
            hubs.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert not os.path.exists(root)


def _register(c: wire.RpcClient, name: str) -> dict:
    return c.call("host_register", {"name": name, "endpoint": "tcp://127.0.0.1:9", "address": "", "labels": {},
                                    "capacity": SUMMARY["capacity"], "boot_id": "ksy-boot"})


def test_a_host_added_on_one_hub_joins_through_the_other_and_is_refused_there_once_removed(two_hubs, tmp_path):
    hubs = two_hubs
    pub, sec = auth.keygen(str(tmp_path / "host"), "ksy-h1")
    host_keys = auth.ClientKeys.from_files(sec, hubs.server_public)
    public = auth.load_public(pub).decode()
    with wire.connect(hubs.tcp["ksy-b"], 10, host_keys) as c:  # not admitted anywhere yet
        with pytest.raises(errors.Unauthorized):
            _register(c, "ksy-h1")
    with hubs.admin("ksy-a") as a:
        assert a.call("host_add", "ksy-h1", public)["key"] == public
    assert not os.listdir(os.path.join(hubs.keys["ksy-b"], "clients", "agent"))  # nothing on B's disk
    assert not os.listdir(os.path.join(hubs.keys["ksy-a"], "clients", "agent"))  # nor on A's

    def registers():
        with wire.connect(hubs.tcp["ksy-b"], 5, host_keys) as c:
            return _register(c, "ksy-h1")["name"] == "ksy-h1"
    wait_for(registers, BOUND_SECONDS, "the host added on hub A to register through hub B",
             ignore=(errors.Unauthorized,))
    with hubs.admin("ksy-a") as a:
        assert [h["name"] for h in a.call("hosts")] == ["ksy-h1"]

    with wire.connect(hubs.tcp["ksy-b"], 5, host_keys) as open_conn:
        assert open_conn.call("host_heartbeat", "ksy-h1", SUMMARY) == {"ok": True}
        with hubs.admin("ksy-a") as a:
            a.call("host_remove", "ksy-h1")
        removed = time.monotonic()

        def refused_on_the_open_connection():
            try:
                open_conn.call("host_heartbeat", "ksy-h1", SUMMARY)
            except errors.Unauthorized:
                return True
            except errors.NoSuchHost:  # the host is gone from the records, the key not yet refused
                return False
            return False
        wait_for(refused_on_the_open_connection, BOUND_SECONDS, "hub B to refuse the removed key on an open call")
    refused_s = time.monotonic() - removed
    with wire.connect(hubs.tcp["ksy-b"], 5, host_keys) as c:  # and a new handshake
        with pytest.raises(errors.Unauthorized):
            _register(c, "ksy-h1")
    assert refused_s < BOUND_SECONDS, hubs.log_tail()
    print(f"hub B refused the removed key after {refused_s * 1000:.0f} ms")


def test_while_etcd_is_stopped_a_known_host_reaches_the_other_hub_and_host_add_is_store_unavailable(
        two_hubs, tmp_path):
    hubs = two_hubs
    pub, sec = auth.keygen(str(tmp_path / "host"), "ksy-h2")
    host_keys = auth.ClientKeys.from_files(sec, hubs.server_public)
    with hubs.admin("ksy-a") as a:
        a.call("host_add", "ksy-h2", auth.load_public(pub).decode())

    def registers():
        with wire.connect(hubs.tcp["ksy-b"], 5, host_keys) as c:
            return _register(c, "ksy-h2")["name"] == "ksy-h2"
    wait_for(registers, BOUND_SECONDS, "the host to register through hub B", ignore=(errors.Unauthorized,))
    other, _ = auth.keygen(str(tmp_path / "host"), "ksy-h3")
    hubs.etcd.stop()
    try:
        with wire.connect(hubs.tcp["ksy-b"], 5, host_keys) as c:  # a new handshake, answered from memory
            assert c.call("host_heartbeat", "ksy-h2", SUMMARY) == {"ok": True}
        for name in hubs.tcp:
            with hubs.admin(name) as admin:
                with pytest.raises(errors.StoreUnavailable):
                    admin.call("host_add", "ksy-h3", auth.load_public(other).decode())
    finally:
        hubs.etcd.start()
    with hubs.admin("ksy-b") as b:  # back by itself: a new host is admitted again
        wait_for(lambda: b.call("host_add", "ksy-h3", auth.load_public(other).decode()), 15,
                 "host_add to work once etcd is back", ignore=(errors.StoreUnavailable,))
