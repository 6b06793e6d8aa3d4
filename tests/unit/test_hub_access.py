"""Who may call what on a real hub served over CURVE (real keys, real
ZeroMQ sockets, the fake agents of tests/hubfakes.py): a host's key
registers, beats and pulls images only; pulling is its own access level,
which read and admin keys have too; every allowed key may call the
introspection builtins."""
from __future__ import annotations


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

