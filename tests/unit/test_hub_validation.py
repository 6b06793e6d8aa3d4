"""The hub checks every option it forwards or reads, by the agent's own rules
(dcctl.validate), before it touches them: bad input is InvalidArgument,
never InternalError, and never a lookup (NoSuchContainer, ImageNotFound)
that shows the check came too late.  A real hub service (real SQLite store
and registry) over a real ipc socket, with no hosts."""
import pytest

from dcctl import errors, wire
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore


@pytest.fixture
def hub(tmp_path):
    store = HubStore(str(tmp_path / "state"))
    service = HubService(store, Registry(str(tmp_path / "state" / "registry")))
    server = wire.Service(service, "dc-hub", heartbeat_s=1.0)
    endpoint = f"ipc://{tmp_path}/hub.sock"
    server.bind(endpoint)
    server.start()
    client = wire.connect(endpoint, timeout_s=20)
    yield client
    client.close()
    server.stop()
    service.stop()
    store.close()


BAD_CALLS = [
    # the case: float() of a map was an InternalError
    ("container_exec", "x", "x", {"timeout_s": {"a": 1}}),
    ("container_exec", "x", "x", {"timeout_s": -1}),
    ("container_exec", "x", "x", {"timeout_s": True}),
    ("container_exec", "x", "x", {"max_output_bytes": 1.5}),
    ("container_exec", "x", "x", {"env": {"1BAD": "v"}}),
    ("container_exec", "x", "x", {"env": {"A": b"bytes"}}),
    ("container_exec", "x", "x", {"env": ["A=1"]}),
    ("container_exec", "x", "x", {"stdin": 5}),
    ("container_exec", "x", "x", {"bogus": 1}),
    ("container_exec", "x", "x", ["not", "a", "map"]),
    ("container_exec", "x", ["ls", 5]),
    ("container_exec", "x", []),
    ("container_exec", "x", "   "),
    ("container_exec", "x", "\x00"),  # the agent's exec crashed on it (found by the fuzz soak)
    ("create_container", "busybox", "fz.a", {"command": "a\x00b"}),
    ("create_container", "busybox", "fz.a", {"env": {"A": {"nested": 1}}}),
    ("create_container", "busybox", "fz.a", {"cpus": "many"}),
    ("create_container", "busybox", "fz.a", {"cpus": 0}),
    ("create_container", "busybox", "fz.a", {"cpu_shares": 1}),
    ("create_container", "busybox", "fz.a", {"memory_bytes": 1.5}),
    ("create_container", "busybox", "fz.a", {"memory_bytes": 1024}),
    ("create_container", "busybox", "fz.a", {"pids_limit": 8}),
    ("create_container", "busybox", "fz.a", {"pids_limit": 1 << 23}),
    ("create_container", "busybox", "fz.a", {"restart": "sometimes"}),
    ("create_container", "busybox", "fz.a", {"restart": ["always"]}),
    ("create_container", "busybox", "fz.a", {"command": []}),
    ("create_container", "busybox", "fz.a", {"command": {"a": 1}}),
    ("create_container", "busybox", "fz.a", {"label": {"zone": 1}}),
    ("create_container", "busybox", "fz.a", {"label": "zone=a"}),
    ("create_container", "busybox", "fz.a", {"host": 5}),
    ("create_container", "busybox", "fz.a", {"no_start": "yes"}),
    ("create_container", "busybox", "fz.a", {"strategy": ["spread"]}),
    ("create_container", "busybox", "fz.a", {"strategy": {"a": 1}}),
    ("create_container", "busybox", "bad..name", None),
    ("container_stop", "x", -1),
    ("container_stop", "x", 1e9),
    ("container_logs", "x", 1 << 30),
    ("container_logs", "x", -1),
    ("container_enter", "x", [1], None),
    ("container_enter", "x", None, {"via": 3}),
    ("container_enter", "x", None, {"bogus": 1}),
    ("container_connection_add", "x", "sctp", 80),
    ("container_connection_add", "x", "tcp", 0),
    ("container_connection_add", "x", "tcp", 80, 70000),
    ("container_connection_rm", "x", "tcp", 65536),
    ("container_connection_rm", "x", 6, 80),
    ("broadcast", "hostinfo", [], {"fire_and_forget": "yes"}),
    ("broadcast", "hostinfo", [], {"timeout_s": {"a": 1}}),
    ("broadcast", "hostinfo", [], {"target": 5}),
    ("broadcast", "", [], None),
    ("queue", "hostinfo", [], {"idempotent": 2}),
    ("queue", "hostinfo", [], {"timeout_s": "x"}),
    ("queue", "", [], {"timeout_s": 0.1}),
]


@pytest.mark.parametrize("call", BAD_CALLS, ids=lambda c: f"{c[0]}{c[1:]!r}"[:90])
def test_bad_options_are_refused_before_any_lookup(hub, call):
    with pytest.raises(errors.InvalidArgument):
        hub.call(*call)


def test_good_options_get_as_far_as_the_lookup(hub):
    with pytest.raises(errors.NoSuchContainer):
        hub.call("container_exec", "x", "true", {"timeout_s": 5, "env": {"A": "1"}, "stdin": "in",
                                                "max_output_bytes": 10})
    with pytest.raises(errors.ImageNotFound):
        hub.call("create_container", "busybox", "fz.a", {"memory_bytes": 64 << 20, "cpus": 0.5, "pids_limit": 64,
                                                         "restart": "on-failure:3", "command": "sleep 1",
                                                         "env": {"A": "1"}, "label": {"zone": "a"}})
    with pytest.raises(errors.NoSuchContainer):
        hub.call("container_stop", "x", 2.5)


def test_an_unknown_create_option_names_every_option_the_hub_takes(hub):
    with pytest.raises(errors.InvalidArgument) as info:
        hub.call("create_container", "busybox", "fz.a", {"nosuchoption": 1})
    known = str(info.value).split("known: ", 1)[1].split(", ")
    assert {"route", "no_route", "memory_bytes", "pids_limit", "restart", "strategy"} <= set(known), known
    with pytest.raises(errors.InvalidArgument) as info:  # with a route option beside it too
        hub.call("create_container", "busybox", "fz.a", {"route": "a.dcf.test", "nosuchoption": 1})
    assert "'nosuchoption'" in str(info.value)


@pytest.mark.parametrize("name, words", [("", "host name is empty"), ("h" * 65, "host name is 65 chars"),
                                         ("bad/name", "bad host name")])
def test_host_add_names_the_host_in_its_errors(hub, name, words):
    with pytest.raises(errors.InvalidArgument) as got:
        hub.call("host_add", name, "x" * 40)
    assert words in str(got.value) and "container" not in str(got.value)


@pytest.mark.parametrize("argv, words", [
    (["--hub-name", ""], "hub name is empty"),
    (["--hub-name", "a" * 65], "hub name is 65 chars"),
    (["--hub-name", "h1", "--lease-s", "0"], "--lease-s 0"),
    (["--hub-name", "h1", "--lease-s", "-5"], "--lease-s -5"),
])
def test_dc_hub_refuses_bad_etcd_options_before_reaching_etcd(tmp_path, argv, words):
    from hub.main import open_store, parser
    args = parser().parse_args(["--state-dir", str(tmp_path), "--store", "etcd",
                                "--etcd", "http://127.0.0.1:9", *argv])
    with pytest.raises(errors.InvalidArgument) as got:
        open_store(args)
    assert words in str(got.value) and "container" not in str(got.value)
