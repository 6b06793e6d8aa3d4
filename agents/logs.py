"""Containers' logs on the agent: each container's log writer (agents.logger,
a detached process that outlives the agent) and the reading side of
``container_logs`` (history, ``--tail``, ``--since``, and ``--follow`` as a
stream that goes on across rotations).

Layout: ``LOG_DIR/<name>/`` holds ``stdout.fifo`` and ``stderr.fifo`` (bind
mounted into the container), ``container.log`` and its rotations
``container.log.1`` ..., ``logger.pid`` and ``logger.status`` (agents.logger).
"""
from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import sys
import time
from typing import Callable, Iterator

import gevent

from agents import logger as writer
from dcctl import errors, procs
from lxcwrap.run import ToolError
from lxcwrap.run import run as run_tool

log = logging.getLogger(__name__)

__all__ = ["MAX_RECORDS", "BATCH_RECORDS", "FOLLOW_POLL_SECONDS", "ContainerLogs", "is_writer", "parse_lines"]

#: Most records one answer (or a follow's history) carries; the newest are kept.
MAX_RECORDS = 10000
#: Records per item of a follow stream.
BATCH_RECORDS = 500
FOLLOW_POLL_SECONDS = 0.1
#: Bytes a history read takes from a log file at once (backwards from its end).
READ_CHUNK_BYTES = 256 * 1024
#: Bytes a follow reads at once from the file being written (then yields).
FOLLOW_READ_BYTES = 256 * 1024
#: A history read with since stops at the first record this much older than
#: since (records are in time order; the slack covers a clock step back).
SINCE_SLACK_SECONDS = 1.0
#: How often a follow asks whether the container still runs (it ends when not).
FOLLOW_STATE_SECONDS = 2.0
WRITER_START_TIMEOUT_SECONDS = 20.0
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def is_writer(argv: list[bytes]) -> bool:
    """Whether a process's argv is a log writer's (compiled or Python)."""
    return b"agents.logger" in argv or (bool(argv) and os.path.basename(argv[0]).startswith(b"dcfleet-logwriter"))


def _wait_gone(pid: int, timeout_s: float) -> None:
    """Wait (blocking: the thread pool's) up to ``timeout_s`` for ``pid``
    to exit: on a pidfd, so the wait ends as the process does; polled
    every 20 ms where pidfds are missing."""
    try:
        fd = os.pidfd_open(pid)
    except (OSError, AttributeError):
        fd = None
    if fd is not None:
        try:
            poller = select.poll()  # not select(): the agent may hold fds past 1024
            poller.register(fd, select.POLLIN)
            poller.poll(timeout_s * 1000)
        finally:
            os.close(fd)
        return
    deadline = time.monotonic() + timeout_s
    while procs.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


def parse_lines(data: bytes) -> list[dict]:
    """Records from complete JSON lines (a malformed line is skipped)."""
    out = []
    for line in data.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and {"at", "stream", "text"} <= rec.keys():
            out.append({"at": rec["at"], "stream": rec["stream"], "text": rec["text"]})
    return out


class ContainerLogs:
    """The log dirs and writers of one agent's containers.

    Args: log_dir (the agent's LOG_DIR), max_size_bytes, max_files
    (rotation), hollow (a hollow agent for benchmarks: no writer starts).
    """

    def __init__(self, log_dir: str, max_size_bytes: int, max_files: int, hollow: bool = False):
        self.root, self.max_size, self.max_files, self.hollow = log_dir, max_size_bytes, max_files, hollow
        #: the compiled writer (agents/logwriter.py), once built; None: agents/logger.py
        self.writer_binary: str | None = None

    def dir(self, name: str) -> str:
        """The log dir of container ``name``."""
        return os.path.join(self.root, name)

    def prepare(self, name: str) -> tuple[str, str]:
        """Make the container's log dir and FIFOs (at create).

        Returns: the host paths of its (stdout, stderr) FIFOs.
        Raises: OSError."""
        d = self.dir(name)
        os.makedirs(d, mode=0o700, exist_ok=True)
        paths = tuple(writer.fifo_path(d, s) for s in writer.STREAMS)
        for p in paths:
            if not os.path.exists(p):
                os.mkfifo(p, 0o622)
        return paths  # type: ignore[return-value]

    def writer_pid(self, name: str) -> int | None:
        """The pid of the container's running log writer, or None."""
        try:
            with open(os.path.join(self.dir(name), writer.PID_NAME)) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        words = procs.cmdline(pid)
        if is_writer(words) and self.dir(name).encode() in words and procs.alive(pid):
            return pid
        return None

    def ensure_writer(self, name: str) -> int:
        """Start the container's log writer unless it runs (before every
        start, and for running containers when the agent starts).

        Returns: its pid.
        Raises: StoreError (it could not start: the container must not
        start, its output would have no reader)."""
        pid = self.writer_pid(name)
        if pid or self.hollow:
            return pid or 0
        self.prepare(name)
        head = [self.writer_binary] if self.writer_binary else [sys.executable, "-m", "agents.logger"]
        argv = [*head, self.dir(name), "--max-size-bytes", str(self.max_size), "--max-files", str(self.max_files)]
        env = {**os.environ, "PYTHONPATH": _REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
        try:  # posix_spawn (lxcwrap.run), not a fork of the agent; the writer's daemon does chdir("/")
            done = run_tool(argv, WRITER_START_TIMEOUT_SECONDS, env=env)
        except ToolError as exc:
            raise errors.StoreError(f"container {name!r}: its log writer did not start: {exc}") from exc
        pid = self.writer_pid(name)
        if done.returncode != 0 or not pid:
            raise errors.StoreError(f"container {name!r}: its log writer did not start: "
                                    f"{done.stderr_text[-300:] or 'exit ' + str(done.returncode)}",
                                    hint=f"see {self.dir(name)}")
        return pid

    def remove(self, name: str) -> None:
        """Stop the container's writer and remove its log dir (at destroy).
        Blocking file work (the thread pool)."""
        pid = self.writer_pid(name)
        if pid:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            _wait_gone(pid, 5.0)
            if procs.alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir(name), ignore_errors=True)

    def status_counts(self, name: str) -> dict:
        """The writer's counters alone (one small file read): {records,
        bytes, dropped_records, dropped_bytes}."""
        st = writer.read_status(self.dir(name))
        return {k: st.get(k, 0) for k in ("records", "bytes", "dropped_records", "dropped_bytes")}

    def status(self, name: str) -> dict:
        """{writer_pid (or None), records, bytes, dropped_records,
        dropped_bytes, last_error, size_bytes (the log files on disk)}."""
        st = writer.read_status(self.dir(name))
        files = writer.log_files(self.dir(name), self.max_files + 1)
        return {"writer_pid": self.writer_pid(name), "records": st.get("records", 0), "bytes": st.get("bytes", 0),
                "dropped_records": st.get("dropped_records", 0), "dropped_bytes": st.get("dropped_bytes", 0),
                "last_error": st.get("last_error"),
                "size_bytes": sum(os.path.getsize(f) for f in files if os.path.exists(f))}

    # ------------------------------------------------------------ reading
    def _history(self, name: str, since: float | None, tail: int | None) -> tuple[list[dict], bool, int | None, int]:
        """The records ``since`` and ``tail`` select, oldest first, at most
        MAX_RECORDS of them (the newest), whether more were selected, and the
        current file's open fd and the offset read to (None, 0 without one).

        Reads backwards from the end of the newest file, chunk by chunk, and
        on into older files only as far as needed: the ``tail`` (or
        MAX_RECORDS + 1) newest records, or back to the first record older
        than ``since`` (less SINCE_SLACK_SECONDS); a rotated file last
        written before that is not opened.  Memory and time are bounded by
        what is selected, not by the log's size.  Blocking."""
        d = self.dir(name)
        cur = os.path.join(d, writer.LOG_NAME)
        try:
            fd = os.open(cur, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            fd = None
        offset = _complete_end(fd, os.fstat(fd).st_size) if fd is not None else 0
        want = MAX_RECORDS + 1 if tail is None else min(tail, MAX_RECORDS + 1)
        floor = None if since is None else since - SINCE_SLACK_SECONDS
        newest_first: list[dict] = []
        if want > 0:
            inode = os.fstat(fd).st_ino if fd is not None else None
            sources = [(None, fd, offset)] if fd is not None else []
            older = [p for p in writer.log_files(d, self.max_files + 1) if p != cur]
            try:
                for path, src, end in sources + [(p, None, None) for p in reversed(older)]:
                    own = None
                    if path is not None:  # a rotated file, newest first
                        try:
                            own = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                        except FileNotFoundError:
                            continue
                        st = os.fstat(own)
                        if st.st_ino == inode:  # rotated after we opened it: read through fd already
                            os.close(own)
                            continue
                        if floor is not None and st.st_mtime < floor:
                            os.close(own)
                            break  # all its records (and older files') are before since
                        src, end = own, _complete_end(own, st.st_size)
                    try:
                        if _collect(src, end, since, floor, want, newest_first):
                            break
                    finally:
                        if own is not None:
                            os.close(own)
            except BaseException:
                if fd is not None:
                    os.close(fd)
                raise
        newest_first.reverse()
        return newest_first[-MAX_RECORDS:], len(newest_first) > MAX_RECORDS, fd, offset

    def read(self, name: str, since: float | None, tail: int | None) -> dict:
        """The records of container ``name`` (see AgentService.container_logs):
        {name, lines (at most MAX_RECORDS, the newest), truncated (more were
        selected), dropped_records, dropped_bytes}.
        Blocking: run it in the thread pool."""
        records, truncated, fd, _ = self._history(name, since, tail)
        if fd is not None:
            os.close(fd)
        out = {"name": name, "lines": records, "truncated": truncated}
        st = self.status(name)
        out["dropped_records"], out["dropped_bytes"] = st["dropped_records"], st["dropped_bytes"]
        return out

    def follow(self, name: str, since: float | None, tail: int | None, running: Callable[[], bool],
               blocking: Callable) -> Iterator[dict]:
        """A stream of {name, lines: [{at, stream, text}]} items: the history
        first (one item, maybe of no lines, then more if over BATCH_RECORDS;
        the first has truncated: true and history_records when the history
        was cut to the newest MAX_RECORDS),
        then what is written, item by item, across rotations.  Ends when the
        container no longer runs (and all it wrote was sent), or its log dir
        is gone (destroyed)."""
        records, truncated, fd, offset = blocking(self._history, name, since, tail)
        yield {"name": name, "lines": records[:BATCH_RECORDS],
               **({"truncated": True, "history_records": len(records)} if truncated else {})}
        for i in range(BATCH_RECORDS, len(records), BATCH_RECORDS):
            yield {"name": name, "lines": records[i:i + BATCH_RECORDS]}
        cur = os.path.join(self.dir(name), writer.LOG_NAME)
        pending, checked, stopped_polls = b"", time.monotonic(), 0
        try:
            while True:
                if fd is None:
                    try:
                        fd, offset = os.open(cur, os.O_RDONLY | os.O_CLOEXEC), 0
                    except FileNotFoundError:
                        pass
                if fd is not None and os.fstat(fd).st_size > offset:
                    # read and parse in the thread pool, a chunk at a time: a flood's
                    # follower leaves the loop to other calls
                    lines, pending, n = blocking(_read_new, fd, offset, pending, since)
                    offset += n
                    for i in range(0, len(lines), BATCH_RECORDS):
                        yield {"name": name, "lines": lines[i:i + BATCH_RECORDS]}
                    gevent.sleep(0)
                    continue
                try:
                    now_inode = os.stat(cur).st_ino
                except FileNotFoundError:
                    now_inode = None
                if fd is not None and now_inode != os.fstat(fd).st_ino:
                    os.close(fd)  # rotated, and read to its end: on to the new file
                    fd, pending = None, b""
                    continue
                if not os.path.isdir(self.dir(name)):
                    return
                if time.monotonic() - checked >= FOLLOW_STATE_SECONDS:
                    checked = time.monotonic()
                    stopped_polls = 0 if running() else stopped_polls + 1
                    if stopped_polls >= 2:  # stopped, and a poll later still nothing new
                        return
                gevent.sleep(FOLLOW_POLL_SECONDS)
        finally:
            if fd is not None:
                os.close(fd)


def _read_new(fd: int, offset: int, pending: bytes, since: float | None) -> tuple[list[dict], bytes, int]:
    """A follow's next chunk: (the records of the complete lines of
    ``pending`` + up to FOLLOW_READ_BYTES from ``offset`` at or after
    ``since``, the unfinished rest, the bytes read).  Blocking."""
    data = os.pread(fd, FOLLOW_READ_BYTES, offset)
    pending += data
    cut = pending.rfind(b"\n") + 1
    lines = parse_lines(pending[:cut])
    if since is not None:
        lines = [r for r in lines if r["at"] >= since]
    return lines, pending[cut:], len(data)


def _complete_end(fd: int, size: int) -> int:
    """The offset just after the last newline of fd's first ``size`` bytes
    (0 without one): a record being written is not read."""
    pos = size
    while pos > 0:
        start = max(0, pos - READ_CHUNK_BYTES)
        cut = os.pread(fd, pos - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def _lines_backward(fd: int, end: int) -> Iterator[bytes]:
    """The lines of fd's first ``end`` bytes (``end`` just after a newline),
    newest first, read in chunks of READ_CHUNK_BYTES from the end."""
    pos, carry = end, b""
    while pos > 0:
        start = max(0, pos - READ_CHUNK_BYTES)
        buf = os.pread(fd, pos - start, start) + carry
        pos = start
        if pos > 0:
            cut = buf.find(b"\n")
            if cut < 0:  # one line longer than the chunk: read further back
                carry = buf
                continue
            carry, buf = buf[:cut + 1], buf[cut + 1:]
        yield from reversed(buf.splitlines())


def _collect(fd: int, end: int, since: float | None, floor: float | None, want: int, out: list[dict]) -> bool:
    """Append to ``out`` the records of fd[:end], newest first, that are at or
    after ``since``, until it holds ``want`` or a record before ``floor``
    comes.  Returns: whether the reading is done (no older file needed)."""
    for line in _lines_backward(fd, end):
        recs = parse_lines(line)
        if not recs:
            continue
        rec = recs[0]
        if since is not None and rec["at"] < since:
            if rec["at"] < floor:
                return True
            continue
        out.append(rec)
        if len(out) >= want:
            return True
    return False
