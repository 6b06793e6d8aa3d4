"""The terminal relay's channel (dcctl.wire.relay) over real ZeroMQ sockets:
what the agent binds and dcctl connects to for container_enter."""
from __future__ import annotations

import os
import stat

import gevent
import msgpack
import pytest
import zmq

from dcctl import auth, errors
from dcctl.wire.relay import BAD, Channel
from tests.fdkit import FD_SETSIZE, fds_past_select_limit


def test_a_session_over_ipc_carries_lists_both_ways(tmp_path):
    server = Channel.bind(f"ipc://{tmp_path}/enter.sock", max_frame_bytes=1 << 10)
    assert server.address == {"transport": "ipc", "path": f"{tmp_path}/enter.sock"}
    assert stat.S_IMODE(os.stat(f"{tmp_path}/enter.sock").st_mode) == 0o600
    client = Channel.connect(f"ipc://{tmp_path}/enter.sock")
    try:
        assert server.recv(0.05) is None  # nothing yet
        client.send("hello", "token", 24, 80)
        assert server.recv(5) == ["hello", "token", 24, 80]
        server.send("out", b"\x1b[0m$ ")
        waiting, ready = client.wait([], 5)
        assert waiting and ready == set()
        assert client.recv(0) == ["out", b"\x1b[0m$ "]
        r, w = os.pipe()
        os.write(w, b"x")
        assert client.wait([r], 5) == (False, {r})  # the terminal's fd is ready, no message
        os.close(r), os.close(w)
    finally:
        client.close()
        server.close()


def test_both_ends_work_in_a_process_past_1024_fds_and_the_green_end_yields_while_it_waits(tmp_path):
    """select(2) fails past FD_SETSIZE: the agent's end (green) and dcctl's
    end (blocking, with a terminal fd) must wait some other way."""
    with fds_past_select_limit():
        server = Channel.bind(f"ipc://{tmp_path}/enter.sock", max_frame_bytes=1 << 10)
        client = Channel.connect(f"ipc://{tmp_path}/enter.sock")
        r, w = os.pipe()
        try:
            assert r > FD_SETSIZE
            ticks = []
            ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(20)])
            assert server.recv(0.3) is None  # a wait that lets other greenlets run
            assert len(ticks) >= 5
            ticker.kill()
            client.send("hello", "token", 24, 80)
            assert server.recv(5) == ["hello", "token", 24, 80]
            assert server.recv(0) is None
            server.send("out", b"x")
            assert client.wait([r], 5) == (True, set())  # zmq_poll with a terminal fd past 1024
            assert client.recv(0) == ["out", b"x"]
            os.write(w, b"x")
            assert client.wait([r], 5) == (False, {r})
            assert server.wait([r], 5) == (False, {r})  # the green end watches fds too
        finally:
            os.close(r), os.close(w)
            client.close()
            server.close()


def test_frames_that_are_not_a_list_or_too_big_read_as_bad(tmp_path):
    server = Channel.bind(f"ipc://{tmp_path}/enter.sock", max_frame_bytes=1 << 10)
    raw = zmq.Context.instance().socket(zmq.PAIR)  # a peer that sends what it likes
    raw.linger = 0
    raw.connect(f"ipc://{tmp_path}/enter.sock")
    try:
        for frame in (b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([]), msgpack.packb({1: 2})):
            raw.send(frame)
            assert server.recv(5) == BAD
        raw.send(msgpack.packb(["in", b"ok"]))
        assert server.recv(5) == ["in", b"ok"]
    finally:
        raw.close()
        server.close()


def test_a_tcp_session_is_curve_encrypted_with_the_servers_key(tmp_path):
    public, secret = auth.ensure_server_pair(str(tmp_path / "keys"))
    server = Channel.bind("tcp://127.0.0.1:0", curve=(public, secret), max_frame_bytes=1 << 10)
    assert server.address["transport"] == "tcp" and server.address["port"] > 0
    client = Channel.connect(f"tcp://127.0.0.1:{server.address['port']}", server_key=public.decode())
    try:
        client.send("hello", "t", 1, 1)
        assert server.recv(5) == ["hello", "t", 1, 1]
    finally:
        client.close()
        server.close()


def test_bad_endpoints_and_keys_are_typed_errors(tmp_path):
    with pytest.raises(errors.InvalidArgument):
        Channel.bind("inproc://x", max_frame_bytes=1)
    with pytest.raises(errors.Unreachable, match="cannot bind"):
        Channel.bind(f"ipc://{tmp_path}/no/such/dir/x.sock", max_frame_bytes=1)
    with pytest.raises(errors.InvalidArgument, match="bad relay server key"):
        Channel.connect("tcp://127.0.0.1:1", server_key="short")
