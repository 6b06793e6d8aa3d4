"""Stream methods over real ZeroMQ sockets: bounded sends (a reader that
stops taking items is dropped with SlowConsumer, others go on), typed
errors in the middle of a stream, a dead server noticed by its heartbeat,
the generator always closed, and the stock zerorpc client reading ours."""
import os
import signal
import subprocess
import sys
import textwrap

import gevent
import pytest
import zerorpc

from dcctl import errors, wire
from dcctl.wire import zrpc
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Streams:
    def __init__(self):
        self.produced: dict[str, int] = {}
        self.closed: set[str] = set()

    @wire.expose(stream=True)
    def count(self, n: int, tag: str = "") -> dict:
        """Yield {i} for i in range(n) (n < 0: for ever)."""
        i = 0
        try:
            while n < 0 or i < n:
                self.produced[tag] = i + 1
                yield {"i": i}
                i += 1
                if n < 0 and i % 50 == 0:
                    gevent.sleep(0)
        finally:
            self.closed.add(tag)

    @wire.expose(stream=True)
    def fail_after(self, n: int, kind: str) -> dict:
        for i in range(n):
            yield {"i": i}
        if kind == "typed":
            raise errors.NoSuchContainer("no container 'gone'")
        raise RuntimeError("secret detail /etc/shadow")

    @wire.expose(stream=True)
    def refuse(self, name: str) -> dict:
        raise errors.InvalidArgument(f"bad name {name!r}")
        yield {}  # a generator

    @wire.expose(stream=True)
    def late(self, seconds: float) -> dict:
        gevent.sleep(seconds)
        yield {"late": True}

    @wire.expose(stream=True)
    def pause(self, seconds: float) -> dict:
        yield {"first": True}
        gevent.sleep(seconds)
        yield {"late": True}

    @wire.expose(stream=True)
    def bad_item(self) -> dict:
        yield {"ok": 1}
        yield {1: 2}


@pytest.fixture
def served(tmp_path):
    target = Streams()
    svc = wire.Service(target, "streams", heartbeat_s=1.0, stream_stall_s=5.0)
    endpoint = f"ipc://{tmp_path}/s.sock"
    svc.bind(endpoint)
    svc.start()
    clients = []

    def client(**kw):
        c = wire.RpcClient(endpoint, timeout_s=kw.pop("timeout_s", 5), heartbeat_s=1.0)
        clients.append(c)
        return c

    yield target, client, endpoint
    for c in clients:
        c.close()
    svc.stop()


def test_items_arrive_in_order_past_the_window_and_the_generator_closes(served):
    target, client, _ = served
    with client().call("count", 1000, "a") as items:
        assert isinstance(items, wire.client.StreamIter)
        assert [item["i"] for item in items] == list(range(1000))
    assert "a" in target.closed


def test_errors_mid_stream_are_typed_and_leak_nothing(served):
    _, client, _ = served
    c = client()
    got = []
    with pytest.raises(errors.NoSuchContainer, match="gone"):
        for item in c.call("fail_after", 3, "typed"):
            got.append(item["i"])
    assert got == [0, 1, 2]
    got = []
    with pytest.raises(errors.InternalError) as exc:
        for item in c.call("fail_after", 2, "boom"):
            got.append(item["i"])
    assert got == [0, 1] and "shadow" not in str(exc.value)
    with pytest.raises(errors.InvalidArgument, match="bad name"):
        c.call("refuse", "x")  # before any item: the call itself raises
    with pytest.raises(errors.InvalidArgument, match="must be int"):
        c.call("count", "ten")
    items = c.call("bad_item")
    assert next(items) == {"ok": 1}
    with pytest.raises(errors.InternalError, match="non-string map key"):
        next(items)


def test_a_reader_that_stops_is_dropped_and_others_go_on(served):
    target, client, _ = served
    slow, fast = client(), client()
    stalled = slow.call("count", -1, "slow")
    assert next(stalled) == {"i": 0}  # then it takes no more
    # the fast reader goes on while the slow one's window is full
    with fast.call("count", 3000, "fast") as items:
        assert sum(1 for _ in items) == 3000
    wait_for(lambda: "slow" in target.closed, 30, "the slow reader's generator closed by the server")
    # nothing was made for it past its window (one first item + the window)
    assert target.produced["slow"] <= zrpc.STREAM_WINDOW_ITEMS + 2
    taken = 1
    with pytest.raises(errors.SlowConsumer, match="stream dropped"):
        for _ in stalled:
            taken += 1
    assert taken <= zrpc.STREAM_WINDOW_ITEMS + 1
    # and the server still answers everyone
    assert [i["i"] for i in slow.call("count", 3)] == [0, 1, 2]


def test_a_reader_that_closes_early_closes_the_servers_generator(served):
    target, client, _ = served
    items = client().call("count", -1, "early")
    assert next(items) == {"i": 0} and next(items) == {"i": 1}
    items.close()
    wait_for(lambda: "early" in target.closed, 15, "the generator closed once the reader left")


def test_stream_waits_for_a_first_item_longer_than_the_call_timeout(served):
    _, client, _ = served
    c = client(timeout_s=0.5)
    with pytest.raises(errors.CallTimeout):
        c.call("late", 1.5)
    assert list(c.stream("late", 1.5)) == [{"late": True}]
    assert list(c.stream("count", 2)) == [{"i": 0}, {"i": 1}]
    # stream() returns at once: several followers open before any item exists
    first, second = c.stream("late", 1.0), c.stream("late", 1.0)
    assert next(second) == next(first) == {"late": True}
    refused = c.stream("refuse", "x")
    with pytest.raises(errors.InvalidArgument, match="bad name"):
        next(refused)  # the server's refusal, at the first next


def test_closing_the_client_ends_its_streams(served):
    _, client, _ = served
    c = client()
    items = c.stream("late", 30)  # sent; the first next waits for the first item
    stopper = gevent.spawn_later(0.3, c.close, "closed by the test")
    with gevent.Timeout(20):
        with pytest.raises(errors.Unreachable, match="closed by the test"):
            next(items)
    stopper.join()
    c = client()
    items = c.stream("pause", 30)
    assert next(items) == {"first": True}
    stopper = gevent.spawn_later(0.3, c.close, "closed again")
    with gevent.Timeout(20):
        with pytest.raises(errors.Unreachable, match="closed again"):
            next(items)  # while it waits for the next one
    stopper.join()


SERVER = textwrap.dedent('''
    import sys, gevent
    from dcctl import wire

    class Slow:
        @wire.expose(stream=True)
        def tick(self) -> dict:
            i = 0
            while True:
                yield {"i": i}
                i += 1
                gevent.sleep(0.2)

    svc = wire.Service(Slow(), "slow", heartbeat_s=0.5)
    svc.bind(sys.argv[1])
    print("ready", flush=True)
    svc.run()
''')


def test_a_dead_server_mid_stream_is_unreachable_not_a_hang(tmp_path):
    endpoint = f"ipc://{tmp_path}/dead.sock"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, endpoint], cwd=REPO, stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert proc.stdout.readline().strip() == "ready"
        client = wire.RpcClient(endpoint, timeout_s=10, heartbeat_s=0.5)
        items = client.stream("tick")
        assert next(items) == {"i": 0} and next(items) == {"i": 1}
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with gevent.Timeout(30):  # a deadline, not a bound: zerorpc's own iterator hangs here for ever
            with pytest.raises(errors.Unreachable, match="lost the connection"):
                for _ in items:
                    pass
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_stock_zerorpc_client_reads_our_streams(served):
    _, _, endpoint = served
    stock = zerorpc.Client(timeout=5, heartbeat=0.5)
    stock.connect(endpoint)
    try:
        assert [item["i"] for item in stock.count(450, "stock")] == list(range(450))
        got = []
        with pytest.raises(zerorpc.RemoteError) as exc:
            for item in stock.fail_after(2, "typed"):
                got.append(item["i"])
        assert got == [0, 1] and exc.value.name == "NoSuchContainer"
    finally:
        stock.close()
