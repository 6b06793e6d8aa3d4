"""The agent's event journal on a real filesystem: indexes that go on across
restarts, a line cut short by a crash, retention by count and by age, and a
full disk (a small tmpfs of our own) that loses nothing it can keep."""
from __future__ import annotations

import errno
import os
import subprocess
import uuid

import pytest

from agents.events import EventJournal
from dcctl import errors
from tests.waiting import wait_for


def test_indexes_go_on_across_restarts(tmp_path):
    j = EventJournal(str(tmp_path), "h1")
    made = [j.record("created", "evt.a", image="busybox"), j.record("started", "evt.a")]
    assert [e["index"] for e in made] == [1, 2] and made[0]["host"] == "h1" and made[0]["image"] == "busybox"
    again = EventJournal(str(tmp_path), "h1")
    assert again.since(0) == made and again.head() == 2
    assert again.record("died", "evt.a", exit_code=3)["index"] == 3
    assert [e["type"] for e in EventJournal(str(tmp_path), "h1").since(1)] == ["started", "died"]


def test_a_line_cut_short_by_a_crash_is_dropped_and_overwritten(tmp_path):
    j = EventJournal(str(tmp_path), "h1")
    j.record("created", "evt.a")
    seg = next(p for p in os.listdir(j.dir) if p.startswith("seg-"))
    with open(os.path.join(j.dir, seg), "r+b") as f:  # a crash in the middle of the second write
        data = f.read()
        f.seek(data.find(b"\0"))
        f.write(b'{"index": 2, "at": 1, "ty')
    again = EventJournal(str(tmp_path), "h1")
    assert [e["index"] for e in again.since(0)] == [1]
    again.record("started", "evt.a")
    assert [e["type"] for e in EventJournal(str(tmp_path), "h1").since(0)] == ["created", "started"]


def test_retention_by_count_keeps_the_disk_bounded(tmp_path):
    j = EventJournal(str(tmp_path), "h1", max_events=50, segment_bytes=4096)
    for i in range(600):
        j.record("exec_ended", "evt.a", exit_code=i)
    assert j.head() == 600 and j.first() > 500
    assert len(j.since(0, limit=1000)) <= 50 + 4096 // 60
    files = os.listdir(j.dir)
    assert len(files) <= 50 * 100 // 4096 + 4, files  # segments (and the spare) come and go
    again = EventJournal(str(tmp_path), "h1", max_events=50, segment_bytes=4096)
    assert again.first() == j.first() and again.head() == 600
    with pytest.raises(errors.EventsExpired, match="are gone") as gone:
        again.check_since(10)
    assert gone.value.hint == f"resume from {again.first() - 1}"
    with pytest.raises(errors.InvalidArgument, match="not in 0..600"):
        again.check_since(601)
    again.check_since(again.first() - 1)


def test_retention_by_age(tmp_path):
    j = EventJournal(str(tmp_path), "h1", max_age_s=0.3, segment_bytes=4096)
    j.record("created", "evt.old")

    def old_one_gone():
        j.record("exec_ended", "evt.new")
        return j.first() > 1

    wait_for(old_one_gone, 30, "the old segment dropped by age", interval_s=0.02)
    assert all(e["container"] == "evt.new" for e in j.since(0, limit=1000))


@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs of our own (unique mount point), unmounted whatever happens."""
    point = tmp_path / f"evtfs-{uuid.uuid4().hex[:8]}"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "evt-events-test", str(point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _fill(path: str) -> None:
    """Take every free byte of the filesystem (unbuffered writes, down to one byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        size = 64 << 10
        while size:
            try:
                os.write(fd, bytes(size))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                size //= 2
    finally:
        os.close(fd)


def test_a_full_disk_loses_nothing_the_journal_can_keep(small_fs):
    root = str(small_fs / "state")
    j = EventJournal(root, "h1", segment_bytes=64 << 10, max_unsaved=300)
    j.record("created", "evt.a")
    filler = str(small_fs / "filler")
    _fill(filler)
    # the segment and its spare were preallocated: these go to disk all the same
    for i in range(400):
        j.record("exec_ended", "evt.a", exit_code=i)
    assert j.unsaved == 0
    # past the segment and the spare, events wait in memory, none raised
    while j.unsaved == 0:
        j.record("exec_ended", "evt.b")
    for i in range(250):
        j.record("exec_ended", "evt.b", exit_code=i)
    assert 0 < j.unsaved <= 300 and j.lost == 0
    head = j.head()
    os.unlink(filler)
    assert j.flush() == 0 and j.unsaved == 0
    again = EventJournal(root, "h1", segment_bytes=64 << 10)
    assert [e["index"] for e in again.since(0, limit=5000)] == list(range(1, head + 1))
    # past max_unsaved the oldest unsaved go, counted
    _fill(filler)
    while j.unsaved == 0:
        j.record("exec_ended", "evt.c")
    for _ in range(400):
        j.record("exec_ended", "evt.c")
    assert j.unsaved == 300 and j.lost > 0
    os.unlink(filler)
    assert j.flush() == 0
    kept = [e["index"] for e in EventJournal(root, "h1", segment_bytes=64 << 10).since(0, limit=5000)]
    assert kept == sorted(set(kept)) and kept[-1] == j.head() and len(kept) == j.head() - j.lost


def test_events_recorded_while_another_greenlet_writes_are_written_once(tmp_path):
    import gevent
    j = EventJournal(str(tmp_path), "h1")
    writers = [gevent.spawn(j.record, "exec_ended", "evt.a", n=i) for i in range(50)]
    writers.append(gevent.spawn(j.flush))
    gevent.joinall(writers, raise_error=True)
    j.flush()
    assert j.unsaved == 0
    again = EventJournal(str(tmp_path), "h1")
    assert [e["index"] for e in again.since(0, limit=100)] == list(range(1, 51))
