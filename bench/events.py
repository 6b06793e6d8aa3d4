"""bench/events: fleet events per second through the hub to a follower.

A real dc-hub process (its own SQLite store under ``/tmp/dcevt-PREFIX``,
served on an ipc endpoint) takes agent events in with ``host_events`` (as
agents ship them, in batches of ``--batch``) while a follower reads
``events_follow``; the figure is events per second from the first push to
the follower holding the last one (every event persisted, in order, once),
and the same with one event per call.  No LXC: the events' source is the
wire call an agent makes.

Run:  python3 bench/events.py [--events 20000] [--batch 500] [--quick]
(``--quick``: 1000 events, for the test suite).  The hub has
``/tmp/dcevt-PREFIX`` in its argv and is gone when this exits, also after
SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import os
import secrets
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402

from bench import _common  # noqa: E402
from dcctl import errors, wire  # noqa: E402

#: Events one host sends in a run at most: under the hub's retention per host
#: (hub.events.MAX_HOST_EVENTS), so a follower behind by a whole run is not
#: pruned past; a longer run spreads its events over more hosts.
EVENTS_PER_HOST = 5000


def _event(host: str, index: int) -> dict:
    return {"index": index, "at": time.time(), "type": "exec_ended", "container": "bench.c", "host": host,
            "exit_code": 0}


def through_hub(client: wire.RpcClient, follower: wire.RpcClient, sent: dict[str, int], count: int,
                batch: int) -> float:
    """Push ``count`` agent events in batches, each batch from the host
    (of ``sent``: host -> the last agent index it sent, updated) that has
    sent the fewest, and return the seconds until the follower has the
    last one; the follower must get them all, in the order sent, once."""
    start = follower.call("events", "0")
    after = start[-1]["index"] if start else 0
    got: list[tuple[str, int]] = []
    expected: list[tuple[str, int]] = []
    with follower.stream("events_follow", str(after), ["type=exec_ended"]) as items:
        def read():
            for event in items:
                got.append((event["host"], event["agent_index"]))
                if len(got) == count:
                    return
        reader = gevent.spawn(read)
        gevent.sleep(0.2)  # the follower is waiting
        began = time.perf_counter()
        pushed = 0
        while pushed < count:
            host = min(sent, key=lambda h: (sent[h], h))
            n = min(batch, count - pushed)
            first = sent[host]
            client.call("host_events", host, [_event(host, i) for i in range(first + 1, first + n + 1)], first + n)
            expected.extend((host, i) for i in range(first + 1, first + n + 1))
            sent[host] = first + n
            pushed += n
        reader.join(timeout=300)
        took = time.perf_counter() - began
    if got != expected:
        raise SystemExit(f"the follower got {len(got)} events, not {count} in order")
    return took


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=20000)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--single", type=int, default=1000, help="events pushed one per call")
    args = _common.parse(p, {"events": 1000, "single": 200}, "dcevt" + secrets.token_hex(2))
    root = f"/tmp/dcevt-{args.prefix}"
    os.makedirs(root, exist_ok=True)
    procs = []
    try:
        endpoint = f"ipc://{root}/hub.sock"
        procs.append(_common.spawn([sys.executable, "-m", "hub.main", "--listen", endpoint, "--state-dir",
                                    f"{root}/hub", "--heartbeat-s", "30", "--log-level", "WARNING"],
                                   f"{root}/hub.log"))
        client = wire.RpcClient(endpoint, timeout_s=60)
        follower = wire.RpcClient(endpoint, timeout_s=60)
        hosts = [f"bench-h{i}" for i in range(1, 2 + (args.events + args.single - 1) // EVENTS_PER_HOST)]
        deadline = time.monotonic() + 60
        for host in hosts:
            while True:
                try:
                    client.call("host_register", {"name": host, "endpoint": f"ipc://{root}/none-{host}.sock",
                                                  "address": "127.0.0.1", "capacity": {
                                                      "memory_reservable_bytes": 1 << 30, "container_slots": 10}})
                    break
                except errors.Unreachable:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        sent = {host: 0 for host in hosts}
        took = through_hub(client, follower, sent, args.events, args.batch)
        print(f"events through the hub to a follower: {args.events} in {took:.2f} s = "
              f"{args.events / took:.0f} events/s (batches of {args.batch} from {len(hosts)} hosts, "
              f"persisted, in order, once)", flush=True)
        took = through_hub(client, follower, sent, args.single, 1)
        print(f"events through the hub to a follower, one per call: {args.single} in {took:.2f} s = "
              f"{args.single / took:.0f} events/s", flush=True)
        client.close()
        follower.close()
    finally:
        _common.teardown(procs, root)
    return 0


if __name__ == "__main__":
    _common.run(main)
