"""Broadcast and the worker queue over real zerorpc servers (ipc)."""
import time

import gevent
import pytest

from dcctl import errors, wire
from hub import fanout


class Worker:
    def __init__(self, name, delay_s=0.0):
        self.name, self.delay_s, self.calls = name, delay_s, 0
        self.running = self.most_at_once = 0

    @wire.expose
    def work(self, seconds: float) -> str:
        self.calls += 1
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            gevent.sleep(seconds + self.delay_s)
        finally:
            self.running -= 1
        return self.name


@pytest.fixture
def workers(tmp_path):
    made = []
    for i in range(4):
        w = Worker(f"h{i}", delay_s=30.0 if i == 3 else 0.0)  # h3 is "frozen"
        svc = wire.Service(w, w.name)
        ep = f"ipc://{tmp_path}/{w.name}.sock"
        svc.bind(ep)
        svc.start()
        made.append((w, svc, wire.connect(ep, timeout_s=60)))
    yield made
    for _, svc, c in made:
        c.close()
        svc.stop()


def test_broadcast_never_waits_past_its_timeout(workers):
    hosts = [{"name": w.name, "state": "alive"} for w, _, _ in workers] + [{"name": "gone", "state": "unreachable"}]
    clients = {w.name: c for w, _, c in workers}
    started = time.monotonic()
    out = fanout.broadcast(hosts, lambda h: clients[h["name"]].call("work", 0.01, timeout_s=1.0), 1.0)
    # h3 answers after 30 s: the broadcast came back long before (its timeout is 1 s)
    assert time.monotonic() - started < 15
    assert out["summary"] == {**out["summary"], "targeted": 5, "ok": 3, "error": 1, "timeout": 1}
    assert out["results"]["h3"] == {"status": "timeout"}
    assert out["results"]["gone"]["error"] == "Unreachable"


def test_targets_by_glob_and_label():
    hosts = [{"name": "host-1", "labels": {"zone": "a"}}, {"name": "db-1", "labels": {"zone": "b"}}]
    assert [h["name"] for h in fanout.targets(hosts, "host-*")] == ["host-1"]
    assert [h["name"] for h in fanout.targets(hosts, "label:zone=b")] == ["db-1"]


def test_queue_gives_each_idle_host_one_call(workers):
    q = fanout.WorkQueue()
    clients = {w.name: c for w, _, c in workers[:3]}
    q.set_members(set(clients))
    runs = []

    def one():
        host = q.acquire(10)
        try:
            runs.append(clients[host].call("work", 0.5))
        finally:
            q.release(host)

    gevent.joinall([gevent.spawn(one) for _ in range(6)])
    assert sorted(runs) == ["h0", "h0", "h1", "h1", "h2", "h2"]
    assert [w.most_at_once for w, _, _ in workers[:3]] == [1, 1, 1]  # never two calls at once on a host
    with pytest.raises(errors.NoCapacity):
        q.set_members(set())
        q.acquire(0.2)


def test_a_call_that_raises_a_non_wire_error_is_an_error_not_a_timeout(workers):
    hosts = [{"name": w.name, "state": "alive"} for w, _, _ in workers[:3]]
    clients = {w.name: c for w, _, c in workers}

    def call(h):
        if h["name"] == "h1":  # msgpack cannot carry the argument: InvalidArgument, before anything is sent
            return clients["h1"].call("work", object(), timeout_s=5.0)
        if h["name"] == "h2":
            raise KeyError("no endpoint for h2")  # e.g. a bug on the hub's side
        return clients[h["name"]].call("work", 0.01, timeout_s=5.0)

    out = fanout.broadcast(hosts, call, 5.0)
    assert out["results"]["h0"]["status"] == "ok"
    assert out["results"]["h1"]["status"] == "error" and out["results"]["h1"]["error"] == "InvalidArgument"
    assert out["results"]["h2"] == {"status": "error", "error": "KeyError", "message": "'no endpoint for h2'"}
    assert out["summary"]["error"] == 2 and out["summary"]["timeout"] == 0
