"""The hub's fleet events on a real SQLite store and real sockets: the
since grammar and its typed errors, Docker's filter semantics, agent events
taken in exactly once, a restart that keeps the history, retention, and
followers (resume with the last index: every event exactly once; a slow one
dropped while the others go on)."""
from __future__ import annotations

import json
import os
import sys
import time

import gevent
import gevent.subprocess
import pytest

from dcctl import errors, wire
from hub.events import EventLog
from hub.store import HubStore
from tests.hubfakes import FakeFleet
from tests.waiting import wait_for


@pytest.fixture
def log_(tmp_path):
    store = HubStore(str(tmp_path / "hub"))
    yield EventLog(store), store, tmp_path
    store.close()


def agent_event(index: int, type_: str, container: str, **extra) -> dict:
    return {"index": index, "at": time.time(), "type": type_, "container": container, "host": "h1", **extra}


def test_since_index_time_and_duration(log_):
    log, _, _ = log_
    first = log.add("host_added", host="h1")
    second = log.add("host_lost", host="h1")
    assert (first["index"], second["index"]) == (1, 2) and second["type"] == second["kind"] == "host_lost"
    assert [e["index"] for e in log.query("0")] == [1, 2]
    assert [e["index"] for e in log.query("1")] == [2]
    assert log.query("2") == []
    assert [e["index"] for e in log.query("10m")] == [1, 2]
    assert [e["index"] for e in log.query(f"@{second['at'] - 0.0001}")] == [2]
    assert [e["index"] for e in log.query(first["at"] - 1)] == [1, 2]  # a number: Unix s, as before
    with pytest.raises(errors.InvalidArgument, match="in the future"):
        log.query("3")
    with pytest.raises(errors.InvalidArgument, match="in the future"):
        log.query(f"@{time.time() + 3600}")
    with pytest.raises(errors.InvalidArgument, match="want an index"):
        log.query("yesterday")


def test_a_bare_number_of_ten_digits_is_unix_seconds_a_smaller_one_an_index(log_):
    log, _, _ = log_
    first = log.add("host_added", host="h1")
    second = log.add("host_lost", host="h1")
    cut = int(second["at"]) - 1  # 10 digits: Unix seconds, as Docker's --since 1796131100
    assert [e["index"] for e in log.query(str(cut))] == [e["index"] for e in log.query(f"@{cut}")] == [1, 2]
    assert [e["index"] for e in log.query(f"{second['at'] - 0.0001:.4f}")] == [2]  # a fraction: Unix s
    assert [e["index"] for e in log.query("1")] == [2]  # below 1000000000: an index
    with pytest.raises(errors.InvalidArgument, match="since index 999999999 is in the future"):
        log.query("999999999")
    with pytest.raises(errors.InvalidArgument, match="in the future"):
        log.query(str(int(time.time()) + 3600))  # read as a time, not as an index
    assert first["index"] == 1


def test_filters_same_key_or_different_keys_and(log_):
    log, _, _ = log_
    log.ingest("h1", [agent_event(1, "created", "evt.web", image="busybox"),
                      agent_event(2, "started", "evt.web", image="busybox"),
                      agent_event(3, "created", "evt.db", image="debian")])
    log.add("host_lost", host="h2")

    def types(filters):
        return [(e["type"], e.get("container")) for e in log.query(0, filters)]

    assert types(["container=evt.web"]) == [("created", "evt.web"), ("started", "evt.web")]
    assert types(["container=evt.web", "container=evt.db"]) == [("created", "evt.web"), ("started", "evt.web"),
                                                                ("created", "evt.db")]
    assert types(["container=evt.web", "type=started"]) == [("started", "evt.web")]
    assert types({"event": ["created"], "image": "debian"}) == [("created", "evt.db")]
    assert types(["host=h2"]) == [("host_lost", None)]
    with pytest.raises(errors.InvalidArgument, match="unknown events filter 'colour'") as bad:
        log.query(0, ["colour=red"])
    assert "container" in bad.value.hint
    with pytest.raises(errors.InvalidArgument, match="not KEY=VALUE"):
        log.query(0, ["container"])


def test_agent_events_are_taken_in_once_each(log_):
    log, store, _ = log_
    batch = [agent_event(1, "created", "evt.a"), agent_event(2, "started", "evt.a")]
    assert log.ingest("h1", batch, head=2) == 2
    assert log.ingest("h1", batch + [agent_event(3, "died", "evt.a", exit_code=3)], head=3) == 3
    got = log.query(0)
    assert [(e["index"], e["agent_index"], e["type"]) for e in got] == [(1, 1, "created"), (2, 2, "started"),
                                                                         (3, 3, "died")]
    assert got[2]["exit_code"] == 3 and got[2]["host"] == "h1" and got[2]["source"] == "agent"
    assert store.event_cursor("h1") == 3
    # an agent whose journal started over (head below the cursor) is taken in from its start
    assert log.ingest("h1", [agent_event(1, "created", "evt.b")], head=1) == 1
    assert log.query("3")[0]["container"] == "evt.b"
    with pytest.raises(errors.InvalidArgument, match="integer index"):
        log.ingest("h1", [{"type": "created"}])


def test_a_restarted_hub_keeps_the_history_and_its_indexes(tmp_path):
    store = HubStore(str(tmp_path / "hub"))
    try:
        log = EventLog(store)
        for i in range(5):
            log.add("placed", name=f"evt.c{i}", host="h1")
        before = log.query(0)
    finally:
        store.close()
    reopened = HubStore(str(tmp_path / "hub"))
    try:
        again = EventLog(reopened)
        assert again.query(0) == before and before[0]["container"] == "evt.c0"
        assert again.add("host_back", host="h1")["index"] == 6
    finally:
        reopened.close()


def test_retention_drops_the_oldest_and_says_so(log_):
    _, store, _ = log_
    log = EventLog(store, max_events=50)
    for i in range(450):
        log.add("exec_ended", name="evt.a", n=i)
    kept = log.query(0)
    assert 50 <= len(kept) <= 50 + 200 and kept[-1]["index"] == 450  # pruned every PRUNE_EVERY appends
    with pytest.raises(errors.EventsExpired, match="are gone") as gone:
        log.query("5")
    assert gone.value.hint == f"resume from {kept[0]['index'] - 1}"
    assert log.query(str(kept[0]["index"] - 1)) == kept  # resuming right at the edge is fine
    with pytest.raises(errors.EventsExpired):
        log.query(f"@{kept[0]['at'] - 3600}")


@pytest.fixture
def served_fleet(tmp_path):
    fleet = FakeFleet(tmp_path, {"h1": 4})
    svc = wire.Service(fleet.hub, "hub", heartbeat_s=0.5, stream_stall_s=3.0)
    endpoint = f"ipc://{tmp_path}/hub.sock"
    svc.bind(endpoint)
    svc.start()
    clients = []

    def client():
        c = wire.RpcClient(endpoint, timeout_s=10, heartbeat_s=0.5)
        clients.append(c)
        return c

    yield fleet, client
    for c in clients:
        c.close()
    svc.stop()
    fleet.close()


def test_a_follower_that_resumes_from_its_last_index_gets_every_event_once(served_fleet):
    fleet, client = served_fleet
    log = fleet.hub.events_log
    start = fleet.store.events_bounds()["last"]
    for i in range(30):
        log.add("exec_ended", name="evt.x", n=i)
    seen = []
    with client().stream("events_follow", str(start), ["container=evt.x"]) as items:
        for event in items:
            seen.append(event)
            if len(seen) == 12:
                break  # the client goes away
    adder = gevent.spawn(lambda: [log.add("exec_ended", name="evt.x", n=30 + i) or gevent.sleep(0.001)
                                  for i in range(30)])
    with client().stream("events_follow", str(seen[-1]["index"]), ["container=evt.x"]) as items:
        for event in items:
            seen.append(event)
            if len(seen) == 60:
                break
    adder.join()
    assert [e["n"] for e in seen] == list(range(60))
    assert len({e["index"] for e in seen}) == 60


def test_a_slow_follower_is_dropped_and_the_others_go_on(served_fleet):
    fleet, client = served_fleet
    log = fleet.hub.events_log
    start = fleet.store.events_bounds()["last"]
    slow = client().stream("events_follow", str(start))
    fast = client().stream("events_follow", str(start))
    log.add("exec_ended", name="evt.y", n=0)
    assert next(slow)["n"] == 0  # then it reads no more

    def produce():
        for i in range(1, 600):
            log.add("exec_ended", name="evt.y", n=i)
            if i % 50 == 0:
                gevent.sleep(0.01)

    producer = gevent.spawn(produce)
    with gevent.Timeout(120):  # a deadline: the test fails instead of hanging
        got = [next(fast)["n"] for _ in range(599)]
        producer.join()
        assert got == list(range(599))
        wait_for(lambda: log.followers == 1, 60, "the slow follower dropped by the hub (the fast one stays)")
        taken = 1
        with pytest.raises(errors.SlowConsumer):
            for _ in slow:
                taken += 1
        assert taken < 600
        # the dropped follower resumes from the last index it saw (n = taken - 1), nothing lost
        with client().stream("events_follow", str(start + taken)) as items:
            rest = [next(items)["n"] for _ in range(600 - taken)]
    assert rest == list(range(taken, 600))


def test_events_and_host_events_over_the_wire(served_fleet):
    fleet, client = served_fleet
    c = client()
    assert c.call("host_events", "h1", [], 0) == {"cursor": 0}
    assert c.call("host_events", "h1", [agent_event(1, "created", "evt.w")], 1) == {"cursor": 1}
    got = c.call("events", "0", ["type=created"])
    assert [e["container"] for e in got] == ["evt.w"]
    with pytest.raises(errors.NoSuchHost):
        c.call("host_events", "nope", [])
    with pytest.raises(errors.InvalidArgument, match="unknown events filter"):
        next(c.stream("events_follow", "0", ["bogus=1"]))


def test_dcctl_follow_refused_at_its_start_prints_one_line(served_fleet, tmp_path):
    served_fleet[1]().call("events", "0")  # the hub answers (in this process: gevent's subprocess)
    env = {**os.environ, "DCCTL_HOST": f"ipc://{tmp_path}/hub.sock"}
    for args in (["--since", "2030-01-01T00:00:00"], ["--filter", "colour=red"]):
        done = gevent.subprocess.run([sys.executable, "-m", "dcctl.cli", "events", "--follow", *args],
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 1, done
        lines = done.stderr.splitlines()  # dcctl's error line (and its hint), no greenlet traceback
        assert lines[0].startswith("dcctl: InvalidArgument") and all(x.startswith("hint: ") for x in lines[1:])
        assert len(lines) == (2 if "hint" in done.stderr else 1), done.stderr


def test_without_an_event_store_events_are_kept_in_memory_once_each():
    log = EventLog(None, max_events=100)
    log.add("host_added", host="h1")
    assert log.ingest("h1", [agent_event(1, "created", "evt.m"), agent_event(2, "started", "evt.m")], 2) == 2
    assert log.ingest("h1", [agent_event(2, "started", "evt.m")], 2) == 2  # taken once
    assert [(e["index"], e["type"]) for e in log.query("0")] == [(1, "host_added"), (2, "created"), (3, "started")]
    assert [e["index"] for e in log.query("1", ["container=evt.m"])] == [2, 3]


def test_an_event_line_shows_the_hubs_time_and_keeps_agent_at_out_of_its_detail():
    from dcctl.cli.events import event_line
    line = event_line({"index": 7, "at": 1796131100.0, "agent_at": 1796127500.0, "type": "died", "host": "h1",
                       "container": "evt.l", "source": "agent", "agent_index": 3, "exit_code": 3,
                       "unknown_to_hub": True})
    assert line.startswith("7  2026-") and "agent_at" not in line
    assert line.endswith("exit_code=3 unknown_to_hub=true"), line


def test_an_agent_event_keeps_only_the_fields_agents_send_cut_to_size(served_fleet):
    fleet, client = served_fleet
    c = client()
    padded = agent_event(1, "exec_started", "evx.pad", pad="x" * 10_000, image="i" * 5000,
                         command=["sh", "-c", "y" * 5000] + ["z"] * 40)
    assert c.call("host_events", "h1", [padded], 1) == {"cursor": 1}
    got = c.call("events", "0", ["container=evx.pad"])[0]
    assert "pad" not in got and len(got["image"]) == 256
    assert got["command"][:2] == ["sh", "-c"] and len(got["command"]) == 16 and len(got["command"][2]) == 256
    assert len(json.dumps(got)) < 8192
    for bad, match in ((agent_event(2, "died", "evx.pad", at=float("nan")), "finite"),
                       (agent_event(2, "died", "evx.pad" * 20), "at most 64")):
        with pytest.raises(errors.InvalidArgument, match=match):
            c.call("host_events", "h1", [bad], 2)
    assert c.call("host_events", "h1", [], 1) == {"cursor": 1}  # nothing taken
    # a field of the wrong type or range (an exit status a container's root wrote) is dropped from its
    # event, not refused: a refused batch is sent again for ever, holding back the host's later events
    odd = [agent_event(2, "died", "evx.pad", exit_code=2 ** 40, oom_killed="yes"),
           agent_event(3, "died", "evx.pad", exit_code="a" * 9999), agent_event(4, "started", "evx.pad")]
    assert c.call("host_events", "h1", odd, 4) == {"cursor": 4}
    got = c.call("events", "0", ["container=evx.pad"])
    assert [(e["agent_index"], e.get("exit_code"), e.get("oom_killed")) for e in got[1:]] == [
        (2, None, None), (3, None, None), (4, None, None)]


def test_a_flooding_host_pushes_out_only_its_own_events(log_):
    _, store, _ = log_
    log = EventLog(store, max_events=100, max_host_events=50)
    log.add("host_added", host="h1")
    placed = log.add("placed", name="evx.real", host="h2")
    log.ingest("h2", [agent_event(1, "created", "evx.real")], 1)
    for start in range(1, 1001, 100):  # h1 floods: 1000 events of ghosts
        log.ingest("h1", [agent_event(i, "died", f"evx.ghost{i % 7}") for i in range(start, start + 100)],
                   start + 99)
    kept = log.query("0")
    assert [(e["type"], e.get("host")) for e in kept[:3]] == [("host_added", "h1"), ("placed", "h2"),
                                                              ("created", "h2")]
    assert 50 <= len([e for e in kept if e.get("host") == "h1" and e.get("source") == "agent"]) <= 250
    # h1's flood pushed out only h1's own events: a since before them still answers (it cannot make
    # others' queries expire), with what is kept
    after = log.query(str(placed["index"]))
    assert after[0]["type"] == "created" and after[0]["host"] == "h2"
    assert log.query("10m")[:3] == kept[:3]


def test_a_follower_from_the_oldest_kept_is_told_when_pruning_passes_it(log_):
    _, store, _ = log_
    log = EventLog(store, max_events=10, max_host_events=10)
    for i in range(5):
        log.add("placed", name=f"evx.f{i}", host="h1")
    follower = log.follow("0")
    assert next(follower)["container"] == "evx.f0"
    for i in range(300):  # pruned at 200: past the follower's cursor
        log.add("exec_ended", name="evx.f", n=i)
    with pytest.raises(errors.EventsExpired, match="fell behind"):
        list(follower)


def test_an_answer_never_fails_for_its_size(log_):
    log, _, _ = log_
    for i in range(40):
        log.add("placed", name="evx.big", host="h1", note="n" * 1000, n=i)
    got = log.query("0", max_bytes=10_000)
    assert 5 <= len(got) < 10 and [e["n"] for e in got] == list(range(40 - len(got), 40))  # the newest that fit
    assert sum(len(json.dumps(e)) for e in got) <= 10_000


@pytest.mark.parametrize("since", ["\u00b2", "9" * 5000, "@" + "9" * 400, "@nan", "\u0661\u0662", "1\u00b2m",
                                   float("nan"), float("inf")],
                         ids=["superscript", "5000-digits", "at-400-digits", "at-nan", "arabic-digits",
                              "superscript-duration", "nan", "inf"])
def test_a_strange_since_is_invalid_argument(log_, since):
    log, _, _ = log_
    log.add("host_added", host="h1")
    with pytest.raises(errors.InvalidArgument):
        log.query(since)
