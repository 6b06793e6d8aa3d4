"""Hostile requests over real ZeroMQ sockets: every request with a message
id gets an answer (a typed error), nothing a peer sends stops the server,
and our client refuses to send what a server could not read
(PITFALLS: msgpack 1.x refuses integer map keys and big messages)."""
import os

import gevent
import msgpack
import pytest
import zerorpc
import zmq.green

from dcctl import errors, wire


class Target:
    def __init__(self):
        self.calls = 0

    @wire.expose(access="read")
    def echo(self, options: dict | None = None) -> dict:
        self.calls += 1
        return {"options": options}


@pytest.fixture
def served(tmp_path):
    target = Target()
    svc = wire.Service(target, "hostile", heartbeat_s=1.0)
    endpoint = f"ipc://{tmp_path}/s.sock"
    svc.bind(endpoint)
    svc.start()
    client = wire.connect(endpoint, timeout_s=10)
    yield target, client, endpoint
    client.close()
    svc.stop()


class RawPeer:
    """A DEALER socket that sends hand-made frames, as a hostile or broken
    client would, and reads the answer to one message id."""

    def __init__(self, endpoint):
        self.ctx = zmq.green.Context()  # gevent's: the server runs in this process
        self.sock = self.ctx.socket(zmq.green.DEALER)
        self.sock.linger = 0
        self.sock.connect(endpoint)

    def send(self, blob: bytes) -> None:
        self.sock.send_multipart([b"", blob])

    def request(self, msgid: bytes, name, args) -> bytes:
        return msgpack.packb([{"message_id": msgid, "v": 3}, name, args], use_bin_type=True)

    def answer(self, msgid: bytes):
        """(name, args) of the first non-heartbeat event answering ``msgid``;
        gevent.Timeout if none comes within 10 s."""
        with gevent.Timeout(10):
            while True:
                blob = self.sock.recv_multipart()[-1]
                header, name, args = msgpack.unpackb(blob, raw=False, strict_map_key=False)
                if header.get("response_to") == msgid and name != "_zpc_hb":
                    return name, args

    def close(self):
        self.sock.close()
        self.ctx.term()


@pytest.fixture
def raw(served):
    peer = RawPeer(served[2])
    yield peer
    peer.close()


def test_integer_map_key_gets_invalid_argument_from_stock_client(served):
    target, _, endpoint = served
    stock = zerorpc.Client(timeout=10, heartbeat=1)
    stock.connect(endpoint)
    try:
        with pytest.raises(zerorpc.RemoteError) as info:
            stock("echo", {1: 2})
        assert info.value.name == "InvalidArgument"
        assert "map key 1" in info.value.msg
        with pytest.raises(zerorpc.RemoteError) as info:
            stock("echo", {"nested": [{"ok": {2.5: "x"}}]})
        assert info.value.name == "InvalidArgument"
        with pytest.raises(zerorpc.RemoteError) as info:  # any method, even one that does not exist
            stock("no_such_method", {3: 4})
        assert info.value.name == "InvalidArgument"
    finally:
        stock.close()
    assert target.calls == 0


def test_our_client_refuses_unsendable_arguments_before_sending(served):
    target, client, _ = served
    for bad in ({1: 2}, {"a": {b"k": 1}}, {"s": {1, 2}}, {"x": object()}, "\udcff"):
        with pytest.raises(errors.InvalidArgument):
            client.call("echo", bad)
    with pytest.raises(errors.ResultTooLarge):
        client.call("echo", {"blob": b"x" * wire.MAX_REQUEST_BYTES})
    assert target.calls == 0
    assert client.call("echo", {"fine": [1, 2.5, None, b"\x00"]}) == {"options": {"fine": [1, 2.5, None, b"\x00"]}}


def test_invalid_utf8_and_broken_tails_are_answered(raw, served):
    target = served[0]
    # invalid UTF-8 in a str: msgpack's strict decoding would drop the message
    blob = raw.request(b"m1", "echo", [])
    bad_str = blob[:-1] + b"\x91\xa2\xff\xfe"  # args: [ "\xff\xfe" ] as a 2-byte str
    raw.send(bad_str)
    name, args = raw.answer(b"m1")
    assert (name, args[0]) == ("ERR", "InvalidArgument") and "UTF-8" in args[1]
    # nesting far past msgpack's own stack limit, after a readable header
    deep = b"\x91" * 5000 + b"\xc0"
    raw.send(b"\x93" + msgpack.packb({"message_id": b"m2", "v": 3}) + msgpack.packb("echo") + deep)
    name, args = raw.answer(b"m2")
    assert (name, args[0]) == ("ERR", "InvalidArgument")
    # an unhashable method name, a name that is not a string
    raw.send(raw.request(b"m3", ["echo"], []))
    assert raw.answer(b"m3")[1][0] == "InvalidArgument"
    raw.send(raw.request(b"m4", 7, []))
    assert raw.answer(b"m4")[1][0] == "InvalidArgument"
    # args that are not a list
    raw.send(raw.request(b"m5", "echo", 5))
    assert raw.answer(b"m5")[1][0] == "InvalidArgument"
    # a map key that is an integer in the header: the key is dropped, the call served
    raw.send(msgpack.packb([{"message_id": b"m6", "v": 3, 9: 9}, "echo", []], use_bin_type=True))
    assert raw.answer(b"m6") == ("OK", [{"options": None}])
    assert target.calls == 1


def test_garbage_and_oversize_frames_never_stop_the_server(raw, served):
    _, client, _ = served
    for blob in (b"", b"\xc1", os.urandom(4096), msgpack.packb("just a string"), msgpack.packb([1, 2]),
                 msgpack.packb([{"v": 3}, "echo", []]), msgpack.packb([[1], "echo", []]),
                 msgpack.packb([{"message_id": [1, 2], "v": 3}, "echo", []])):
        raw.send(blob)
    raw.send(b"\x00" * (wire.MAX_REQUEST_BYTES + 1))  # ZeroMQ drops this peer (MAXMSGSIZE)
    assert client.call("echo", None) == {"options": None}
    assert client.call("_zerorpc_ping")[0] == "pong"


class StockIntKeys:
    def result(self):
        return {1: "one"}


def test_client_reads_a_stock_servers_integer_keys(tmp_path):
    endpoint = f"ipc://{tmp_path}/stock.sock"
    server = zerorpc.Server(StockIntKeys(), heartbeat=1)
    server.bind(endpoint)
    task = gevent.spawn(server.run)
    try:
        with wire.connect(endpoint, timeout_s=10) as client:
            assert client.call("result") == {1: "one"}
    finally:
        server.stop()
        server.close()
        task.kill()
