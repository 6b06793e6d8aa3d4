"""The reading side of containers' logs (agents.logs.ContainerLogs.read and
follow's history) on real log files: --tail and --since give exactly what a
parse of every record would select, across rotation boundaries, chunk
boundaries and lines longer than a chunk; and a read of a 30 MiB log takes
memory bounded by what it returns, not by the log's size."""
from __future__ import annotations

import json
import os
import tracemalloc

import pytest

from agents import logs as logs_mod
from agents.logs import MAX_RECORDS, ContainerLogs, parse_lines


def write_log(d: str, files: list[list[tuple[float, str, str]]], partial: bytes = b"") -> None:
    """files: oldest first, each a list of (at, stream, text); ``partial``: an
    unfinished record at the end of the current file."""
    os.makedirs(d)
    names = [f"container.log.{i}" for i in range(len(files) - 1, 0, -1)] + ["container.log"]
    for fname, recs in zip(names, files):
        with open(os.path.join(d, fname), "wb") as f:
            f.write(b"".join(json.dumps({"at": at, "stream": s, "text": t}).encode() + b"\n" for at, s, t in recs))
    with open(os.path.join(d, "container.log"), "ab") as f:
        f.write(partial)
    for i, fname in enumerate(names):  # rotated files were last written before the newer ones
        os.utime(os.path.join(d, fname), (1000.0 + i, 1000.0 + i))


def everything(d: str) -> list[dict]:
    names = sorted((n for n in os.listdir(d) if n.startswith("container.log")),
                   key=lambda n: -int(n.rsplit(".", 1)[1]) if n[-1].isdigit() else 0)
    out = []
    for n in names:
        with open(os.path.join(d, n), "rb") as f:
            data = f.read()
        out += parse_lines(data[:data.rfind(b"\n") + 1])
    return out


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(logs_mod, "READ_CHUNK_BYTES", 100)


def test_tail_and_since_are_exact_across_rotations_and_chunks(tmp_path, small_chunks):
    """Three files of records (a few longer than a read chunk, a malformed
    line, an unfinished last record): every tail and since gives what a full
    parse selects; the unfinished record is not read; follow's history agrees
    and its offset is just after the last complete record."""
    files, at, n = [], 100.0, 0
    for size in (40, 25, 30):
        recs = []
        for _ in range(size):
            text = ("x" * 300 + str(n)) if n % 17 == 0 else f"line {n}"
            recs.append((at, "stderr" if n % 5 == 0 else "stdout", text))
            at, n = at + 0.5, n + 1
        files.append(recs)
    write_log(str(tmp_path / "c"), files, partial=b'{"at": 999.0, "stream": "stdout", "te')
    with open(tmp_path / "c" / "container.log.1", "ab") as f:
        f.write(b"not json\n")
    logs = ContainerLogs(str(tmp_path), 1 << 20, 2)
    full = everything(str(tmp_path / "c"))
    assert len(full) == 95
    for tail in (0, 1, 3, 29, 30, 31, 55, 56, 94, 95, 96, 1000):
        got = logs.read("c", None, tail)
        assert got["lines"] == (full[-tail:] if tail else []), tail
        assert got["truncated"] is False
    for since in (0.0, 100.0, 100.2, 119.5, 120.0, 132.25, 147.0, 200.0):
        want = [r for r in full if r["at"] >= since]
        assert logs.read("c", since, None)["lines"] == want, since
        assert logs.read("c", since, 7)["lines"] == want[-7:], since
    assert logs.read("c", None, None)["lines"] == full
    it = logs.follow("c", 110.0, 40, lambda: False, lambda fn, *a: fn(*a))
    first = next(it)
    it.close()
    assert first["lines"] == [r for r in full if r["at"] >= 110.0][-40:]
    records, _, fd, offset = logs._history("c", None, 1)
    os.close(fd)
    assert offset == os.path.getsize(tmp_path / "c" / "container.log") - len(b'{"at": 999.0, "stream": "stdout", "te')


def test_a_30_mib_log_is_read_in_bounded_memory(tmp_path):
    """A ``yes`` flood's three rotated files (30 MiB, about 480,000 records):
    --tail 3, --since a second ago and a plain read (capped at MAX_RECORDS,
    truncated) each allocate a few MiB at most; every record parsed would
    take over 100 MiB."""
    d = tmp_path / "flood"
    os.makedirs(d)
    at, n = 1764590000.0, 0
    for fname in ("container.log.2", "container.log.1", "container.log"):
        with open(d / fname, "wb") as f:
            chunk, size = [], 0
            while size < 10 << 20:
                line = json.dumps({"at": round(at, 6), "stream": "stdout", "text": f"y {n}"}).encode() + b"\n"
                chunk.append(line)
                size += len(line)
                at, n = at + 0.00005, n + 1
            f.write(b"".join(chunk))
            del chunk
    last_at = at - 0.00005
    logs = ContainerLogs(str(tmp_path), 1 << 40, 2)
    for since, tail, count, truncated in ((None, 3, 3, False), (last_at - 0.1, None, 2001, False),
                                          (None, None, MAX_RECORDS, True)):
        tracemalloc.start()
        try:
            got = logs.read("flood", since, tail)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert abs(len(got["lines"]) - count) <= 5 and got["truncated"] is truncated
        assert since is None or got["lines"][0]["at"] >= since > got["lines"][0]["at"] - 0.0002
        assert got["lines"][-1]["text"] == f"y {n - 1}"
        assert peak < 16 << 20, f"since={since} tail={tail}: {peak / 2**20:.1f} MiB at peak"
