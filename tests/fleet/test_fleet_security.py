"""Nobody gets in who doesn't belong: CURVE on the fleet's TCP endpoints,
roles, host identity by key, and hostile input that changes nothing."""
from __future__ import annotations

import os
import random
import tarfile

import gevent
import msgpack
import pytest
import zmq.green as zmq

from dcctl import auth, errors, wire
from dcctl.cli import client_keys

pytestmark = pytest.mark.lxc


def operator(endpoint: str, timeout_s: float = 30) -> wire.RpcClient:
    return wire.connect(endpoint, timeout_s=timeout_s, keys=client_keys(endpoint, None, None))


def fresh_keys(tmp_path, name: str, server_public: str) -> tuple[auth.ClientKeys, str]:
    pub, sec = auth.keygen(str(tmp_path / "k"), name)
    return auth.ClientKeys.from_files(sec, server_public), auth.load_public(pub).decode()


def servers(fleet) -> list[dict]:
    return [fleet["hub"], fleet["hosts"][0]]


def state_of(fleet) -> dict:
    with wire.connect(fleet["hub"]["ipc"], 30) as hub:
        return {"ls": [(c["name"], c["host"]) for c in hub.call("container_ls")],
                "hosts": sorted((h["name"], h["endpoint"]) for h in hub.call("hosts")),
                "images": [i["id"] for i in hub.call("image_ls")]}


@pytest.mark.parametrize("who", ["no key", "unknown key", "removed key"])
def test_strangers_cannot_call_anything(fleet, tmp_path, who):
    before = state_of(fleet)
    for srv in servers(fleet):
        keys = None
        if who != "no key":
            keys, public = fresh_keys(tmp_path, f"x{random.randrange(1 << 30)}", srv["public_key"])
        if who == "removed key":
            allow = auth.Allowlist(os.path.join(srv["state_dir"], "keys"))
            path = allow.add("admin", "temporary", public)
            with wire.connect(srv["tcp"], 10, keys) as c:
                assert c.call("_zerorpc_ping")[0] == "pong"
                os.unlink(path)
                with pytest.raises(errors.Unauthorized):
                    c.call("container_create", "busybox", "evil.one")
            continue
        with wire.connect(srv["tcp"], 10, keys) as c:
            for call in (("container_create", "busybox", "evil.one"), ("container_ls",), ("_zerorpc_inspect",)):
                with pytest.raises(errors.Unauthorized):
                    c.call(*call)
    assert state_of(fleet) == before


def test_read_only_key_lists_but_changes_nothing(fleet, tmp_path):
    before = state_of(fleet)
    for srv in servers(fleet):
        keys, public = fresh_keys(tmp_path, f"ro{random.randrange(1 << 30)}", srv["public_key"])
        auth.Allowlist(os.path.join(srv["state_dir"], "keys")).add("read", "viewer", public)
        with wire.connect(srv["tcp"], 10, keys) as c:
            assert isinstance(c.call("container_ls"), list)
            assert c.call("hostinfo")
            for call in (("container_create", "busybox", "ro.one"), ("container_exec", "x", ["true"]),
                         ("ops_run", "true"), ("create_container", "busybox", "ro.two"),
                         ("broadcast", "ops_run", ["true"]), ("queue", "ops_run", ["true"])):
                if call[0] not in c.call("_zerorpc_list"):
                    continue
                with pytest.raises(errors.PermissionDenied):
                    c.call(*call)
            if "broadcast" in c.call("_zerorpc_list"):
                assert c.call("broadcast", "hostinfo")["summary"]["ok"] == len(fleet["hosts"])
    assert state_of(fleet) == before


def test_a_host_is_its_key(fleet, tmp_path):
    hub = fleet["hub"]
    info = {"name": "host-1", "endpoint": "tcp://10.0.0.1:7000", "address": "", "labels": {}, "capacity": {}}
    stranger, _ = fresh_keys(tmp_path, "rogue", hub["public_key"])
    with wire.connect(hub["tcp"], 10, stranger) as c:
        with pytest.raises(errors.Unauthorized):
            c.call("host_register", info)
    impostor, public = fresh_keys(tmp_path, "impostor", hub["public_key"])
    auth.Allowlist(os.path.join(hub["state_dir"], "keys")).add("agent", "impostor", public)
    with wire.connect(hub["tcp"], 10, impostor) as c:
        with pytest.raises(errors.Unauthorized, match="another key"):
            c.call("host_register", info)
        with pytest.raises(errors.Unauthorized):
            c.call("host_heartbeat", "host-1", {"capacity": {}})
        with pytest.raises(errors.PermissionDenied):
            c.call("create_container", "busybox", "impostor.web")
    with operator(hub["tcp"]) as c:
        rows = {h["name"]: h for h in c.call("hosts")}
    assert rows["host-1"]["endpoint"] == fleet["hosts"][0]["tcp"]


def _hostile_tar(path, kind: str) -> None:
    with tarfile.open(path, "w") as t:
        if kind == "traversal":
            info = tarfile.TarInfo("../../etc/evil")
            t.addfile(info, fileobj=None)
        elif kind == "absolute":
            info = tarfile.TarInfo("/etc/evil")
            t.addfile(info)
        elif kind == "symlink-out":
            link = tarfile.TarInfo("etc")
            link.type, link.linkname = tarfile.SYMTYPE, "../../../../tmp"
            t.addfile(link)
            data = tarfile.TarInfo("etc/evil")
            t.addfile(data)
        elif kind == "device":
            dev = tarfile.TarInfo("dev/sda")
            dev.type, dev.devmajor, dev.devminor = tarfile.BLKTYPE, 8, 0
            t.addfile(dev)


@pytest.mark.parametrize("kind", ["traversal", "absolute", "symlink-out", "device", "one-byte"])
def test_hostile_archives_change_nothing(fleet, tmp_path, kind):
    path = tmp_path / f"{kind}.tar"
    if kind == "one-byte":
        path.write_bytes(b"x")
    else:
        _hostile_tar(path, kind)
    host = fleet["hosts"][0]
    images_dir = os.path.join(host["state_dir"], "images")
    listing = sorted(os.path.relpath(os.path.join(d, f), images_dir)
                     for d, _, fs in os.walk(images_dir) for f in fs)
    with wire.connect(host["ipc"], 30) as c:
        with pytest.raises((errors.InvalidImage, errors.InvalidArgument)):
            c.call("image_import", str(path), "hostile")
        assert [i["name"] for i in c.call("image_ls")] == ["busybox"]
    after = sorted(os.path.relpath(os.path.join(d, f), images_dir) for d, _, fs in os.walk(images_dir) for f in fs)
    assert after == listing
    assert not os.path.exists("/tmp/evil") and not os.path.exists("/etc/evil")


# Methods a fuzzer must not reach with random arguments: they run commands,
# contact other endpoints, or build images; everything else it may hit.
NOT_FUZZED = {"ops_run", "container_exec", "container_enter", "image_build", "image_import", "image_pull",
              "image_push", "image_rm", "image_gc", "broadcast", "queue", "host_register", "host_heartbeat",
              "create_container"}


def _random_value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(10 if depth < 4 else 7)
    if kind == 0:
        return rng.choice([0, -1, 1, 2**63 - 1, -2**63, 80, 65536, rng.randrange(-10**9, 10**9)])
    if kind == 1:
        return rng.choice([0.0, -1.5, 1e308, float("inf"), float("nan")])
    if kind == 2:
        return "".join(chr(rng.randrange(1, 0x2FFF)) for _ in range(rng.choice([0, 1, 8, 64, 300])))
    if kind == 3:
        return rng.choice(["busybox", "../../etc", "a b", "x" * 70, "busybox@", "web.one", "tcp", "/dev/zero"])
    if kind == 4:
        return os.urandom(rng.choice([0, 5, 100]))
    if kind == 5:
        return rng.choice([None, True, False])
    if kind == 6:
        return "y" * rng.choice([10_000, 1_000_000])
    if kind == 7:
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    if kind == 8:
        return {str(_random_value(rng, depth + 1))[:20]: _random_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    nested = []
    for _ in range(200):
        nested = [nested]
    return nested


def _fuzz(client: wire.RpcClient, methods: list[str], count: int, seed: int) -> dict:
    rng = random.Random(seed)
    seen: dict[str, int] = {}
    names = methods + ["no_such", "_zerorpc_inspect", "__init__", "_private", "x" * 300, ""]
    for i in range(count):
        method = rng.choice(names)
        args = [_random_value(rng) for _ in range(rng.randrange(5))]
        try:
            client.call(method, *args, timeout_s=20)
            seen["ok"] = seen.get("ok", 0) + 1
        except errors.DcError as exc:
            assert not isinstance(exc, (errors.InternalError, errors.CallTimeout)), (method, args, exc)
            seen[type(exc).__name__] = seen.get(type(exc).__name__, 0) + 1
        if i % 200 == 0:
            assert client.call("_zerorpc_ping", timeout_s=5)[0] == "pong"
    return seen


def _garbage(endpoint: str, count: int, seed: int, keys: auth.ClientKeys | None) -> None:
    rng = random.Random(seed)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    if keys is not None:
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = keys.server_public, keys.public, keys.secret
    sock.linger = 0
    sock.connect(endpoint)
    for _ in range(count):
        frames = [rng.choice([os.urandom(rng.randrange(64)),
                              msgpack.packb([_random_value(rng), _random_value(rng), _random_value(rng)],
                                            use_bin_type=True, default=str)])]
        sock.send_multipart(frames)
    gevent.sleep(0.5)
    sock.close()


def test_fuzzing_keeps_every_server_answering_and_changes_nothing(fleet):
    count = int(os.environ.get("DCF_FUZZ_CALLS", "1000"))
    before = state_of(fleet)
    for srv in servers(fleet):
        for endpoint in (srv["ipc"], srv["tcp"]):
            keys = client_keys(endpoint, None, None)
            with wire.connect(endpoint, 30, keys) as c:
                methods = [m for m in c.call("_zerorpc_list") if m not in NOT_FUZZED]
                seen = _fuzz(c, methods, count, seed=hash(endpoint) & 0xFFFF)
                _garbage(endpoint, 300, seed=1, keys=keys)
                assert c.call("_zerorpc_ping")[0] == "pong"
                assert isinstance(c.call("container_ls"), list)
            assert seen.get("InvalidArgument", 0) + seen.get("NoSuchMethod", 0) > count // 2, seen
    assert state_of(fleet) == before
