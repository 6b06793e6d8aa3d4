"""Nobody gets in who doesn't belong: CURVE on the fleet's TCP endpoints,
roles, host identity by key, and hostile input that changes nothing."""
from __future__ import annotations

import os
import random
import secrets
import tarfile
import time
import zlib

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
#: Methods that make things (containers, images, files at a given path,
#: routes, hosts) or run commands: this fuzz checks that nothing changes, so
#: it leaves them to tests/fleet/test_fuzz.py, which fuzzes them with
#: harmless arguments only.
NOT_FUZZED = {"ops_run", "container_exec", "container_enter", "container_create", "image_build", "image_import",
              "image_import_upload", "image_export", "image_pull", "image_push", "image_rm", "image_gc",
              "image_upload_begin", "image_upload_chunk", "image_upload_finish", "broadcast", "queue",
              "host_register", "host_heartbeat", "host_add", "host_remove", "create_container", "route_add",
              "route_rm", "build", "image_build_dockerfile", "deploy", "rollback", "app_rm", "volume_create",
              "volume_rm", "host_events", "image_pull_progress", "image_push_progress"}
#: Streams that follow what happens: with valid arguments they wait for the
#: next item, so no first item within the call timeout is their right answer.
FOLLOWERS = {"events_follow", "container_logs_follow", "deploy_follow"}


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
            client.call(method, *args, timeout_s=1 if method in FOLLOWERS else 20)
            seen["ok"] = seen.get("ok", 0) + 1
        except errors.CallTimeout as exc:
            assert method in FOLLOWERS, (method, args, exc)
            seen["following"] = seen.get("following", 0) + 1
        except errors.DcError as exc:
            assert not isinstance(exc, errors.InternalError), (method, args, exc)
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
                seen = _fuzz(c, methods, count, seed=zlib.crc32(endpoint.encode()))
                _garbage(endpoint, 300, seed=1, keys=keys)
                assert c.call("_zerorpc_ping")[0] == "pong"
                assert isinstance(c.call("container_ls"), list)
            assert seen.get("InvalidArgument", 0) + seen.get("NoSuchMethod", 0) > count // 2, seen
    assert state_of(fleet) == before


# ---------------------------------------------------------------- one host's key is one host

def host_key(fleet, i: int) -> auth.ClientKeys:
    """The real key pair of host ``i`` (1-based), as a client of the hub."""
    h = fleet["hosts"][i - 1]
    return auth.ClientKeys.from_files(os.path.join(h["state_dir"], "keys", "server.key_secret"),
                                      fleet["hub"]["public_key"])


def _register_info(name: str, endpoint: str, h: dict) -> dict:
    return {"name": name, "endpoint": endpoint, "address": h["address"], "labels": {},
            "capacity": {"memory_reservable_bytes": 1 << 30, "container_slots": 10}}


def _wait_log(path: str, offset: int, text: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with open(path, errors="replace") as f:
            f.seek(offset)
            if text in f.read():
                return
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.2)


def _victim_untouched(fleet, hub, name: str, since: float) -> None:
    with wire.connect(fleet["hosts"][0]["ipc"], 30) as host1:
        assert host1.call("container_inspect", name)["state"] == "running"
    assert hub.call("container_inspect", name)["host"] == "host-1"
    removed = [e for e in hub.call("events", since) if e["kind"] == "stale_copy_removed"]
    assert not [e for e in removed if e.get("name") == name], removed


def test_a_host_key_cannot_touch_another_hosts_container(hub, fleet):
    victim = f"victim.{secrets.token_hex(3)}"
    since = time.time()
    assert hub.call("create_container", "busybox", victim, {"host": "host-1"})["host"] == "host-1"
    h1, h2 = fleet["hosts"][0], fleet["hosts"][1]
    hub_log = fleet["hub"]["log"]
    summary = {"capacity": {"memory_reservable_bytes": 1 << 30, "container_slots": 10},
               "containers": [{"name": victim, "state": "running"}]}
    with wire.connect(fleet["hub"]["tcp"], 30, host_key(fleet, 2)) as evil:
        # a new name from a host's key, at another host's local or tcp endpoint
        with pytest.raises(errors.InvalidArgument, match="tcp://"):
            evil.call("host_register", _register_info("evil", h1["ipc"], h2))
        with pytest.raises(errors.Unauthorized, match="host-2"):
            evil.call("host_register", _register_info("evil", h1["tcp"], h2))
        with pytest.raises(errors.NoSuchHost):
            evil.call("host_heartbeat", "evil", summary)
        # another host's name
        with pytest.raises(errors.Unauthorized, match="another key"):
            evil.call("host_register", _register_info("host-1", h1["tcp"], h2))
        with pytest.raises(errors.Unauthorized):
            evil.call("host_heartbeat", "host-1", summary)
        # its own name at another host's ipc endpoint
        with pytest.raises(errors.InvalidArgument, match="tcp://"):
            evil.call("host_register", _register_info("host-2", h1["ipc"], h2))
        # its own name at another host's tcp endpoint: accepted, but the hub
        # expects host-2's key as that server's key, so it never reaches host-1
        offset = os.path.getsize(hub_log)
        try:
            evil.call("host_register", _register_info("host-2", h1["tcp"], h2))
            evil.call("host_heartbeat", "host-2", summary)
            _wait_log(hub_log, offset, f"could not remove stale {victim} from host-2")
            out = hub.call("broadcast", "container_ls", [], {"target": "host-2", "timeout_s": 3})
            assert out["results"]["host-2"]["status"] != "ok", out
        finally:
            evil.call("host_register", _register_info("host-2", h2["tcp"], h2))
        _victim_untouched(fleet, hub, victim, since)
        # its own name, reporting the victim: the hub asks host-2 only
        offset = os.path.getsize(hub_log)
        evil.call("host_heartbeat", "host-2", summary)
        _wait_log(hub_log, offset, f"could not remove stale {victim} from host-2")
    _victim_untouched(fleet, hub, victim, since)
    out = hub.call("broadcast", "container_ls", [], {"target": "host-2", "timeout_s": 10})
    assert out["results"]["host-2"]["status"] == "ok", out
    assert {h["name"] for h in hub.call("hosts")} == {h["name"] for h in fleet["hosts"]}


def test_a_new_host_needs_the_operators_host_add(hub, fleet, tmp_path):
    name = f"newhost-{secrets.token_hex(2)}"
    newcomer, public = fresh_keys(tmp_path, "newcomer", fleet["hub"]["public_key"])
    info = _register_info(name, "tcp://127.0.0.1:9", fleet["hosts"][0])
    allow = auth.Allowlist(os.path.join(fleet["hub"]["state_dir"], "keys"))
    path = allow.add("agent", f"pending-{name}", public)  # allowed as agent, but bound to no name
    try:
        with wire.connect(fleet["hub"]["tcp"], 30, newcomer) as c:
            with pytest.raises(errors.Unauthorized, match="not bound"):
                c.call("host_register", info)
        with pytest.raises(errors.Conflict, match="host-1"):
            hub.call("host_add", name, fleet["hosts"][0]["public_key"])  # a key is one host
        with pytest.raises(errors.Conflict, match="another key"):
            hub.call("host_add", "host-1", public)
        with pytest.raises(errors.InvalidArgument):
            hub.call("host_add", name, "not a key")
        os.unlink(path)
        added = hub.call("host_add", name, public)
        assert added["name"] == name and added["key"] == public
        assert hub.call("host_add", name, public)["added_at"] == added["added_at"]  # idempotent
        with wire.connect(fleet["hub"]["tcp"], 30, newcomer) as c:
            assert c.call("host_register", info)["name"] == name
            with pytest.raises(errors.Unauthorized, match=name):
                c.call("host_register", {**info, "name": name + "x"})
        assert hub.call("host_remove", name)["name"] == name
        with wire.connect(fleet["hub"]["tcp"], 30, newcomer) as c:  # removed: its key is gone too
            with pytest.raises(errors.Unauthorized):
                c.call("host_register", info)
    finally:
        if os.path.exists(path):
            os.unlink(path)
        try:
            hub.call("host_remove", name)
        except errors.NoSuchHost:
            pass
    assert name not in {h["name"] for h in hub.call("hosts")}


# ---------------------------------------------------------------- env values are secrets

def _strings(value) -> list[str]:
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [str(k), *_strings(v)]]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return [value.decode(errors="replace") if isinstance(value, bytes) else str(value)]


def test_read_keys_see_env_names_not_values_and_a_hosts_key_reads_nothing(hub, fleet, tmp_path):
    name, secret = f"secret.{secrets.token_hex(3)}", f"pw-{secrets.token_hex(8)}"
    hub.call("create_container", "busybox", name, {"host": "host-1", "env": {"DB_PASSWORD": secret, "MODE": "x"}})
    hub_srv, host1 = fleet["hub"], fleet["hosts"][0]
    with operator(hub_srv["tcp"]) as admin:  # admin sees the values
        assert admin.call("container_inspect", name)["env"] == {"DB_PASSWORD": secret, "MODE": "x"}
    readers = []
    for srv in (hub_srv, host1):
        keys, public = fresh_keys(tmp_path, f"ro{random.randrange(1 << 30)}", srv["public_key"])
        path = auth.Allowlist(os.path.join(srv["state_dir"], "keys")).add("read", f"viewer{len(readers)}", public)
        readers.append((srv, keys, path))
    with wire.connect(hub_srv["tcp"], 30, host_key(fleet, 2)) as c:  # a host's key (agent role) at the hub
        assert c.call("image_manifest", "busybox")["manifest"]["name"] == "busybox"  # it pulls
        for method, *args in (("container_inspect", name), ("container_ls",), ("container_logs", name),
                              ("hosts",), ("events",), ("hub_info",), ("image_ls",), ("hostinfo",),
                              ("broadcast", "container_inspect", [name], {"target": "host-1"})):
            with pytest.raises(errors.PermissionDenied, match=f"may not call {method}"):
                c.call(method, *args)
    try:
        for srv, keys, _ in readers:
            with wire.connect(srv["tcp"], 30, keys) as c:
                seen = c.call("container_inspect", name)
                assert seen["env"] == {"DB_PASSWORD": auth.REDACTED, "MODE": auth.REDACTED}, seen
                results = [seen, c.call("container_ls"), c.call("hostinfo")]
                if srv is hub_srv:
                    out = c.call("broadcast", "container_inspect", [name], {"target": "host-1"})
                    assert out["results"]["host-1"]["result"]["env"] == {"DB_PASSWORD": auth.REDACTED,
                                                                         "MODE": auth.REDACTED}, out
                    results += [out, c.call("broadcast", "container_ls"), c.call("network_ls")]
                leaked = [s for r in results for s in _strings(r) if secret in s]
                assert not leaked, leaked
    finally:
        for _, _, path in readers:
            if path:
                os.unlink(path)
