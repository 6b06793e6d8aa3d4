"""The wire package's public surface, pinned (as httpx's
tests/test_exported_members.py does), and its one compatibility module."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import dcctl.wire as wire

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EXPORTED = [
    "Caller", "DEFAULT_HEARTBEAT_SECONDS", "DEFAULT_TIMEOUT_SECONDS", "Endpoint", "Exposed", "MAX_NESTING",
    "MAX_REQUEST_BYTES", "MAX_RESULT_BYTES", "MAX_VALUES", "MethodSpec", "RpcClient", "Service", "WIRE_INT_MAX",
    "WIRE_INT_MIN", "ZERORPC_NOISE", "ZerorpcNoiseFilter", "check_result", "check_wire_ints", "claim_ipc_path",
    "connect", "current_caller", "expose", "ipc_endpoint", "method_table", "parse_endpoint",
    "quiet_zerorpc_noise", "tcp_endpoint", "validate_endpoint", "wire_problem",
    "client", "clientconfig", "codec", "coerce", "endpoint", "fanout", "ipcpath", "methods", "refs", "relay", "server",
    "zrpc",
]


def test_all_is_pinned_and_every_name_resolves_inside_the_package():
    assert wire.__all__ == EXPORTED
    for name in wire.__all__:
        value = getattr(wire, name)
        module = getattr(value, "__module__", None) or getattr(value, "__name__", "")
        if callable(value) or isinstance(value, type(wire)):
            assert module.startswith("dcctl.wire"), (name, module)
    assert sorted(dir(wire)) == sorted(set(dir(wire)))
    assert set(EXPORTED) <= set(dir(wire))


def test_the_names_of_the_old_wire_module_keep_working():
    """What dcctl/wire.py exported (and callers used) before it became a package."""
    from dcctl.wire import (DEFAULT_TIMEOUT_SECONDS, MAX_REQUEST_BYTES, MAX_RESULT_BYTES, Exposed,  # noqa: F401
                            MethodSpec, RpcClient, Service, check_result, check_wire_ints, claim_ipc_path,
                            connect, current_caller, expose, method_table, quiet_zerorpc_noise,
                            validate_endpoint, wire_problem)
    assert wire.connect is connect and wire.Service is Service and DEFAULT_TIMEOUT_SECONDS == 30.0


def test_unknown_names_are_attribute_errors():
    try:
        wire.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("no AttributeError")


def test_the_grammar_modules_import_without_gevent_zeromq_or_zerorpc():
    code = ("import sys\n"
            "from dcctl import wire\n"
            "from dcctl.wire import endpoint, refs, coerce, clientconfig\n"
            "wire.parse_endpoint('ipc:///x'); clientconfig.config_dir({})\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('gevent', 'zmq', 'zerorpc', 'msgpack')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _sources():
    for top in ("agents", "bench", "dcctl", "hub", "images", "lxcwrap", "ops", "router"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    path = os.path.join(d, f)
                    yield os.path.relpath(path, ROOT), open(path, encoding="utf-8").read()


PRIVATE = re.compile(r"\._events\b|_events\._recv|\._socket\b|_inject_builtins|_print_traceback|"
                     r"get_pyzmq_frame_buffer|zerorpc\.events")
IMPORTS_ZERORPC = re.compile(r"^\s*(import|from) zerorpc\b", re.M)
IMPORTS_ZMQ = re.compile(r"^\s*(import|from) zmq\b", re.M)
#: pyzmq: the zerorpc compatibility module, the client handshake monitor, the terminal relay's channel, the
#: fan-out client's shared ROUTER sockets, and
#: (outside the wire package) the ZAP handler and key files of dcctl.auth.
ZMQ_ALLOWED = {"dcctl/wire/zrpc.py", "dcctl/wire/monitor.py", "dcctl/wire/zrpcfast.py", "dcctl/wire/zrpcserve.py", "dcctl/wire/relay.py", "dcctl/auth.py",
               "dcctl/wire/fanout.py"}


def test_nothing_reaches_past_the_zerorpc_compatibility_module():
    private = [p for p, text in _sources() if PRIVATE.search(text) and p != "dcctl/wire/zrpc.py"]
    assert private == []
    # the stock zerorpc client only in zrpc and as the raw baseline of bench/fanout and bench/scale
    zerorpc_users = {p for p, text in _sources() if IMPORTS_ZERORPC.search(text)}
    assert zerorpc_users <= {"dcctl/wire/zrpc.py", "dcctl/wire/zrpcfast.py", "dcctl/wire/zrpcserve.py", "bench/fanout.py", "bench/scale.py",
                            "bench/rpc.py"}, \
        zerorpc_users
    zmq_users = {p for p, text in _sources() if IMPORTS_ZMQ.search(text)}
    assert zmq_users <= ZMQ_ALLOWED, zmq_users - ZMQ_ALLOWED


def test_every_wire_module_stays_well_under_500_lines():
    for p, text in _sources():
        if p.startswith(("dcctl/wire/", "dcctl/cli/")):
            assert text.count("\n") < 450, p


# ---------------------------------------------------------------- no zmq type escapes

def test_an_endpoint_zeromq_refuses_is_unreachable_not_a_zmq_error():
    import pytest
    from dcctl import errors
    with pytest.raises(errors.Unreachable, match=r"cannot connect to tcp://\*:7999") as info:
        wire.connect("tcp://*:7999")
    assert "bind address" in info.value.hint


def test_a_key_zeromq_refuses_is_an_invalid_argument(tmp_path):
    import pytest
    from dcctl import auth, errors
    _, pair = auth.keygen(str(tmp_path), "me")
    public, secret = auth.load_pair(pair)
    with pytest.raises(errors.InvalidArgument, match="bad CURVE key"):
        wire.RpcClient("tcp://127.0.0.1:9", keys=auth.ClientKeys(public, secret, b"short"))


def test_dcctl_reports_a_bind_address_as_unreachable(tmp_path):
    env = {**os.environ, "DCCTL_CONFIG_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "-H", "tcp://*:7999", "hostinfo"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stderr.startswith("dcctl: Unreachable: cannot connect to tcp://*:7999") and "Traceback" not in done.stderr
