"""The per-container log writer: a small process of its own, started detached
by the agent before the container starts, that outlives the agent.

Why a process of its own (and not LXC's console log, nor the agent): the
console log merges stdout and stderr, stamps nothing and rotates only on
request; the agent may be killed at any time.  Here the container's command
writes its stdout and stderr into two FIFOs in the container's log dir
(bind-mounted into the container as /dev/dcfleet.stdout and
/dev/dcfleet.stderr; the image's run script redirects to them); this process
holds both FIFOs open read-write (so it never sees end-of-file, and a writer
never finds the FIFO without a reader while it runs) and appends one JSON line
per record to ``container.log``::

    {"at": 1764590000.123456, "stream": "stdout", "text": "line without its newline"}

(Docker's json-file driver, with our key names).  A line longer than
MAX_RECORD_BYTES is cut into records of that size, as Docker does at 16 KiB.
Rotation by size (json-file's max-size / max-file): before a record would
take ``container.log`` over ``max_size_bytes`` it becomes ``container.log.1``
(``.1`` becomes ``.2`` ...; ``.<max_files - 1>`` is dropped), so the log takes
at most about ``max_size_bytes * max_files``.

The agent being killed (even -9) loses nothing: this process is in a session
of its own and the FIFOs keep their data in the kernel meanwhile.  A write that
fails (disk full, quota) drops that record: the container never blocks nor
stops for its log.  Dropped records and bytes are counted in ``logger.status``
(a small JSON document rewritten in place in a preallocated file, so it can
still be updated when the disk is full), with the last error.  The process
exits on SIGTERM (after writing what it has read) or when its log dir is
removed.

Usage (the agent's)::

    python3 -m agents.logger DIR --max-size-bytes N --max-files K

It creates the FIFOs if missing, daemonizes, and its first process exits 0
once the FIFOs are open (1 with a message on stderr if they cannot be).
Standard library only: one of these runs per container.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import select
import signal
import sys
import time

__all__ = ["STREAMS", "LOG_NAME", "STATUS_NAME", "PID_NAME", "MAX_RECORD_BYTES", "STATUS_BYTES",
           "fifo_path", "log_files", "read_status", "main"]

STREAMS = ("stdout", "stderr")
LOG_NAME, STATUS_NAME, PID_NAME = "container.log", "logger.status", "logger.pid"
MAX_RECORD_BYTES = 16 * 1024
STATUS_BYTES = 1024  # the status file's fixed size (rewritten in place)
READ_BYTES = 64 * 1024
STATUS_EVERY_SECONDS = 1.0
DIR_CHECK_SECONDS = 5.0


def fifo_path(log_dir: str, stream: str) -> str:
    """The FIFO the container's ``stream`` ("stdout"/"stderr") goes into."""
    return os.path.join(log_dir, f"{stream}.fifo")


def log_files(log_dir: str, max_files: int = 100) -> list[str]:
    """The log files of ``log_dir`` that exist, oldest first
    (``container.log.N`` ... ``container.log.1``, ``container.log``)."""
    base = os.path.join(log_dir, LOG_NAME)
    rotated = [f"{base}.{i}" for i in range(max_files, 0, -1) if os.path.exists(f"{base}.{i}")]
    return rotated + ([base] if os.path.exists(base) else [])


def read_status(log_dir: str) -> dict:
    """The logger's counters: {pid, records, bytes, dropped_records,
    dropped_bytes, last_error, updated_at}; {} when there is none yet."""
    try:
        with open(os.path.join(log_dir, STATUS_NAME), "rb") as f:
            return json.loads(f.read().rstrip(b"\0 \n") or b"{}")
    except (OSError, ValueError):
        return {}


class Writer:
    """Appends records to DIR/container.log with rotation; counts what a
    failed write drops."""

    def __init__(self, log_dir: str, max_size_bytes: int, max_files: int):
        self.dir, self.max_size, self.max_files = log_dir, max_size_bytes, max(1, max_files)
        self.path = os.path.join(log_dir, LOG_NAME)
        self.fd: int | None = None
        self.size = 0
        self.counts = {"records": 0, "bytes": 0, "dropped_records": 0, "dropped_bytes": 0}
        self.last_error: str | None = None
        self.dirty = True
        self._status_fd = self._open_status()

    def _open_status(self) -> int | None:
        path = os.path.join(self.dir, STATUS_NAME)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            return None
        try:  # keep earlier counters (a logger started again for the same container)
            old = json.loads(os.pread(fd, STATUS_BYTES, 0).rstrip(b"\0 \n") or b"{}")
            for k in self.counts:
                self.counts[k] = int(old.get(k, 0))
        except (OSError, ValueError):
            pass
        try:
            os.posix_fallocate(fd, 0, STATUS_BYTES)
        except OSError:
            pass
        return fd

    def write_status(self) -> None:
        if self._status_fd is None or not self.dirty:
            return
        doc = json.dumps({"pid": os.getpid(), **self.counts, "last_error": self.last_error,
                          "updated_at": round(time.time(), 3)}).encode()
        try:
            os.pwrite(self._status_fd, doc.ljust(STATUS_BYTES)[:STATUS_BYTES], 0)
            self.dirty = False
        except OSError:
            pass

    def _open(self) -> None:
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self.fd).st_size

    def _rotate(self) -> None:
        os.close(self.fd)
        self.fd = None
        if self.max_files == 1:
            os.truncate(self.path, 0)
        else:
            for i in range(self.max_files - 1, 0, -1):
                src = self.path if i == 1 else f"{self.path}.{i - 1}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{i}")
        self._open()

    def record(self, stream: str, text: bytes, at: float) -> None:
        """Append one record (``text`` without its newline)."""
        line = json.dumps({"at": round(at, 6), "stream": stream,
                           "text": text.decode("utf-8", "replace")}, ensure_ascii=False).encode() + b"\n"
        try:
            if self.fd is None:
                self._open()
            if self.size and self.size + len(line) > self.max_size:
                self._rotate()
            n = os.write(self.fd, line)
            if n != len(line):  # a short write: the disk filled mid-record; keep the file line-aligned
                os.ftruncate(self.fd, self.size)
                raise OSError(errno.ENOSPC, "short write")
            self.size += n
            self.counts["records"] += 1
            self.counts["bytes"] += n
        except OSError as exc:
            self.counts["dropped_records"] += 1
            self.counts["dropped_bytes"] += len(line)
            self.last_error = f"{errno.errorcode.get(exc.errno, exc.errno)}: {exc.strerror}"
            if self.fd is not None and not os.path.exists(self.path):
                os.close(self.fd)
                self.fd = None
        self.dirty = True


def _pump(log_dir: str, fds: dict[int, str], writer: Writer) -> None:
    partial = {s: b"" for s in STREAMS}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(True))
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    last_status = last_dir_check = time.monotonic()
    while not stopping:
        try:
            ready = poller.poll(STATUS_EVERY_SECONDS * 1000)
        except InterruptedError:
            continue
        now = time.time()
        for fd, _ in ready:
            stream = fds[fd]
            try:
                data = os.read(fd, READ_BYTES)
            except BlockingIOError:
                continue
            buf = partial[stream] + data
            *lines, buf = buf.split(b"\n")
            while len(buf) >= MAX_RECORD_BYTES:
                lines.append(buf[:MAX_RECORD_BYTES])
                buf = buf[MAX_RECORD_BYTES:]
            partial[stream] = buf
            for line in lines:
                for i in range(0, max(1, len(line)), MAX_RECORD_BYTES):  # a long line: records of 16 KiB
                    writer.record(stream, line[i:i + MAX_RECORD_BYTES], now)
        mono = time.monotonic()
        if mono - last_status >= STATUS_EVERY_SECONDS:
            writer.write_status()
            last_status = mono
        if mono - last_dir_check >= DIR_CHECK_SECONDS:
            last_dir_check = mono
            if not os.path.isdir(log_dir):  # the container was destroyed
                return
    for fd, stream in fds.items():  # what is still in the FIFOs, then the partial lines
        try:
            while True:
                data = os.read(fd, READ_BYTES)
                if not data:
                    break
                partial[stream] += data
        except (BlockingIOError, OSError):
            pass
        *lines, tail = partial[stream].split(b"\n")
        for line in lines + ([tail] if tail else []):
            writer.record(stream, line, time.time())
    writer.write_status()


def main(argv: list[str] | None = None) -> int:
    """See the module doc."""
    ap = argparse.ArgumentParser(prog="python3 -m agents.logger")
    ap.add_argument("dir")
    ap.add_argument("--max-size-bytes", type=int, default=10 << 20)
    ap.add_argument("--max-files", type=int, default=3)
    ap.add_argument("--foreground", action="store_true", help="do not daemonize (tests)")
    args = ap.parse_args(argv)
    fds: dict[int, str] = {}
    try:
        os.makedirs(args.dir, mode=0o700, exist_ok=True)
        for s in STREAMS:
            path = fifo_path(args.dir, s)
            if not os.path.exists(path):
                os.mkfifo(path, 0o622)
            fds[os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)] = s
        writer = Writer(args.dir, args.max_size_bytes, args.max_files)
    except OSError as exc:
        print(f"logger: {args.dir}: {exc}", file=sys.stderr)
        return 1
    child = 0 if args.foreground else os.fork()
    if child or args.foreground:  # the pid file is there before the agent's wait ends
        try:
            tmp = os.path.join(args.dir, PID_NAME + ".tmp")
            with open(tmp, "w") as f:
                f.write(f"{child or os.getpid()}\n")
            os.replace(tmp, os.path.join(args.dir, PID_NAME))
        except OSError as exc:
            print(f"logger: {args.dir}: pid file: {exc}", file=sys.stderr)
        if child:
            os._exit(0)  # the agent waits for this: the FIFOs are open
    if not args.foreground:
        os.setsid()
        os.chdir("/")  # the agent spawns us in its own cwd: do not pin it
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
    writer.write_status()
    _pump(args.dir, fds, writer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
