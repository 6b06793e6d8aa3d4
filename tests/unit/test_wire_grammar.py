"""The wire layer's shared grammars: endpoints, image refs and ids, the
env-key rule (one parser each; the old copies' edge cases pinned here)."""
from __future__ import annotations

import hashlib
import json

import pytest

from dcctl import errors, validate
from dcctl.wire import refs
from dcctl.wire.endpoint import Endpoint, ipc_endpoint, parse_endpoint, tcp_endpoint, validate_endpoint


# ---------------------------------------------------------------- endpoints

@pytest.mark.parametrize("text, kind, path, host, port", [
    ("ipc:///run/dcfleet/agent.sock", "ipc", "/run/dcfleet/agent.sock", "", None),
    ("ipc://relative.sock", "ipc", "relative.sock", "", None),
    ("tcp://10.212.0.1:7100", "tcp", "", "10.212.0.1", 7100),
    ("tcp://host-1.example:0", "tcp", "", "host-1.example", 0),
    ("tcp://*:7000", "tcp", "", "*", 7000),
    ("tcp://127.0.0.1:*", "tcp", "", "127.0.0.1", None),
    ("tcp://[::1]:65535", "tcp", "", "::1", 65535),
])
def test_endpoints_parse_to_kind_path_host_port(text, kind, path, host, port):
    ep = parse_endpoint(text)
    assert (ep.kind, ep.path, ep.host, ep.port, ep.text, str(ep)) == (kind, path, host, port, text, text)
    assert ep.is_ipc == (kind == "ipc") and ep.is_tcp == (kind == "tcp")
    assert validate_endpoint(text) == text


@pytest.mark.parametrize("text", [
    "", "ipc://", "ipc:// spaced", "ipc:///a\x00b", "tcp://h", "tcp://:7000", "tcp://h:", "tcp://h:65536",
    "tcp://h:123456", "tcp://h:-1", "tcp://a b:1", "http://h:80", "tcp:/h:1", "inproc://x", "tcp://h:1/x",
    "tcp://::1:7000",  # IPv6 goes in brackets
    None, 7000, b"ipc:///x",
])
def test_bad_endpoints_are_invalid_arguments(text):
    with pytest.raises(errors.InvalidArgument, match="expected ipc:///path or tcp://host:port"):
        parse_endpoint(text)


def test_loopback_and_port_forms():
    assert parse_endpoint("tcp://127.3.0.1:1").is_loopback and parse_endpoint("tcp://[::1]:1").is_loopback
    assert parse_endpoint("tcp://localhost:1").is_loopback
    assert not parse_endpoint("tcp://10.0.0.1:1").is_loopback and not parse_endpoint("ipc:///127.0.0.1").is_loopback
    assert parse_endpoint("tcp://10.0.0.1:7000").without_port() == "tcp://10.0.0.1"
    assert parse_endpoint("tcp://[fd00::1]:7000").without_port() == "tcp://[fd00::1]"
    assert parse_endpoint("tcp://*:7000").with_port(0) == "tcp://*:0"
    assert tcp_endpoint("fd00::1", 5) == "tcp://[fd00::1]:5" and tcp_endpoint("h", 5) == "tcp://h:5"
    assert ipc_endpoint("/run/x.sock") == "ipc:///run/x.sock"
    with pytest.raises(errors.InvalidArgument):
        ipc_endpoint("")
    assert parse_endpoint("ipc:///x") == Endpoint("ipc", "ipc:///x", path="/x")


# ---------------------------------------------------------------- image refs

def test_refs_and_names():
    assert refs.parse_ref("busybox") == refs.ImageRef("busybox")
    assert refs.parse_ref("my.app-2@3f2a") == refs.ImageRef("my.app-2", prefix="3f2a")
    assert refs.parse_ref("ubuntu:24.04@beef") == refs.ImageRef("ubuntu", "24.04", "beef")
    assert str(refs.parse_ref("a@" + "0" * 64)) == "a@" + "0" * 64 and str(refs.parse_ref("a:v1@beef")) == "a:v1@beef"
    image = {"name": "a", "id": "beef" + "0" * 60}
    assert refs.parse_ref("a@beef").matches(image) and not refs.parse_ref("b@beef").matches(image)
    assert refs.parse_ref("a:latest").matches(image)  # an untagged image answers to "latest"
    assert not refs.parse_ref("a:v1").matches(image) and refs.parse_ref("a:v1").matches({**image, "tag": "v1"})
    assert refs.parse_ref("a").matches({**image, "tag": "v1"})  # no tag: any
    assert refs.image_name("x" * 64) == "x" * 64 and refs.image_tag("_" + "x" * 127) == "_" + "x" * 127


@pytest.mark.parametrize("ref", ["", "Busybox", "-x", "a..b", "x" * 65, "a@", "a@abc", "a@ABCD", "a@" + "0" * 65,
                                 "a@beef@beef", "@beef", "a b", None, 5, "a:", "a:-x", "a:" + "x" * 129,
                                 "a:b:c", ":v1"])
def test_bad_refs_are_invalid_arguments(ref):
    with pytest.raises(errors.InvalidArgument):
        refs.parse_ref(ref)


def test_digests_and_manifest_ids():
    d = "ab" * 32
    assert refs.digest(d) == d
    for bad in ("AB" * 32, "ab" * 31, d + "a", None):
        with pytest.raises(errors.InvalidArgument, match="64 lowercase hex"):
            refs.digest(bad)
    manifest = {"name": "a", "layers": [d], "env": {"B": "2", "A": "1"}, "id": "ignored"}
    body = json.dumps({k: v for k, v in manifest.items() if k != "id"}, sort_keys=True, separators=(",", ":"))
    assert refs.manifest_id(manifest) == hashlib.sha256(body.encode()).hexdigest()
    assert refs.short_ref({"name": "a", "id": d}) == "a@" + d[:12]


def test_hub_and_images_share_the_ref_grammar():
    """The hub's registry and the agents' image store use refs' functions."""
    from hub import registry
    from images import manifest
    from images.errors import InvalidImage
    assert registry.manifest_id is refs.manifest_id and manifest.manifest_id is refs.manifest_id
    assert manifest.parse_ref("a@beef") == ("a", "beef")
    with pytest.raises(InvalidImage):
        manifest.parse_ref("a@abc")
    with pytest.raises(errors.InvalidArgument):
        registry.Registry.resolve(None, "a@abc")  # refused before any registry file is read


# ---------------------------------------------------------------- env keys

@pytest.mark.parametrize("key, ok", [
    ("PATH", True), ("_x1", True), ("a" * 128, True), ("a" * 129, False), ("1A", False), ("A-B", False),
    ("", False), ("A B", False), ("É", False), (None, False), (1, False),
])
def test_one_env_key_rule(key, ok):
    from images.errors import InvalidImage
    from images.manifest import normalize_fields
    from images.rootfs import env_file_text
    assert validate.is_env_key(key) is ok
    if ok:
        assert validate.env({key: "v"}) == {key: "v"}
        assert normalize_fields({"env": {key: "v"}})["env"] == {key: "v"}
        assert env_file_text({key: "v"}) == f"export {key}=v\n"
        return
    with pytest.raises(errors.InvalidArgument, match="environment variable name"):
        validate.env({key: "v"})
    with pytest.raises(InvalidImage):
        normalize_fields({"env": {key: "v"}})
    if isinstance(key, str):
        with pytest.raises(InvalidImage):
            env_file_text({key: "v"})


# ---------------------------------------------------------------- client config

def test_client_config_paths_from_a_given_environment(tmp_path):
    from dcctl.wire import clientconfig
    env = {"DCCTL_CONFIG_DIR": str(tmp_path)}
    assert clientconfig.config_dir(env) == str(tmp_path)
    assert clientconfig.key_pair_path(env) == f"{tmp_path}/dcctl.key_secret"
    assert clientconfig.known_server_key_path("tcp://10.0.0.1:7000", env) == f"{tmp_path}/servers/10.0.0.1_7000.key"
    assert clientconfig.known_server_key_path("tcp://[fd00::1]:7000", env) == f"{tmp_path}/servers/fd00__1_7000.key"
    with pytest.raises(errors.InvalidArgument):
        clientconfig.known_server_key_path("ipc:///x", env)
    assert clientconfig.client_keys("ipc:///x", environ=env) is None
    assert clientconfig.client_keys("tcp://10.0.0.1:7000", environ=env) is None  # no key pair: no CURVE


def test_a_default_server_key_path_of_40_characters_is_not_taken_for_a_z85_key(tmp_path, monkeypatch):
    """The known key's path is a path even when it happens to be 40 long
    (the old rule took any 40-character value for a Z85 key)."""
    from dcctl import auth
    from dcctl.wire import clientconfig
    _, pair = auth.keygen(str(tmp_path), "me")
    monkeypatch.chdir(tmp_path)
    endpoint = "tcp://" + "h" * 21 + ":7999"
    env = {"DCCTL_CONFIG_DIR": "c"}
    assert len(clientconfig.known_server_key_path(endpoint, env)) == 40
    with pytest.raises(errors.InvalidArgument, match="no known server key") as info:
        clientconfig.client_keys(endpoint, pair, environ=env)
    assert "--server-key" in info.value.hint
    server_public = auth.load_pair(pair)[0].decode()
    keys = clientconfig.client_keys(endpoint, pair, server_public, environ=env)  # a given Z85 key
    assert keys.server_public == server_public.encode()
