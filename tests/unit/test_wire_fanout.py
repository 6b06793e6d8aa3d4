"""The lean fan-out client (dcctl.wire.fanout) over real ZeroMQ sockets and
real wire.Service servers: results and statuses, CURVE, heartbeats, late
replies, lost servers, and no socket growth per call."""
import os
import secrets

import gevent
import pytest

from dcctl import auth, errors, wire
from dcctl.wire.fanout import FanoutClient, Target
from tests.ports import free_port
from tests.waiting import wait_for


class Echo:
    def __init__(self, name):
        self.name = name
        self.calls = 0

    @wire.expose
    def who(self, tag: str = "", delay_s: float = 0.0) -> dict:
        self.calls += 1
        gevent.sleep(delay_s)
        return {"host": self.name, "tag": tag}

    @wire.expose
    def fail(self) -> None:
        raise errors.NoSuchContainer(f"nothing on {self.name}", hint="look elsewhere")

    @wire.expose(stream=True)
    def items(self):
        yield 1


@pytest.fixture
def servers(tmp_path):
    made = {}

    def serve(name, heartbeat_s=wire.DEFAULT_HEARTBEAT_SECONDS):
        target = Echo(name)
        svc = wire.Service(target, name, heartbeat_s=heartbeat_s)
        ep = f"ipc://{tmp_path}/fan-{name}.sock"
        svc.bind(ep)
        svc.start()
        made[name] = (target, svc, ep)
        return Target(name, ep)

    yield serve, made
    for _, svc, _ in made.values():
        svc.stop()


@pytest.fixture
def fan():
    client = FanoutClient()
    yield client
    client.close()


def test_results_and_statuses_for_ok_error_timeout_and_unreachable_hosts(servers, fan, tmp_path):
    serve, made = servers
    targets = [serve(f"h{i}") for i in range(3)]
    missing = Target("gone", f"ipc://{tmp_path}/fan-nobody.sock")
    out = fan.call_many(targets + [missing], "who", ["t1"], 10.0)
    assert {n: out[n] for n in ("h0", "h1", "h2")} == {f"h{i}": (True, {"host": f"h{i}", "tag": "t1"})
                                                      for i in range(3)}
    assert out["gone"][0] is False and isinstance(out["gone"][1], errors.Unreachable)
    # the server's own error keeps its class and hint
    err = fan.call_many(targets[:1], "fail", [], 10.0)["h0"][1]
    assert isinstance(err, errors.NoSuchContainer) and "nothing on h0" in str(err) and err.hint == "look elsewhere"
    assert isinstance(fan.call_many(targets[:1], "no_such", [], 10.0)["h0"][1], errors.NoSuchMethod)
    assert isinstance(fan.call_many(targets[:1], "items", [], 10.0)["h0"][1], errors.InvalidArgument)
    # h2 answers after 30 s: a timeout at the deadline, the others answered
    slow = fan.call_many(targets, "who", ["t2", 0.0], 10.0)
    assert all(ok for ok, _ in slow.values())
    out = fan.call_many(targets[:2], "who", ["t3", 30.0], 0.5)
    assert all(isinstance(v, errors.CallTimeout) for ok, v in out.values()) and not any(ok for ok, _ in out.values())
    # arguments the wire cannot carry: every host's error, nothing sent
    bad = fan.call_many(targets, "who", [{1: 2}], 5.0)
    assert all(isinstance(v, errors.InvalidArgument) for _, v in bad.values())


def test_a_late_reply_is_never_taken_for_a_later_call(servers, fan):
    serve, made = servers
    t = serve("late")
    fan.call_many([t], "who", ["warm"], 10.0)
    first = gevent.spawn(fan.call_many, [t], "who", ["first", 1.0], 0.3)
    second = gevent.spawn(fan.call_many, [t], "who", ["second", 2.0], 30.0)
    gevent.joinall([first, second], raise_error=True)
    assert isinstance(first.value["late"][1], errors.CallTimeout)
    assert second.value["late"] == (True, {"host": "late", "tag": "second"})
    wait_for(lambda: fan.late_replies >= 1, 10, "the first call's late answer to be dropped")
    assert fan.call_many([t], "who", ["third"], 10.0)["late"] == (True, {"host": "late", "tag": "third"})


def test_a_call_longer_than_the_heartbeat_is_kept_alive(servers):
    serve, made = servers
    t = serve("long", heartbeat_s=0.3)  # the server drops a channel after about 1 s without beats
    client = FanoutClient(heartbeat_s=0.3)
    try:
        assert client.call_many([t], "who", ["long", 2.5], 30.0)["long"] == (True, {"host": "long", "tag": "long"})
    finally:
        client.close()


def test_a_server_that_stops_mid_call_is_unreachable_before_the_deadline(servers, fan):
    serve, made = servers
    t = serve("dying")
    fan.call_many([t], "who", ["warm"], 10.0)
    call = gevent.spawn(fan.call_many, [t], "who", ["x", 60.0], 120.0)
    wait_for(lambda: made["dying"][0].calls >= 2, 10, "the call to reach the server")
    made["dying"][1].stop()
    ok, err = call.get(timeout=60)["dying"]
    assert not ok and isinstance(err, errors.Unreachable), err


def curve_server(tmp_path, name: str):
    """A started CURVE server Echo(name) on a free loopback port, and our own
    key pair (not yet allowed): (keys_dir, service, endpoint, pair)."""
    keys_dir = str(tmp_path / "keys")
    svc = wire.Service(Echo(name), name, keys_dir=keys_dir)
    ep = f"tcp://127.0.0.1:{free_port()}"
    svc.bind(ep)
    svc.start()
    _, ours = auth.keygen(str(tmp_path / "me"), "me")
    return keys_dir, svc, ep, auth.load_pair(ours)


def test_curve_hosts_with_the_right_key_answer_and_a_refused_key_is_unauthorized(tmp_path):
    keys_dir, svc, ep, pair = curve_server(tmp_path, "curvy")
    server_key = svc.public_key.encode()
    client = FanoutClient(pair)
    try:
        refused = client.call_many([Target("curvy", ep, server_key)], "who", ["x"], 30.0)["curvy"]
        assert not refused[0] and isinstance(refused[1], errors.Unauthorized), refused
        auth.Allowlist(keys_dir).add("admin", "me", pair[0].decode())
        wait_for(lambda: client.call_many([Target("curvy", ep, server_key)], "who", ["y"], 10.0)["curvy"][0], 30,
                 "the allowed key to be served")
        _, other = auth.keygen(str(tmp_path / "other"), "other")
        wrong = client.call_many([Target("curvy", ep, auth.load_pair(other)[0])], "who", ["z"], 30.0)["curvy"]
        assert not wrong[0] and isinstance(wrong[1], (errors.Unauthorized, errors.CallTimeout)), wrong
        # a key with a non-tcp endpoint, or a tcp endpoint with no key: refused before anything is sent
        bad = client.call_many([Target("a", f"ipc://{tmp_path}/x.sock", server_key), Target("b", ep)], "who", [], 5.0)
        assert all(isinstance(v, errors.Unreachable) for _, v in bad.values())
    finally:
        client.close()
        svc.stop()


def test_two_hundred_calls_grow_no_sockets_or_connections(servers, fan, tmp_path):
    serve, made = servers
    targets = [serve(f"s{i}") for i in range(5)] + [Target("gone", f"ipc://{tmp_path}/fan-none.sock")]
    fan.call_many(targets, "who", [], 10.0)
    gevent.sleep(0.5)
    fds = len(os.listdir("/proc/self/fd"))
    for i in range(200):
        out = fan.call_many(targets, "who", [str(i), 0.5 if i % 50 == 0 else 0.0], 0.2 if i % 50 == 0 else 10.0)
        if i % 50:
            assert [out[f"s{j}"] for j in range(5)] == [(True, {"host": f"s{j}", "tag": str(i)}) for j in range(5)]
    fan.retain([f"s{i}" for i in range(3)])  # s3, s4 and gone left
    assert fan.connections == 3
    wait_for(lambda: len(os.listdir("/proc/self/fd")) <= fds + 2, 10, f"fds back to about {fds}")


def test_the_hub_broadcast_results_over_the_fanout_client(servers, fan):
    from hub import fanout
    serve, made = servers
    rows = [{"name": t.name, "state": "alive", "endpoint": t.endpoint, "key": ""} for t in
            (serve("b0"), serve("b1"))]
    rows += [{"name": "lost", "state": "unreachable", "endpoint": "ipc:///nonexistent", "key": ""},
             {"name": "keyed", "state": "alive", "endpoint": "tcp://127.0.0.1:9", "key": secrets.token_hex(20)}]
    out = fanout.lean_broadcast(fan, rows, "who", ["b"], 10.0, None)
    assert out["summary"] == {**out["summary"], "targeted": 4, "ok": 2, "error": 2, "timeout": 0}
    assert out["results"]["b0"] == {"status": "ok", "result": {"host": "b0", "tag": "b"}}
    assert out["results"]["lost"] == {"status": "error", "error": "Unreachable", "message": "host is unreachable"}
    assert out["results"]["keyed"]["error"] == "Unreachable"


def test_a_host_claiming_another_hosts_endpoint_harms_only_itself(tmp_path):
    """An insider host registers with its own key but the endpoint of an
    honest host: its calls fail (the server there has another key), and
    the honest host's calls, on the same shared socket, still answer, in
    this round and the next ones (no shared monitor event or disconnect)."""
    keys_dir, svc, ep, pair = curve_server(tmp_path, "honest")
    auth.Allowlist(keys_dir).add("admin", "me", pair[0].decode())
    _, other = auth.keygen(str(tmp_path / "impostor"), "impostor")
    honest = Target("honest", ep, svc.public_key.encode())
    impostor = Target("a-impostor", ep, auth.load_pair(other)[0])
    client = FanoutClient(pair)
    try:
        wait_for(lambda: client.call_many([honest], "who", ["w"], 10.0)["honest"][0], 30, "the honest host to answer")
        for i in range(3):
            out = client.call_many([impostor, honest], "who", [str(i)], 3.0)
            assert out["honest"] == (True, {"host": "honest", "tag": str(i)}), (i, out)
            assert not out["a-impostor"][0], out
        assert client.call_many([honest], "who", ["after"], 10.0)["honest"] == (True, {"host": "honest",
                                                                                     "tag": "after"})
    finally:
        client.close()
        svc.stop()


def _rogue_server(endpoint, answer):
    """A raw ROUTER at ``endpoint`` that answers every request with
    ``answer(header) -> list of payload bytes`` (a rogue host's agent)."""
    import msgpack
    import zmq.green as zmq_green
    ctx = zmq_green.Context()
    sock = ctx.socket(zmq_green.ROUTER)
    sock.linger = 0
    sock.bind(endpoint)

    def run():
        while True:
            frames = sock.recv_multipart()
            header = msgpack.unpackb(frames[-1], raw=False)[0]
            for payload in answer(header):
                sock.send_multipart([frames[0], b"", payload])

    task = gevent.spawn(run)

    def stop():
        task.kill()
        sock.close()
        ctx.term()
    return stop


def test_a_reply_over_the_result_cap_is_refused_not_buffered(tmp_path, fan):
    """A host answering with more than MAX_RESULT_BYTES (no honest server
    sends that: its results are capped) is dropped by ZeroMQ at the
    socket, its call an error; the next round answers normally."""
    import msgpack
    from dcctl.wire import codec
    ep = f"ipc://{tmp_path}/rogue.sock"
    big = b"x" * (codec.MAX_RESULT_BYTES + (1 << 20))
    stop = _rogue_server(ep, lambda h: [msgpack.packb([{"message_id": b"r1", "v": 3,
                                                         "response_to": h["message_id"]}, "OK", [big]])])
    try:
        ok, value = fan.call_many([Target("rogue", ep)], "who", [], 20.0)["rogue"]
        assert not ok and isinstance(value, (errors.Unreachable, errors.CallTimeout)), (ok, type(value))
    finally:
        stop()


@pytest.mark.parametrize("err_args", [5, {"name": "x"}, None, [], ["only one"], [1, 2, {"not": "text"}], "str"])
def test_a_garbled_error_reply_fails_its_call_and_the_reader_goes_on(servers, fan, tmp_path, err_args):
    """A host answering ERR with arguments of any shape: its call is an
    error and the fan-out's reader lives on, so the honest host beside it
    (on the same socket) still answers this round and the next."""
    import msgpack
    serve, made = servers
    honest = serve("honest")
    ep = f"ipc://{tmp_path}/rogue-err.sock"
    stop = _rogue_server(ep, lambda h: [msgpack.packb([{"message_id": b"r1", "v": 3,
                                                         "response_to": h["message_id"]}, "ERR", err_args])])
    try:
        rogue = Target("rogue", ep)
        out = fan.call_many([rogue, honest], "who", ["a"], 10.0)
        assert not out["rogue"][0] and isinstance(out["rogue"][1], errors.DcError), out
        assert out["honest"] == (True, {"host": "honest", "tag": "a"})
        assert fan.call_many([honest], "who", ["b"], 10.0)["honest"] == (True, {"host": "honest", "tag": "b"})
    finally:
        stop()
