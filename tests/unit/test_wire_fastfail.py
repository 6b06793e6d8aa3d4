"""A dead server is noticed by its closed connection (ZeroMQ's socket
monitor), not by missed heartbeats: on real server processes killed with
SIGKILL and real tcp sockets.

Every client here beats every 30 s, so a call that waited for the heartbeat
(two of them) would pass the 10 s deadlines: each deadline fails a test
that falls back on heartbeats, and none measures a time."""
from __future__ import annotations

import os
import signal
import sys
import textwrap

import gevent
import gevent.subprocess as subprocess  # a server's start waits cooperatively: the clients' monitors keep reading
import pytest

from dcctl import errors, wire
from dcctl.wire.failover import FailoverClient
from tests.ports import free_port
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HEARTBEAT_SECONDS = 30.0  # the fallback no test here may wait for
DEADLINE_SECONDS = 10.0  # far below two heartbeats

SERVER = textwrap.dedent('''
    import sys, gevent
    from dcctl import wire

    class Box:
        def __init__(self):
            self.seen = []

        @wire.expose
        def record(self, tag: str, nap_s: float) -> dict:
            self.seen.append(tag)
            gevent.sleep(nap_s)
            return {"tag": tag, "seen": list(self.seen)}

        @wire.expose(access="read")
        def seen_tags(self) -> list:
            return list(self.seen)

    svc = wire.Service(Box(), sys.argv[2], heartbeat_s=30.0)
    svc.bind(sys.argv[1], insecure=sys.argv[1].startswith("tcp://"))
    print("ready", flush=True)
    svc.run()
''')


class Servers:
    """Server processes started by a test, all killed at its end."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, endpoint: str, name: str = "box") -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", SERVER, endpoint, name], cwd=REPO,
                                stdout=subprocess.PIPE, text=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
            proc.wait()
            proc.stdout.close()


@pytest.fixture
def servers():
    s = Servers()
    try:
        yield s
    finally:
        s.close()


def _client(endpoint: str) -> wire.RpcClient:
    return wire.RpcClient(endpoint, timeout_s=60.0, heartbeat_s=HEARTBEAT_SECONDS)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_a_server_killed_mid_call_fails_the_call_at_once_with_the_may_have_run_hint(servers):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = servers.start(endpoint)
    with _client(endpoint) as client:
        assert client.call("record", "warm", 0)["tag"] == "warm"
        call = gevent.spawn(client.call, "record", "slow", 20.0)
        gevent.sleep(0.3)  # the call is with the server
        _kill(proc)
        with gevent.Timeout(DEADLINE_SECONDS):
            with pytest.raises(errors.Unreachable, match="lost the connection") as caught:
                call.get()
        assert "may have run" in (caught.value.hint or "")


def test_over_ipc_too_and_a_call_refused_afterwards_has_no_may_have_run_hint(servers):
    """A killed server's ipc socket file stays: the call in flight fails at
    once (may have run); the next one is refused (nothing was sent)."""
    endpoint = f"ipc:///tmp/ffl-fastfail-{os.getpid()}-{free_port()}.sock"
    proc = servers.start(endpoint)
    try:
        with _client(endpoint) as client:
            assert client.call("seen_tags") == []
            call = gevent.spawn(client.call, "record", "x", 20.0)
            gevent.sleep(0.3)
            _kill(proc)
            with gevent.Timeout(DEADLINE_SECONDS):
                with pytest.raises(errors.Unreachable, match="lost the connection") as in_flight:
                    call.get()
                with pytest.raises(errors.Unreachable, match="connection refused") as caught:
                    client.call("record", "y", 0)  # over ipc: the socket file is left, nothing listens
            assert "may have run" in (in_flight.value.hint or "")
            assert caught.value.hint is None
    finally:
        if os.path.exists(endpoint[len("ipc://"):]):
            os.unlink(endpoint[len("ipc://"):])


def test_nothing_listening_is_unreachable_at_once_not_after_the_timeout():
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with _client(endpoint) as client:
        with gevent.Timeout(DEADLINE_SECONDS):
            for _ in range(3):  # each time, on a fresh socket
                with pytest.raises(errors.Unreachable, match="connection refused"):
                    client.call("seen_tags")


def test_a_restarted_server_gets_no_request_queued_while_it_was_down_and_answers_new_calls(servers):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    proc = servers.start(endpoint)
    with _client(endpoint) as client:
        call = gevent.spawn(client.call, "record", "in-flight", 20.0)
        gevent.sleep(0.3)
        _kill(proc)
        with gevent.Timeout(DEADLINE_SECONDS):
            with pytest.raises(errors.Unreachable):
                call.get()
            with pytest.raises(errors.Unreachable, match="connection refused"):
                client.call("record", "while-down", 0)  # refused: ZeroMQ had queued it for the reconnect
        servers.start(endpoint)
        with gevent.Timeout(DEADLINE_SECONDS):
            answer = client.call("record", "new", 0)
        # the new call got its own answer, and the request sent while the
        # server was down was never delivered to the restarted one
        assert answer == {"tag": "new", "seen": ["new"]}
        assert client.call("seen_tags") == ["new"]


def test_a_dead_first_endpoint_costs_about_nothing_when_the_second_answers(servers):
    """DCCTL_HOST=dead,alive: the endpoints are probed at once.  A dead
    endpoint whose host refuses the connection, and one whose server is
    frozen (SIGSTOP: the kernel accepts, nothing answers, as for a host
    that vanished), both lose the race to the live one; the probe timeout
    (20 s) is past the deadline, so probing one after the other fails."""
    alive = f"tcp://127.0.0.1:{free_port()}"
    servers.start(alive, "alive")
    refused = f"tcp://127.0.0.1:{free_port()}"
    frozen = f"tcp://127.0.0.1:{free_port()}"
    servers.start(frozen, "frozen").send_signal(signal.SIGSTOP)
    for dead in (refused, frozen):
        client = FailoverClient([dead, alive], _client, probe_timeout_s=20.0)
        try:
            with gevent.Timeout(DEADLINE_SECONDS):
                assert isinstance(client.call("seen_tags"), list)
                assert client.endpoint == alive and client.switches == 1
                assert client.call("record", "x", 0)["tag"] == "x"
        finally:
            client.close()


def test_one_refused_endpoint_alone_is_unreachable_at_once():
    client = FailoverClient([f"tcp://127.0.0.1:{free_port()}"], _client, probe_timeout_s=20.0)
    try:
        with gevent.Timeout(DEADLINE_SECONDS):
            with pytest.raises(errors.Unreachable, match="no endpoint answered.*connection refused"):
                client.call("seen_tags")
    finally:
        client.close()


def test_dcctl_with_a_dead_first_hub_answers_from_the_second(servers, tmp_path):
    """``DCCTL_HOST=dead,alive python3 -m dcctl.cli ...``: a real dcctl process."""
    alive = f"tcp://127.0.0.1:{free_port()}"
    servers.start(alive, "alive")
    frozen = f"tcp://127.0.0.1:{free_port()}"
    servers.start(frozen, "frozen").send_signal(signal.SIGSTOP)
    env = {**os.environ, "DCCTL_HOST": f"{frozen},{alive}", "DCCTL_CONFIG_DIR": str(tmp_path)}  # no key pair: plain tcp
    with gevent.Timeout(DEADLINE_SECONDS):
        out = subprocess.run([sys.executable, "-m", "dcctl.cli", "--json", "seen_tags"], cwd=REPO, env=env,
                             capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_create_after_its_hub_died_between_calls_goes_to_the_next_hub(servers):
    """The hub dies between two calls of a long-lived FailoverClient: the
    next call, a change, is not lost with it (nothing was sent): the
    endpoints are probed again and it runs once, on the live one."""
    first = f"tcp://127.0.0.1:{free_port()}"
    second = f"tcp://127.0.0.1:{free_port()}"
    proc = servers.start(first, "first")
    servers.start(second, "second")
    client = FailoverClient([first, second], _client, probe_timeout_s=20.0)
    try:
        with gevent.Timeout(DEADLINE_SECONDS):
            assert client.call("record", "one", 0)["seen"] == ["one"] and client.endpoint == first
            _kill(proc)
            wait_for(lambda: client._client.lost, 5, "the client saw its connection close")
            assert client.call("record", "two", 0)["seen"] == ["two"]
        assert client.endpoint == second
    finally:
        client.close()


def _fan_within(fan, targets) -> dict:
    """One fan-out of seen_tags with a 60 s call deadline, which must end
    within DEADLINE_SECONDS (gevent.Timeout otherwise)."""
    with gevent.Timeout(DEADLINE_SECONDS):
        return fan.call_many(targets, "seen_tags", timeout_s=60.0)


def test_a_fanout_to_a_server_killed_before_or_between_broadcasts_is_unreachable_not_a_timeout(servers, tmp_path):
    """The hub's fan-out client (broadcasts, fleet views): a host killed
    after the last broadcast, or before the first (its ipc socket file left
    behind), is Unreachable in the next one, where its request used to wait
    in ZeroMQ's queue for a reconnect until the call's deadline (60 s
    here: each broadcast must end within DEADLINE_SECONDS)."""
    from dcctl.wire.fanout import FanoutClient, Target
    eps = [f"ipc://{tmp_path}/fan{i}.sock" for i in range(3)]
    procs = [servers.start(ep, f"fan{i}") for i, ep in enumerate(eps)]
    targets = [Target(f"fan{i}", ep) for i, ep in enumerate(eps)]
    _kill(procs[2])  # before any broadcast: its socket file stays, nothing listens
    assert os.path.exists(eps[2][len("ipc://"):])
    fan = FanoutClient(heartbeat_s=HEARTBEAT_SECONDS)
    try:
        out = _fan_within(fan, targets)
        assert out["fan0"] == (True, []) and out["fan1"] == (True, [])
        assert isinstance(out["fan2"][1], errors.Unreachable), out["fan2"]
        _kill(procs[1])  # between two broadcasts
        out = _fan_within(fan, targets)
        assert out["fan0"] == (True, [])
        assert not out["fan1"][0] and isinstance(out["fan1"][1], errors.Unreachable), out["fan1"]
        procs[1] = servers.start(eps[1], "fan1")  # back: the next broadcast reaches it again
        out = _fan_within(fan, targets)
        assert out["fan1"] == (True, [])
    finally:
        fan.close()
