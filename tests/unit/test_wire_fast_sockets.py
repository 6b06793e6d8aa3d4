"""zerorpc's gevent socket runs without pyzmq's enum arithmetic
(dcctl.wire.zrpcfast, installed by dcctl.wire.zrpc): real calls over a real ipc socket make
no Flag operation (``&``, ``|``) from zerorpc's socket code, and behave as
before (answers, a missing server's timeout)."""
from __future__ import annotations

import sys

import pytest

from dcctl import errors, wire
from dcctl.wire import zrpc, zrpcfast

FLAG_OPS = {"__and__", "__or__", "__rand__", "__ror__", "__xor__", "__invert__"}


class Echo:
    @wire.expose(access="read")
    def echo(self, value: str) -> str:
        return value


@pytest.fixture
def echo_endpoint(tmp_path):
    svc = wire.Service(Echo(), "echo")
    endpoint = f"ipc://{tmp_path}/echo.sock"
    svc.bind(endpoint)
    svc.start()
    yield endpoint
    svc.stop()


def _flag_ops_from_sockets(fn) -> int:
    """Flag operations called from zerorpc's socket methods while ``fn`` runs."""
    count = 0

    def profiler(frame, event, arg):
        nonlocal count
        if event == "call" and frame.f_code.co_name in FLAG_OPS and frame.f_code.co_filename.endswith("enum.py"):
            caller = frame.f_back
            if caller is not None and caller.f_code.co_name in ("send", "recv", "_on_state_changed", "_fast_send",
                                                                 "_fast_recv", "_fast_on_state_changed"):
                count += 1

    sys.setprofile(profiler)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def test_calls_make_no_flag_arithmetic_in_the_socket_code(echo_endpoint):
    assert zrpcfast.fast_sockets_installed()
    with wire.connect(echo_endpoint, timeout_s=10) as c:
        c.call("echo", "warm")

        def calls():
            for i in range(50):
                assert c.call("echo", f"v{i}") == f"v{i}"

        assert _flag_ops_from_sockets(calls) == 0


def test_install_is_idempotent_and_a_dead_server_still_times_out(echo_endpoint, tmp_path):
    zrpcfast.install_fast_sockets()
    zrpcfast.install_fast_sockets()
    assert zrpcfast.fast_sockets_installed()
    with wire.connect(echo_endpoint, timeout_s=10) as c:
        assert c.call("echo", "x") == "x"
    stale = tmp_path / "stale.sock"
    stale.touch()  # a socket file nobody serves
    with wire.connect(f"ipc://{stale}", timeout_s=0.5) as c:
        with pytest.raises((errors.Unreachable, errors.CallTimeout)):
            c.call("echo", "x")
