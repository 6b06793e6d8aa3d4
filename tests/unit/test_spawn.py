"""lxcwrap.spawn on real host processes: a command that leaves a child in
the background holding its pipes still returns when it exits."""
import os
import signal

import gevent
import pytest

from lxcwrap import spawn

ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}


@pytest.fixture(autouse=True, scope="module")
def _hub():
    """gevent's hub (its epoll and eventfd) exists before fds are counted."""
    gevent.get_hub().loop.install_sigchld()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_background_child_holding_the_pipes_does_not_hold_the_call(no_fd_leak):
    child = spawn.Child(["sh", "-c", "sleep 300 & echo $! ; echo started; echo oops >&2; exit 4"], ENV,
                        setsid=True)
    try:
        with gevent.Timeout(20):  # the old code failed here with a TypeError after 5 s
            out = spawn.communicate(child, 60)
        lines = out["stdout"].decode().split()
        assert lines[1:] == ["started"] and out["stderr"] == b"oops\n"
        assert out["returncode"] == 4 and not out["timed_out"]
        assert out["stdout_incomplete"] and out["stderr_incomplete"]
        assert not out["stdout_truncated"] and not out["stderr_truncated"]
        assert _alive(int(lines[0])), "the background child must keep running"
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_a_command_that_closes_its_streams_is_read_to_the_end(no_fd_leak):
    child = spawn.Child(["sh", "-c", "head -c 3000000 /dev/zero; sleep 300 >/dev/null 2>&1 &"], ENV, setsid=True)
    try:
        out = spawn.communicate(child, 60, cap_bytes=1000)
        assert out["stdout"] == b"\0" * 1000 and out["stdout_truncated"]
        assert not out["stdout_incomplete"] and not out["stderr_incomplete"]
        assert out["returncode"] == 0
    finally:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_timeout_kills_and_keeps_what_was_read(no_fd_leak):
    child = spawn.Child(["sh", "-c", "echo early; exec sleep 300"], ENV, setsid=True)
    out = spawn.communicate(child, 0.5)
    assert out["timed_out"] and out["stdout"] == b"early\n" and out["returncode"] < 0
