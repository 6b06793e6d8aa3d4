"""Containers' logs on a real agent and real LXC: the command's stdout and
stderr reach a per-container log written by a process that outlives the
agent (agents.logger), rotated by size; ``container_logs`` and the
``container_logs_follow`` stream read it."""
from __future__ import annotations

import glob
import os
import subprocess
import time

import pytest

from dcctl import errors, procs
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc

COUNTER = "i=0; while true; do echo $i; i=$((i+1)); usleep 100000; done"


def numbers(lines: list[dict]) -> list[int]:
    return [int(r["text"]) for r in lines if r["stream"] == "stdout"]


def follow_until(agent, name: str, options: dict, done, timeout_s: float = 60) -> list[dict]:
    """Records of a container_logs_follow stream until ``done(records)``."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout_s
    with agent.client(30) as c:
        for item in c.call("container_logs_follow", name, options):
            got.extend(item["lines"])
            if done(got):
                return got
            assert time.monotonic() < deadline, f"the follow did not get there: {len(got)} records"
    return got


def writer_pid(agent, name: str) -> int:
    with open(os.path.join(agent.state_dir, "logs", name, "logger.pid")) as f:
        return int(f.read())


def test_every_line_survives_an_agent_kill9(agent_factory):
    """A container prints a numbered line every 100 ms; its agent is killed
    -9 for 3 s.  A follow after the restart shows every number exactly once,
    in order, and goes on with the new ones."""
    agent = agent_factory()
    name = "logs.count"
    agent.call("container_create", "busybox", name, {"command": ["sh", "-c", COUNTER]})
    agent.call("container_start", name)
    wait_for(lambda: len(agent.call("container_logs", name)["lines"]) >= 5, 30, "the first lines")
    writer = writer_pid(agent, name)
    agent.kill9()
    time.sleep(3)  # the scenario: the agent is away for 3 s while the container prints
    assert procs.alive(writer), "the log writer died with the agent"
    agent.start()
    before = numbers(agent.call("container_logs", name)["lines"])
    assert before and before[-1] >= 30, f"the lines printed while the agent was away are missing: {before[-5:]}"
    got = numbers(follow_until(agent, name, {}, lambda recs: numbers(recs) and numbers(recs)[-1] >= before[-1] + 10))
    assert got == list(range(len(got))), "a number is missing, repeated or out of order"
    assert writer_pid(agent, name) == writer  # the same writer, adopted
    out = agent.call("container_logs", name, {"tail": 3})
    assert len(out["lines"]) == 3 and out["dropped_records"] == 0
    assert {"at", "stream", "text"} == set(out["lines"][0])
    since = agent.call("container_logs", name, {"since": out["lines"][0]["at"]})["lines"]
    assert since[:3] == out["lines"]
    agent.call("container_destroy", name, True)
    wait_for(lambda: not procs.alive(writer), 10, "the writer to end with its container")
    assert not os.path.exists(os.path.join(agent.state_dir, "logs", name))


def test_rotation_keeps_the_log_under_its_cap_and_follow_reads_across(agent_factory):
    """max-size 32 KiB, max-file 2: 4000 lines (about 300 KiB of records)
    leave at most 2 files under 32 KiB each, the newest records kept in order;
    a follow started before reads every line once, across the rotations;
    stderr is its own stream."""
    size, files = 32 * 1024, 2
    agent = agent_factory(extra_args=(f"--log-max-size-bytes={size}", f"--log-max-files={files}"))
    name = "logs.rot"
    spew = ("sleep 2; i=0; while [ $i -lt 4000 ]; do echo line-$i-of-the-rotation-test; i=$((i+1)); "
            "[ $((i % 50)) = 0 ] && usleep 20000; done; echo finished >&2; sleep 600")
    agent.call("container_create", "busybox", name, {"command": ["sh", "-c", spew]})
    agent.call("container_start", name)
    got = follow_until(agent, name, {}, lambda recs: any(r["stream"] == "stderr" for r in recs), 120)
    out_lines = [r["text"] for r in got if r["stream"] == "stdout"]
    assert out_lines == [f"line-{i}-of-the-rotation-test" for i in range(4000)]
    assert [r["text"] for r in got if r["stream"] == "stderr"] == ["finished"]
    log_dir = os.path.join(agent.state_dir, "logs", name)
    paths = sorted(glob.glob(os.path.join(log_dir, "container.log*")))
    assert 1 <= len(paths) <= files, paths
    assert all(os.path.getsize(p) <= size for p in paths), [os.path.getsize(p) for p in paths]
    kept = agent.call("container_logs", name)["lines"]
    texts = [r["text"] for r in kept if r["stream"] == "stdout"]
    first = int(texts[0].split("-")[1])
    assert first > 0 and texts == [f"line-{i}-of-the-rotation-test" for i in range(first, 4000)]
    assert kept[-1]["text"] == "finished"
    for tail in (1, 3, len(kept) // 2, len(kept) - 1, len(kept), len(kept) + 5):  # into the rotated file
        assert agent.call("container_logs", name, {"tail": tail})["lines"] == kept[-tail:], tail
    for since in (kept[1]["at"], kept[len(kept) // 3]["at"], kept[-2]["at"]):
        assert agent.call("container_logs", name, {"since": since})["lines"] == [r for r in kept if r["at"] >= since]
    agent.call("container_destroy", name, True)


def test_a_full_disk_drops_records_counts_them_and_the_container_runs_on(agent_factory, tmp_path):
    """The log dir is a 128 KiB tmpfs: the writer drops what does not fit,
    counts it, and the container's command is never blocked."""
    logs = tmp_path / "logs"
    logs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k,mode=0700", "tmpfs", str(logs)], check=True)
    try:
        agent = agent_factory(extra_args=(f"--log-dir={logs}",))
        name = "logs.full"
        spew = ("i=0; while [ $i -lt 20000 ]; do echo filling-the-disk-line-$i; i=$((i+1)); done; "
                "touch /tmp/done; sleep 600")
        agent.call("container_create", "busybox", name, {"command": ["sh", "-c", spew]})
        agent.call("container_start", name)
        wait_for(lambda: agent.call("container_exec", name, ["cat", "/tmp/done"])["exit_code"] == 0, 120,
                 "the command to finish writing (never blocked by its log)")
        def accounted():  # every line is either kept or counted as dropped (the counters lag up to 1 s)
            o = agent.call("container_logs", name)
            return o if len(o["lines"]) + o["dropped_records"] == 20000 else None
        out = wait_for(accounted, 30, "every line kept or counted as dropped")
        assert out["dropped_records"] > 0 and out["dropped_bytes"] > 0
        assert agent.call("container_inspect", name)["state"] == "running"
        assert out["lines"][0]["text"] == "filling-the-disk-line-0"
        agent.call("container_destroy", name, True)
    finally:
        subprocess.run(["umount", "-l", str(logs)], capture_output=True)


def test_bad_log_options_are_refused_typed(agent_factory):
    agent = agent_factory()
    agent.call("container_create", "busybox", "logs.bad")
    for options in ({"tail": -1}, {"tail": 10 ** 6}, {"since": time.time() + 3600}, {"since": "soon"},
                    {"colour": True}, {"follow": "yes"}, {"follow": True}):
        with pytest.raises(errors.InvalidArgument):
            agent.call("container_logs", "logs.bad", options)
    with pytest.raises(errors.InvalidArgument):
        agent.call("container_logs_follow", "logs.bad", {"since": time.time() + 3600})
    with pytest.raises(errors.NoSuchContainer):
        agent.call("container_logs", "logs.none")
    assert agent.call("container_logs", "logs.bad", {"since": "10m"})["lines"] == []
    agent.call("container_destroy", "logs.bad")


def test_dcctl_says_on_stderr_when_the_answer_was_cut_to_the_cap(agent_factory):
    """A container prints 10,050 lines: ``dcctl container_logs`` (text) prints
    the newest 10,000 and a notice on stderr naming the cap and the ways
    round it; with --tail 5 no notice; --follow's history says it too."""
    agent = agent_factory()
    name = "logs.cap"
    agent.call("container_create", "busybox", name, {"command": ["sh", "-c", "seq 0 10049; sleep 600"]})
    agent.call("container_start", name)
    wait_for(lambda: [r["text"] for r in agent.call("container_logs", name, {"tail": 1})["lines"]] == ["10049"],
             60, "the last line")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "DCCTL_HOST": agent.endpoint}

    def dcctl(*args, timeout=60):
        return subprocess.run(["python3", "-m", "dcctl.cli", *args], capture_output=True, text=True, env=env,
                              timeout=timeout)

    done = dcctl("container_logs", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [str(i) for i in range(50, 10050)]
    assert "showing the last 10000 records; use --tail/--since or --follow" in done.stderr
    done = dcctl("container_logs", name, "--tail", "5")
    assert done.stdout.splitlines() == [str(i) for i in range(10045, 10050)] and "showing" not in done.stderr
    proc = subprocess.Popen(["python3", "-m", "dcctl.cli", "container_logs", name, "--follow"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        first_err = proc.stderr.readline()
        assert "showing the last 10000 records" in first_err
    finally:
        proc.kill()
        proc.wait()
    agent.call("container_destroy", name, True)
