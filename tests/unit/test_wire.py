"""The wire layer over real ZeroMQ sockets on throwaway ipc:// endpoints."""
import logging
import os
import stat
import time
import uuid

import gevent
import msgpack
import pytest
import zmq

from dcctl import errors, wire
from tests.ports import free_port
from tests.waiting import wait_for


class Sample:
    def __init__(self):
        self.finished = []

    @wire.expose
    def add(self, a: int, b: int = 2) -> int:
        """Add two integers."""
        return a + b

    @wire.expose
    def echo(self, value: list | str, options: dict | None = None) -> dict:
        return {"value": value, "options": options}

    @wire.expose
    def boom(self) -> None:
        raise RuntimeError("secret detail /etc/shadow")

    @wire.expose
    def typed(self) -> None:
        raise errors.NoSuchContainer("no container 'x'")

    @wire.expose
    def intkeys(self) -> dict:
        return {1: 2}

    @wire.expose
    def huge(self) -> bytes:
        return b"x" * (wire.MAX_RESULT_BYTES + 1)

    @wire.expose(shielded=True)
    def slow_write(self, tag: str) -> str:
        gevent.sleep(1.5)
        self.finished.append(tag)
        return tag

    @wire.expose
    def nap(self, seconds: float) -> str:
        gevent.sleep(seconds)
        return "rested"

    def not_exposed(self):
        return "leak"


@pytest.fixture
def served(tmp_path):
    target = Sample()
    svc = wire.Service(target, "sample", heartbeat_s=0.5)
    endpoint = f"ipc://{tmp_path}/s.sock"
    svc.bind(endpoint)
    svc.start()
    client = wire.connect(endpoint, timeout_s=5)
    yield svc, client, target, endpoint
    client.close()
    svc.stop()


def test_calls_and_typed_errors(served):
    _, c, _, _ = served
    assert c.add(1) == 3 and c.add(1, 5) == 6
    with pytest.raises(errors.InvalidArgument, match="'a' must be int"):
        c.add("1")
    with pytest.raises(errors.InvalidArgument, match="takes 1 to 2 arguments; got 3"):
        c.add(1, 2, 3)
    with pytest.raises(errors.InvalidArgument):
        c.add(True)
    with pytest.raises(errors.NoSuchContainer, match="no container 'x'"):
        c.typed()
    with pytest.raises(errors.NoSuchMethod):
        c.not_exposed()
    with pytest.raises(errors.NoSuchMethod):
        c.call("__init__")


def test_unexpected_errors_leak_no_detail(served):
    _, c, _, _ = served
    with pytest.raises(errors.InternalError) as info:
        c.boom()
    assert "secret" not in str(info.value) and "Traceback" not in str(info.value)


def test_unpackable_and_oversized_results_are_typed(served):
    _, c, _, _ = served
    with pytest.raises(errors.InternalError, match="non-string map key"):
        c.intkeys()
    with pytest.raises(errors.ResultTooLarge):
        c.huge()


def test_inspect_answers_on_this_python(served):
    _, c, _, _ = served
    info = c.call("_zerorpc_inspect")
    assert set(info["methods"]) == {"add", "echo", "boom", "typed", "intkeys", "huge", "slow_write", "nap"}
    assert info["methods"]["add"]["args"] == [{"name": "a", "type": "int"},
                                              {"name": "b", "type": "int", "default": 2}]
    assert info["methods"]["add"]["doc"] == "Add two integers."
    assert c.call("_zerorpc_list") == sorted(info["methods"])
    assert c.call("_zerorpc_args", "add") == [["a", "b"], None, None, [2]]


def test_ipc_socket_is_root_only(served):
    _, _, _, endpoint = served
    mode = os.stat(wire.parse_endpoint(endpoint).path).st_mode
    assert stat.S_IMODE(mode) == 0o600


def test_shielded_call_finishes_after_the_client_gives_up(served):
    _, c, target, _ = served
    with pytest.raises(errors.CallTimeout):
        c.call("slow_write", "t1", timeout_s=0.3)
    gevent.sleep(2.5)  # past the heartbeat loss that kills the call's greenlet
    assert target.finished == ["t1"]


def test_garbage_keeps_the_server_answering(served):
    _, c, _, endpoint = served
    import zmq.green as zmq
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    for junk in [b"", b"\x00", b"\xc1" * 10, b"\x93\x01\x02\x03", os.urandom(1000)]:
        sock.send(junk)
    gevent.sleep(0.2)
    sock.close(0)
    assert c.add(2) == 4


def test_unreachable_and_timeout(tmp_path):
    with pytest.raises(errors.Unreachable):
        wire.connect(f"ipc://{tmp_path}/none.sock", timeout_s=1).call("x")
    with pytest.raises(errors.InvalidArgument):
        wire.connect("http://x")


def test_a_stale_ipc_socket_is_unreachable_not_a_timeout(tmp_path):
    import socket as so
    path = str(tmp_path / "stale.sock")
    s = so.socket(so.AF_UNIX, so.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    with pytest.raises(errors.Unreachable, match="stale"):
        wire.connect(f"ipc://{path}", timeout_s=0.5).call("x")
    svc = wire.Service(Sample(), "again")
    svc.bind(f"ipc://{path}")  # a stale socket is reclaimed by a new server
    with pytest.raises(errors.Conflict):
        wire.Service(Sample(), "third").bind(f"ipc://{path}")  # a live one is not
    svc.stop()


def test_close_fails_the_calls_in_flight_at_once(served):
    _, _, _, endpoint = served
    client = wire.connect(endpoint, timeout_s=120)
    waiting = gevent.spawn(client.call, "nap", 100.0)
    wait_for(lambda: client._calls, 5, "the call to be in flight")
    client.close("the server restarted")
    wait_for(waiting.ready, 5, "the waiting call to end")
    assert isinstance(waiting.exception, errors.Unreachable)
    assert "the server restarted" in str(waiting.exception)
    with pytest.raises(errors.Unreachable):
        client.call("add", 1)


def test_a_refused_strangers_close_never_hangs(tmp_path):
    port = free_port()
    svc = wire.Service(Sample(), "curve", keys_dir=str(tmp_path / "keys"))
    svc.bind(f"tcp://127.0.0.1:{port}")
    svc.start()
    try:
        for _ in range(5):  # no key: refused at the handshake, then closed
            client = wire.connect(f"tcp://127.0.0.1:{port}", timeout_s=30)
            with pytest.raises(errors.Unauthorized):
                client.call("add", 1)
            closing = gevent.spawn(client.close)
            wait_for(closing.ready, 10, "close() to return")
            assert closing.successful()
    finally:
        svc.stop()


def test_tcp_clients_opened_and_closed_leak_no_sockets(tmp_path):
    """Each tcp:// client watches its handshakes with a socket monitor; a
    client closed before the watch ever ran must still close the monitor's
    sockets (the old code kept two per client: ZeroMQ's limit of 1,023
    sockets after about 511 clients), and a new client whose socket reuses
    a closed one's file descriptor must not find the monitor's inproc
    address taken ('Address already in use')."""
    port = free_port()
    svc = wire.Service(Sample(), "many")
    svc.bind(f"tcp://127.0.0.1:{port}", insecure=True)
    svc.start()
    try:
        fds = len(os.listdir("/proc/self/fd"))
        for i in range(1200):
            client = wire.connect(f"tcp://127.0.0.1:{port}", timeout_s=10)
            if i % 100 == 0:
                assert client.call("add", i) == i + 2
            client.close()
        gevent.sleep(0.5)  # libzmq's reaper closes the sockets
        assert len(os.listdir("/proc/self/fd")) < fds + 20
    finally:
        svc.stop()


@pytest.mark.parametrize("value", [1 << 64, -(1 << 63) - 1, 10 ** 30, {"memory_bytes": 1 << 70}, [[1 << 64]]])
def test_integers_msgpack_cannot_carry_are_invalid_argument(served, value):
    _, client, _, _ = served
    with pytest.raises(errors.InvalidArgument, match="out of range"):
        client.call("echo", [value])
    assert client.call("echo", [(1 << 64) - 1, -(1 << 63)])["value"] == [(1 << 64) - 1, -(1 << 63)]


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_zerorpc_noise_never_reaches_an_operators_log(served):
    """An idle server with zerorpc's two noisy cases made to happen for
    real: an event for a channel it does not know (a late reply, a
    heartbeat from a peer's previous life) and a missed socket wake-up
    (something else took the FD's edge, as gevent_zmq's log says)."""
    svc, client, _, endpoint = served
    handler, root = _Records(), logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    ctx = zmq.Context()
    raw = ctx.socket(zmq.DEALER)
    raw.linger = 0
    raw.connect(endpoint)
    try:
        assert client.call("add", 1) == 3
        gevent.sleep(0.3)  # let the server go idle: its reader waits for the next event
        def send(name, header):
            raw.send(msgpack.packb([{"message_id": uuid.uuid4().hex, "v": 3, **header}, name, []],
                                   use_bin_type=True))

        # the stray event (a heartbeat for a channel the server does not know),
        # then a ping on the same connection: once the ping is answered, the
        # server has read both
        send("_zpc_hb", {"response_to": "no-such-channel"})
        send("_zerorpc_ping", {})
        # steal the server socket's wake-up: read its events before gevent does
        server_sock = svc._servers["local"]._events._socket
        deadline = time.monotonic() + 10
        while not server_sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            assert time.monotonic() < deadline, "the events never arrived"
        names = []

        def answered():
            while raw.poll(0):
                names.append(msgpack.unpackb(raw.recv_multipart()[-1], raw=False)[1])
            return "OK" in names

        wait_for(answered, 15, "the ping's answer")
    finally:
        raw.close()
        ctx.term()
        root.removeHandler(handler)
        root.setLevel(old_level)
    noisy = [r for r in handler.records if r.name.startswith("zerorpc") and r.levelno >= logging.INFO]
    assert noisy == [], [r.getMessage() for r in noisy]

