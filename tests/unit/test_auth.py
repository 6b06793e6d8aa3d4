"""CURVE on TCP endpoints, the allowlist with roles, and the local endpoint,
over real ZeroMQ sockets."""
import os
import socket
import time

import gevent
import pytest
import zerorpc

from dcctl import auth, errors, wire


class Sample:
    def __init__(self):
        self.ran = []

    @wire.expose(access="read")
    def look(self) -> str:
        caller = wire.current_caller()
        return f"{caller.role}:{caller.name}"

    @wire.expose
    def change(self) -> str:
        self.ran.append("change")
        return "changed"

    @wire.expose(access="agent")
    def register(self) -> str:
        return wire.current_caller().key


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def secured(tmp_path):
    keys = tmp_path / "server-keys"
    target = Sample()
    svc = wire.Service(target, "sample", keys_dir=str(keys), heartbeat_s=1)
    endpoint = f"tcp://127.0.0.1:{_port()}"
    svc.bind(endpoint)
    svc.bind(f"ipc://{tmp_path}/local.sock")
    svc.start()
    server_pub = auth.ensure_server_pair(str(keys))[0].decode()
    made = {}
    for role in ("admin", "read", "agent"):
        pub, sec = auth.keygen(str(tmp_path / "clients"), role)
        svc.allowlist.add(role, role, auth.load_public(pub).decode())
        made[role] = auth.ClientKeys.from_files(sec, server_pub)
    auth.keygen(str(tmp_path / "clients"), "stranger")
    made["stranger"] = auth.ClientKeys.from_files(str(tmp_path / "clients" / "stranger.key_secret"), server_pub)
    yield svc, target, endpoint, made, tmp_path
    svc.stop()


def test_roles(secured):
    _, target, ep, keys, _ = secured
    with wire.connect(ep, 5, keys["admin"]) as c:
        assert c.look() == "admin:admin" and c.change() == "changed"
    with wire.connect(ep, 5, keys["read"]) as c:
        assert c.look() == "read:read"
        with pytest.raises(errors.PermissionDenied):
            c.change()
        with pytest.raises(errors.PermissionDenied):
            c.register()
    with wire.connect(ep, 5, keys["agent"]) as c:
        assert c.register() == keys["agent"].public.decode()
        with pytest.raises(errors.PermissionDenied):
            c.change()
    assert target.ran == ["change"]


@pytest.mark.parametrize("who", [None, "stranger"])
def test_refused_clients_fail_fast_and_run_nothing(secured, who):
    _, target, ep, keys, _ = secured
    started = time.monotonic()
    with wire.connect(ep, 120, keys.get(who)) as c:
        with pytest.raises(errors.Unauthorized):
            c.change()
    assert time.monotonic() - started < 60, "a refused key must be reported, not waited out (120 s)"
    assert target.ran == []


def test_removed_key_is_refused_on_an_open_connection_and_added_keys_work_at_once(secured):
    svc, target, ep, keys, tmp = secured
    with wire.connect(ep, 5, keys["admin"]) as c:
        assert c.change() == "changed"
        os.unlink(os.path.join(svc.keys_dir, "clients", "admin", "admin.key"))
        with pytest.raises(errors.Unauthorized):
            c.change()
    assert target.ran == ["change"]
    svc.allowlist.add("admin", "stranger", keys["stranger"].public.decode())
    with wire.connect(ep, 5, keys["stranger"]) as c:
        assert c.look() == "admin:stranger"


def test_a_forged_caller_header_changes_nothing(secured):
    _, target, ep, keys, _ = secured

    class Forge:
        def get_task_context(self):
            return {"dc_caller": keys["admin"].public.decode()}

    ctx = zerorpc.Context()
    ctx.register_middleware(Forge())
    client = zerorpc.Client(context=ctx, timeout=5)
    sock = client._events._socket
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
        keys["read"].server_public, keys["read"].public, keys["read"].secret)
    client.connect(ep)
    try:
        with pytest.raises(zerorpc.RemoteError) as info:
            client("change")
        assert info.value.name == "PermissionDenied"
        assert client("look") == "read:read"
    finally:
        client.close()
    assert target.ran == []


def test_local_endpoint_is_admin_without_keys(secured):
    _, _, _, _, tmp = secured
    with wire.connect(f"ipc://{tmp}/local.sock", 5) as c:
        assert c.look() == "admin:local"


def test_plain_tcp_only_on_loopback_and_only_when_asked(tmp_path):
    svc = wire.Service(Sample(), "s")
    with pytest.raises(errors.InvalidArgument):
        svc.bind("tcp://0.0.0.0:7999", insecure=True)
    with pytest.raises(errors.InvalidArgument):
        svc.bind(f"tcp://127.0.0.1:{_port()}")  # no keys: no CURVE, no plain unless asked
    ep = f"tcp://127.0.0.1:{_port()}"
    svc.bind(ep, insecure=True)
    svc.start()
    try:
        with wire.connect(ep, 5) as c:
            assert c.look() == "admin:local"
    finally:
        svc.stop()


def test_keygen_permissions(tmp_path):
    pub, sec = auth.keygen(str(tmp_path / "k"), "op")
    assert oct(os.stat(sec).st_mode & 0o777) == "0o600"
    assert oct(os.stat(tmp_path / "k").st_mode & 0o777) == "0o700"
    with pytest.raises(errors.Conflict):
        auth.keygen(str(tmp_path / "k"), "op")
    gevent.sleep(0)
