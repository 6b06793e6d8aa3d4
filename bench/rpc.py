"""bench/rpc: the round-trip cost of CURVE against plain TCP on one agent
method, side by side: calls per second (one caller, and 8 concurrent
callers), p50 and p99 in microseconds.

The agent is a real dc-agent in hollow mode (no LXC), serving the same
method table on a CURVE tcp endpoint and on a plain loopback one; the
method is ``container_ls``.  Target: CURVE costs at most 20% throughput.
Beside them, the reference: a bare, stock zerorpc server (its own process,
no dcfleet code) answering the same method with ``[]``, called with a plain
zerorpc client over loopback TCP; target: the agent's plain call within
1.2x of it (calls per second).

Run as root:  python3 bench/rpc.py [--calls 3000] [--quick]
(``--quick``: 100 calls per row, for the test suite).  The agent has
``/tmp/dcrpc-PREFIX`` in its argv and is gone when this exits, also after
SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402
import zerorpc  # noqa: E402

from bench import _common  # noqa: E402
from dcctl import auth, wire  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(client: wire.RpcClient, calls: int, workers: int) -> tuple[float, float, float]:
    lat: list[float] = []
    counter = iter(range(calls))

    def worker():
        for _ in counter:
            t = time.perf_counter()
            client.call("container_ls")
            lat.append(time.perf_counter() - t)

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(workers)], raise_error=True)
    elapsed = time.perf_counter() - started
    lat.sort()
    return calls / elapsed, statistics.median(lat) * 1e6, lat[int(len(lat) * 0.99)] * 1e6


#: The reference server: stock zerorpc only (argv: endpoint, then the run's root as a marker).
BARE_ECHO = """
import sys, zerorpc
class Echo:
    def container_ls(self):
        return []
server = zerorpc.Server(Echo())
server.bind(sys.argv[1])
server.run()
"""


class _Bare:
    """A stock zerorpc client with RpcClient's ``call`` shape, for measure()."""

    def __init__(self, endpoint: str):
        self.client = zerorpc.Client(endpoint, timeout=30)

    def call(self, method: str, *args):
        return self.client(method, *args)

    def close(self) -> None:
        self.client.close()


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def against_bare(agent_ep: str, bare_ep: str, agent_pid: int, bare_pid: int, calls: int,
                 workers: int, blocks: int = 10) -> tuple[float, float, float, float]:
    """The agent's plain endpoint and the bare echo, measured in turns of
    calls/blocks each (so a machine that gets busier mid-run weighs on
    both alike): (agent calls/s, bare calls/s, agent server CPU us/call,
    bare server CPU us/call)."""
    agent, bare = wire.connect(agent_ep, 30), _Bare(bare_ep)
    try:
        per = max(1, calls // blocks)
        measure(agent, min(200, calls), workers)  # warm up
        measure(bare, min(200, calls), workers)
        took = {"agent": 0.0, "bare": 0.0}
        cpu = {"agent": 0.0, "bare": 0.0}
        for _ in range(blocks):
            for label, client, pid in (("agent", agent, agent_pid), ("bare", bare, bare_pid)):
                before, started = _cpu_s(pid), time.perf_counter()
                measure(client, per, workers)
                took[label] += time.perf_counter() - started
                cpu[label] += _cpu_s(pid) - before
        n = per * blocks
        return n / took["agent"], n / took["bare"], cpu["agent"] / n * 1e6, cpu["bare"] / n * 1e6
    finally:
        agent.close()
        bare.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=3000)
    args = _common.parse(p, {"calls": 100}, "r" + secrets.token_hex(3))
    root = f"/tmp/dcrpc-{args.prefix}"
    os.makedirs(root, mode=0o700)
    try:
        return _bench(args, root)
    finally:
        _common.kill_marked(root)
        shutil.rmtree(root, ignore_errors=True)


def _bench(args, root: str) -> int:
    curve_ep, plain_ep = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    keys_dir = os.path.join(root, "state", "keys")
    server_public = auth.ensure_server_pair(keys_dir)[0].decode()
    pub, sec = auth.keygen(os.path.join(root, "client"), "bench")
    auth.Allowlist(keys_dir).add("admin", "bench", auth.load_public(pub).decode())
    proc = _common.spawn([sys.executable, "-m", "agents.main", "--hollow", "--listen", curve_ep,
                          "--insecure-listen", plain_ep, "--state-dir", os.path.join(root, "state"),
                          "--bridge", "dcbrpc", "--subnet", "10.255.1.0/24"], os.path.join(root, "agent.log"))
    bare_ep = f"tcp://127.0.0.1:{free_port()}"
    bare = _common.spawn([sys.executable, "-c", BARE_ECHO, bare_ep, root], os.path.join(root, "bare.log"))
    try:
        keys = auth.ClientKeys.from_files(sec, server_public)
        deadline = time.monotonic() + 30
        while True:
            try:
                with wire.connect(plain_ep, 1) as c:
                    c.call("_zerorpc_ping")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"bench/rpc: container_ls on a hollow agent, {args.calls} calls per row, {os.cpu_count()} CPUs")
        for workers in (1, 8):
            rows = {}
            for label, ep, k in (("plain", plain_ep, None), ("curve", curve_ep, keys)):
                with wire.connect(ep, 30, k) as c:
                    measure(c, min(200, args.calls), workers)  # warm up
                    rows[label] = measure(c, args.calls, workers)
                rate, p50, p99 = rows[label]
                print(f"  {label:5s} callers={workers}: {rate:8.0f} calls/s  p50 {p50:7.0f} us  p99 {p99:7.0f} us")
            cost = 1 - rows["curve"][0] / rows["plain"][0]
            print(f"  CURVE throughput cost at {workers} caller(s): {cost * 100:.1f}%")
            agent_rate, bare_rate, agent_cpu, bare_cpu = against_bare(plain_ep, bare_ep, proc.pid, bare.pid,
                                                                      args.calls, workers)
            print(f"  bare zerorpc echo callers={workers}: {bare_rate:8.0f} calls/s, server CPU {bare_cpu:5.0f} us/call;"
                  f" agent plain {agent_rate:8.0f} calls/s, server CPU {agent_cpu:5.0f} us/call (interleaved)")
            print(f"  bare zerorpc / agent plain at {workers} caller(s): {bare_rate / agent_rate:.2f}x "
                  "(target <= 1.2x)", flush=True)
        return 0
    finally:
        _common.reap([proc, bare])


if __name__ == "__main__":
    _common.run(main)
