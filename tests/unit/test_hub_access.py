"""Who may call what on a real hub served over CURVE (real keys, real
ZeroMQ sockets, the fake agents of tests/hubfakes.py): a host's key
registers, beats and pulls images only; pulling is its own access level,
which read and admin keys have too; every allowed key may call the
introspection builtins."""
from __future__ import annotations

import hashlib

import pytest

from dcctl import auth, errors, wire
from tests.hubfakes import FakeFleet, LAYER

ROLES = ("admin", "read", "agent", "router")
READS = [("container_ls",), ("container_inspect", "acc.web"), ("container_logs", "acc.web"), ("hosts",),
         ("events",), ("hub_info",), ("image_ls",), ("broadcast", "container_ls")]


@pytest.fixture
def served(tmp_path):
    fleet = FakeFleet(tmp_path, {"h1": 4})
    manifest = fleet.push_image()
    fleet.hub.create_container("busybox", "acc.web", {"host": "h1"})
    svc, endpoint, server_pub = fleet.serve_hub_curve(str(tmp_path / "hub-keys"))
    keys = {}
    for role in ROLES:
        pub, sec = auth.keygen(str(tmp_path / "clients"), f"acc-{role}")
        svc.allowlist.add(role, f"acc-{role}", auth.load_public(pub).decode())
        keys[role] = auth.ClientKeys.from_files(sec, server_pub)
    yield endpoint, keys, manifest
    svc.stop()
    fleet.close()


def test_a_hosts_key_pulls_images_and_reads_nothing_else(served):
    endpoint, keys, manifest = served
    digest = manifest["layers"][0]
    with wire.connect(endpoint, 10, keys["agent"]) as c:
        assert c.call("image_manifest", "busybox")["manifest"]["id"] == manifest["id"]
        assert c.call("image_layer_read", digest, 0, 1 << 20) == LAYER
        for method, *args in READS:
            with pytest.raises(errors.PermissionDenied, match=f"may not call {method}"):
                c.call(method, *args)
    for role in ("read", "admin"):  # pulling is granted to read and admin keys too
        with wire.connect(endpoint, 10, keys[role]) as c:
            assert c.call("image_manifest", "busybox")["manifest"]["id"] == manifest["id"]
            assert c.call("image_layer_read", digest, 0, 1 << 20) == LAYER
            assert {r["name"] for r in c.call("container_ls")} == {"acc.web"}
    with wire.connect(endpoint, 10, keys["router"]) as c:
        with pytest.raises(errors.PermissionDenied, match="may not call image_manifest"):
            c.call("image_manifest", "busybox")


@pytest.mark.parametrize("role", ROLES)
def test_every_role_may_call_the_builtins(served, role):
    endpoint, keys, _ = served
    with wire.connect(endpoint, 10, keys[role]) as c:
        assert "route_ls" in c.call("_zerorpc_list")
        assert c.call("_zerorpc_name") == "dc-hub"
        assert c.call("_zerorpc_ping") == ["pong", "dc-hub"]
        assert "route_ls" in c.call("_zerorpc_inspect")["methods"]
        assert c.call("_zerorpc_help", "route_ls")
    if role == "router":
        with wire.connect(endpoint, 10, keys[role]) as c:
            assert [r["name"] for r in c.call("route_ls")] == ["acc.web.dcf.test"]



@pytest.fixture
def insider(tmp_path):
    """A hub over CURVE and one host's key (host_add'ed as h9): what a
    client holding that key may send as the host's own word."""
    fleet = FakeFleet(tmp_path, {"h1": 4})
    svc, endpoint, server_pub = fleet.serve_hub_curve(str(tmp_path / "hub-keys"))
    pub, sec = auth.keygen(str(tmp_path / "clients"), "h9")
    key = auth.load_public(pub).decode()
    svc.allowlist.add("agent", "h9", key)
    fleet.store.bind_key("h9", key)
    yield fleet, endpoint, auth.ClientKeys.from_files(sec, server_pub)
    svc.stop()
    fleet.close()


GOOD = {"name": "h9", "endpoint": "tcp://10.0.0.9:7000", "address": "10.0.0.9", "labels": {"zone": "a"},
        "capacity": {"memory_reservable_bytes": 8 << 30, "container_slots": 200}, "boot_id": "b9"}


@pytest.mark.parametrize("field, value", [
    ("address", "1" * 100_000), ("address", "0.0.0.0"), ("address", "::"), ("address", "224.0.0.1"),
    ("address", "host.example"), ("address", "10.0.0.9:80"), ("address", 7),
    ("endpoint", "tcp://0.0.0.0:7000"), ("endpoint", "tcp://*:7000"), ("endpoint", "tcp://10.0.0.9:0"),
    ("endpoint", "tcp://10.0.0.9:*"), ("endpoint", "tcp://[::]:7000"), ("endpoint", "tcp://agent.example:7000"),
    ("endpoint", "tcp://239.1.1.1:7000"),
    ("labels", {f"k{i}": "v" for i in range(33)}), ("labels", {"k" * 64: "v"}), ("labels", {"zone": "a" * 256}),
    ("labels", {"zone=a": "b"}), ("labels", {"zone": "a\nb"}), ("labels", {"": "v"}),
    ("capacity", {f"f{i}": 1 for i in range(17)}), ("capacity", {"Bad Name": 1}),
    ("capacity", {"memory_reservable_bytes": "8G", "container_slots": 10}),
], ids=lambda v: repr(v)[:32])
def test_a_hosts_key_cannot_register_a_field_the_hub_would_trust_unchecked(insider, field, value):
    fleet, endpoint, keys = insider
    with wire.connect(endpoint, 10, keys) as c:
        with pytest.raises(errors.InvalidArgument):
            c.call("host_register", {**GOOD, field: value})
        assert "h9" not in {h["name"] for h in fleet.hub.hosts()}  # nothing kept
        c.call("host_register", GOOD)
        with pytest.raises(errors.InvalidArgument):  # a registered host cannot change it either
            c.call("host_register", {**GOOD, field: value})
    row = fleet.store.host("h9")
    assert (row["endpoint"], row["address"], row["labels"], row["capacity"]) == (
        GOOD["endpoint"], GOOD["address"], GOOD["labels"], GOOD["capacity"])


@pytest.mark.parametrize("ep, address, shown", [("tcp://10.0.0.9:7000", "10.0.0.9", "10.0.0.9"),
                                                ("tcp://[fd00::9]:65535", "fd00:0::9", "fd00::9"),
                                                ("tcp://127.0.0.1:1", "", "")])
def test_a_hosts_key_registers_a_specific_endpoint_and_address(insider, ep, address, shown):
    fleet, endpoint, keys = insider
    with wire.connect(endpoint, 10, keys) as c:
        c.call("host_register", {**GOOD, "endpoint": ep, "address": address})
    row = {h["name"]: h for h in fleet.hub.hosts()}["h9"]
    assert (row["endpoint"], row["address"]) == (ep, shown)


@pytest.mark.parametrize("summary", [
    {"containers": [{"name": ["x"]}]}, {"containers": [{"name": "x", "state": {}}]}, {"containers": ["x"]},
    {"containers": {"name": "x"}}, {"capacity": {"memory_reservable_bytes": 1.5, "container_slots": 10}},
    {"metrics_url": "h" * 100_000},
], ids=lambda v: repr(v)[:40])
def test_a_heartbeat_of_another_shape_is_refused_before_it_is_taken(insider, summary):
    fleet, endpoint, keys = insider
    beat = {"capacity": GOOD["capacity"], "boot_id": "b9", "containers": []}
    with wire.connect(endpoint, 10, keys) as c:
        c.call("host_register", GOOD)
        c.call("host_heartbeat", "h9", beat)
        heard = fleet.hub.beats.last("h9")
        with pytest.raises(errors.InvalidArgument):
            c.call("host_heartbeat", "h9", {**beat, **summary})
        assert fleet.hub.beats.last("h9") == heard  # the beat was not taken
        c.call("host_heartbeat", "h9", beat)  # the host is served as before
    fleet.hub.beats.flush()
    assert fleet.store.host("h9")["capacity"] == GOOD["capacity"]


def test_capacity_figures_out_of_bounds_are_clamped_not_refused(insider):
    """An absurd figure (1 << 50 bytes, a negative count) cannot take every
    create, but the host is not refused either: refused beats would have it
    judged lost while its containers run on (and rescheduled elsewhere)."""
    fleet, endpoint, keys = insider
    from hub.membership import MAX_CAPACITY_BYTES, MAX_CAPACITY_COUNT
    with wire.connect(endpoint, 10, keys) as c:
        c.call("host_register", {**GOOD, "capacity": {"memory_reservable_bytes": 1 << 50, "container_slots": -1}})
        assert fleet.store.host("h9")["capacity"] == {"memory_reservable_bytes": MAX_CAPACITY_BYTES,
                                                      "container_slots": 0}
        c.call("host_heartbeat", "h9", {"capacity": {"memory_reservable_bytes": -5, "container_slots": 1 << 20,
                                                     "memory_reserved_bytes": 1 << 60},
                                        "boot_id": "b9", "containers": []})
    fleet.hub.beats.flush()
    assert fleet.store.host("h9")["capacity"] == {"memory_reservable_bytes": 0, "container_slots": MAX_CAPACITY_COUNT,
                                                  "memory_reserved_bytes": MAX_CAPACITY_BYTES}


def test_a_hosts_key_reads_past_any_end_as_empty_and_a_bad_range_is_typed(insider):
    """image_layer_read and image_upload_read: 2**62 was EINVAL from the
    seek, an InternalError; the documented answer past the end is b""."""
    fleet, endpoint, keys = insider
    digest = fleet.push_image()["layers"][0]
    blob = b"an uploaded archive"
    sha = hashlib.sha256(blob).hexdigest()
    fleet.hub.image_upload_begin(len(blob), sha)
    fleet.hub.image_upload_chunk(sha, 0, blob)
    fleet.hub.uploads.complete(sha)
    with wire.connect(endpoint, 10, keys) as c:
        for method, ident, data in (("image_layer_read", digest, LAYER), ("image_upload_read", sha, blob)):
            assert c.call(method, ident, 0, 1 << 30) == data and c.call(method, ident, 3, 4) == data[3:7]
            for offset in (len(data), 1 << 40, 2 ** 62, 2 ** 63 - 1):
                assert c.call(method, ident, offset, 100) == b""
            for offset, length in ((2 ** 63, 1), (2 ** 64 - 1, 1), (-1, 1), (0, -1), (0, 2 ** 64 - 1)):
                with pytest.raises(errors.InvalidArgument, match="offset|length"):
                    c.call(method, ident, offset, length)
