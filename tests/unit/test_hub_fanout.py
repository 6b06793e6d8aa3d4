"""Broadcast and the worker queue over real zerorpc servers (ipc)."""
import time

import gevent
import pytest

from dcctl import errors, wire
from hub import fanout


class Worker:
    def __init__(self, name, delay_s=0.0):
        self.name, self.delay_s, self.calls = name, delay_s, 0

    @wire.expose
    def work(self, seconds: float) -> str:
        self.calls += 1
        gevent.sleep(seconds + self.delay_s)
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
    assert time.monotonic() - started < 1.6
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

    started = time.monotonic()
    gevent.joinall([gevent.spawn(one) for _ in range(6)])
    elapsed = time.monotonic() - started
    assert sorted(runs) == ["h0", "h0", "h1", "h1", "h2", "h2"]
    assert 0.9 < elapsed < 1.6  # two rounds of 0.5 s, never two calls at once on a host
    with pytest.raises(errors.NoCapacity):
        q.set_members(set())
        q.acquire(0.2)
