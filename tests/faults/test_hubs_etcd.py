"""Several hubs on one etcd, and their faults: real etcd on loopback, real
``dc-hub`` processes (``--store etcd``), and in-process stand-ins for agents
(tests/hubfakes.FakeAgent on real ipc sockets) that keep their membership
with the real agents.hubclient.HubLink over both hubs (``--hub A,B``).
Clients are dcctl's FailoverClient over both hubs.  No root needed.

* the leader killed -9 during 50 concurrent creates: each create succeeds
  once or fails with a typed error, no name runs twice, no reservation
  leaks, and leadership moves within the lease TTL;
* etcd stopped: placement fails fast with StoreUnavailable, calls to
  existing containers still reach their hosts, and all recovers when etcd
  returns;
* a hub failover during a broadcast and during a queued call: a result or
  a typed error, never a hang.

Everything made is under /tmp/etc-<random>/ (short: ipc paths) and is
removed, and every process started is killed, even when a test fails.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import gevent
import pytest

from agents.hubclient import HubLink
from dcctl import errors, wire
from dcctl.wire.failover import FailoverClient
from hub.registry import manifest_id
from tests.etcdkit import running_etcd
from tests.hubfakes import FakeAgent
from tests.waiting import wait_for

GiB = 1 << 30
LEASE_SECONDS = 2
HEARTBEAT_SECONDS = 0.5
LAYER = b"a layer the fake agents never fetch"


class Agent(FakeAgent):
    """A FakeAgent that also runs ``ops_run`` (sleeps SECONDS) and answers
    ``hostinfo``, for broadcasts and the queue."""

    @wire.expose
    def ops_run(self, command: str) -> dict:
        self._enter("ops_run")
        gevent.sleep(float(command))
        return {"host": self.name, "slept": float(command)}

    @wire.expose(access="read")
    def hostinfo(self) -> dict:
        return {"name": self.name}


class Hubs:
    """Two dc-hub processes on one etcd prefix, three fake agents beating to
    them through HubLink, and a busybox image in the registry's index."""

    def __init__(self, root: str, etcd, hosts: int = 3):
        self.root, self.etcd = root, etcd
        self.prefix = f"/etc-{uuid.uuid4().hex[:8]}/"
        self.procs: dict[str, subprocess.Popen] = {}
        self.endpoints = {n: f"ipc://{root}/{n}.sock" for n in ("etc-hub-a", "etc-hub-b")}
        self.agents: dict[str, Agent] = {}
        self.services: dict[str, wire.Service] = {}
        self.links: list[HubLink] = []
        for name in self.endpoints:
            self.start_hub(name)
        for i in range(1, hosts + 1):
            self.add_agent(f"etc-h{i}", reverse=bool(i % 2))
        from hub.store.etcd import EtcdStore
        self.store = EtcdStore(etcd.url, self.prefix)
        manifest = {"name": "busybox", "created": time.time(), "layers": [hashlib.sha256(LAYER).hexdigest()],
                    "size_bytes": len(LAYER), "exposed_ports": []}
        manifest["id"] = manifest_id(manifest)
        self.store.registry_put(manifest, {manifest["layers"][0]: len(LAYER)}, "etc-h1")
        wait_for(lambda: len([h for h in self.store.hosts() if h["state"] == "alive"]) == hosts, 30,
                 "every host to register", ignore=(errors.DcError,))

    def start_hub(self, name: str) -> None:
        argv = [sys.executable, "-m", "hub.main", "--store", "etcd", "--etcd", self.etcd.url,
                "--etcd-prefix", self.prefix, "--hub-name", name, "--listen", self.endpoints[name],
                "--state-dir", os.path.join(self.root, name), "--heartbeat-s", str(HEARTBEAT_SECONDS),
                "--missed-heartbeats", "30", "--lease-s", str(LEASE_SECONDS)]
        log = open(os.path.join(self.root, f"{name}.log"), "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()

        def answers():
            with wire.connect(self.endpoints[name], timeout_s=2) as c:
                return c.call("hub_info")["name"] == name
        wait_for(answers, 30, f"hub {name} to serve", ignore=(errors.DcError,))

    def add_agent(self, name: str, reverse: bool) -> None:
        agent = self.agents[name] = Agent(name)
        endpoint = f"ipc://{self.root}/{name}.sock"
        svc = self.services[name] = wire.Service(agent, f"fake-{name}", heartbeat_s=1.0)
        svc.bind(endpoint)
        svc.start()

        def summary():
            return {"capacity": {"memory_reservable_bytes": 64 * GiB, "container_slots": 40},
                    "containers": agent.container_ls()}

        hubs = list(self.endpoints.values())
        link = HubLink(hubs[::-1] if reverse else hubs, {"name": name, "endpoint": endpoint, "address": "",
                                                         "labels": {}}, summary, HEARTBEAT_SECONDS)
        link.start()
        self.links.append(link)

    def client(self, order: int = 0, timeout_s: float = 20.0) -> FailoverClient:
        hubs = list(self.endpoints.values())
        return FailoverClient(hubs[::-1] if order % 2 else hubs,
                              lambda ep: wire.connect(ep, timeout_s=timeout_s), probe_timeout_s=2.0)

    def info(self, name: str) -> dict:
        with wire.connect(self.endpoints[name], timeout_s=3) as c:
            return c.call("hub_info")

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(10)

    def close(self) -> None:
        for link in self.links:
            link.stop()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for svc in self.services.values():
            svc.stop()
        try:
            self.store.close()
        except (AttributeError, errors.DcError):
            pass


@pytest.fixture
def hubs():
    root = f"/tmp/etc-{uuid.uuid4().hex[:8]}"
    os.makedirs(root)
    made = None
    try:
        with running_etcd(root) as etcd:
            made = Hubs(root, etcd)
            yield made
    finally:
        if made is not None:
            made.close()
        shutil.rmtree(root, ignore_errors=True)


def _settled(h: Hubs) -> bool:
    """No reserved row, each row on the one host that runs it, every
    container known, and each host's reservation record = its rows."""
    rows = {r["name"]: r for r in h.store.containers()}
    where: dict[str, list[str]] = {}
    for host, agent in h.agents.items():
        for name in agent.containers:
            where.setdefault(name, []).append(host)
    if any(r["state"] != "placed" for r in rows.values()) or set(rows) != set(where):
        return False
    if any(where[n] != [r["host"]] for n, r in rows.items()):
        return False
    counts = {host: sum(1 for r in rows.values() if r["host"] == host) for host in h.agents}
    return all(h.store.reserved_memory().get(host, (0, 0))[1] == n for host, n in counts.items())


def test_the_leader_killed_during_50_creates_loses_nothing_and_leadership_moves(hubs):
    for agent in hubs.agents.values():
        agent.before["container_create"] = lambda: gevent.sleep(0.2)  # creates stay in flight a while
    leader = hubs.info("etc-hub-a")["leader"]
    assert leader in hubs.endpoints and hubs.info("etc-hub-b")["leader"] == leader
    survivor = next(n for n in hubs.endpoints if n != leader)
    assert [m["name"] for m in hubs.info(survivor)["members"]] == sorted(hubs.endpoints)
    outcomes: dict[str, str] = {}

    def create(i: int) -> None:
        name = f"etc-c{i:02d}"
        with hubs.client(i) as client:
            try:
                client.create_container("busybox", name, {"memory_bytes": 256 << 20})
                outcomes[name] = "ok"
            except errors.DcError as exc:  # typed: anything else fails the greenlet, and the test
                outcomes[name] = type(exc).__name__

    tasks = [gevent.spawn(create, i) for i in range(50)]
    wait_for(lambda: len(outcomes) >= 10, 60, "the first creates to finish")
    hubs.kill(leader)
    killed_at = time.monotonic()
    wait_for(lambda: hubs.info(survivor)["leader"] == survivor, LEASE_SECONDS + 2, "the survivor to lead",
             interval_s=0.05, ignore=(errors.DcError,))
    moved_s = time.monotonic() - killed_at
    gevent.joinall(tasks, timeout=120)
    assert all(t.ready() for t in tasks), "a create hung"
    for t in tasks:
        t.get()  # re-raises an untyped failure
    assert len(outcomes) == 50 and "ok" in outcomes.values()
    wait_for(lambda: _settled(hubs), 60, "every create decided, nothing reserved, no reservation leaked")
    rows = {r["name"] for r in hubs.store.containers()}
    assert {n for n, o in outcomes.items() if o == "ok"} <= rows  # each success is there, once
    for name, outcome in outcomes.items():
        if outcome not in ("ok", "Unreachable", "CallTimeout", "HostLost"):  # those may have run
            assert name not in rows, f"{name} failed with {outcome} but runs"
    print(f"\nleadership moved in {moved_s:.2f} s (lease {LEASE_SECONDS} s); outcomes: "
          + ", ".join(f"{o} {list(outcomes.values()).count(o)}" for o in sorted(set(outcomes.values()))))


def test_etcd_stopped_placement_fails_fast_existing_containers_answer_and_all_recovers(hubs):
    with hubs.client() as client:
        client.create_container("busybox", "etc-keep")
        assert client.container_inspect("etc-keep")["name"] == "etc-keep"
        hubs.etcd.stop()
        try:
            started = time.monotonic()
            with pytest.raises(errors.StoreUnavailable):
                client.create_container("busybox", "etc-new")
            assert time.monotonic() - started < 5.0  # etcd's request timeout (2 s), not the call's (20 s)
            owner = next(n for n, a in hubs.agents.items() if "etc-keep" in a.containers)
            before = len(hubs.agents[owner].calls)
            assert client.container_inspect("etc-keep")["name"] == "etc-keep"  # reached its host
            assert len(hubs.agents[owner].calls) == before + 1
            info = client.hub_info()  # the operator sees the outage instead of an error
            assert info["store"] == "etcd" and info["store_ok"] is False and info["leader"] is None
            assert "etcd" in info["store_error"] or "answer" in info["store_error"]
        finally:
            hubs.etcd.start()
        created = wait_for(lambda: client.create_container("busybox", "etc-new"), 30,
                           "placement to work again", ignore=(errors.StoreUnavailable,))
        assert created["name"] == "etc-new"
    wait_for(lambda: _settled(hubs), 30, "the fleet to settle")
    assert all(h["state"] == "alive" for h in hubs.store.hosts())  # nobody judged lost for the outage


@pytest.mark.parametrize("kind", ["broadcast", "queue"])
def test_a_hub_killed_during_a_broadcast_or_a_queued_call_gives_a_result_or_a_typed_error(hubs, kind):
    victim = hubs.info("etc-hub-a")["leader"]
    with hubs.client(0 if victim == "etc-hub-a" else 1) as client:
        assert client.hub_info()["name"] == victim
        if kind == "broadcast":
            call = gevent.spawn(client.broadcast, "ops_run", ["3"], {"timeout_s": 10})
        else:
            call = gevent.spawn(client.queue, "ops_run", ["3"], {"timeout_s": 10})
        wait_for(lambda: any(("ops_run", "") in a.calls for a in hubs.agents.values()), 10, "the call to start")
        hubs.kill(victim)
        call.join(timeout=60)
        assert call.ready(), f"the {kind} hung"
        try:
            result = call.get()
            assert result  # a result is fine
        except errors.DcError as exc:
            assert isinstance(exc, (errors.Unreachable, errors.CallTimeout)) and "may have run" in exc.hint
        survivor = next(n for n in hubs.endpoints if n != victim)
        again = client.broadcast("hostinfo", [], {"timeout_s": 5}) if kind == "broadcast" else \
            client.queue("ops_run", ["0"], {"timeout_s": 20})
        assert client.hub_info()["name"] == survivor
        assert (again["summary"]["targeted"] == 3) if kind == "broadcast" else again["result"]["slept"] == 0
