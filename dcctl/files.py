"""The file helpers the packages on top of the wire layer share (agents, ops,
the hub, dcctl itself): one atomic write, one pid lock and one ranged read.
Standard library only (and dcctl.errors, itself standard library only);
blocking (a server runs them in its thread pool when they may be slow).

* ``atomic_write(path, data)``: the file is either the old one or the new
  one, never a torn mix, also after a crash: a temp file beside it, written
  in full, fsynced, renamed over it, then the directory fsynced.
* ``take_lock(path)``: an exclusive ``flock`` on a lock file, held as long
  as the returned fd is open (so it dies with the process, whatever kills
  it), with the holder's pid written in it for the next one to name.
* ``read_range(path, offset, length, max_bytes)``: a chunk of a file as
  the image protocol serves it (``image_layer_read``, ``image_upload_read``
  on the hub and on agents); ``check_range(offset, length)`` checks the
  two figures first (a caller's, over the wire).
"""
from __future__ import annotations

import fcntl
import os
import threading

from dcctl.errors import InvalidArgument

__all__ = ["MAX_OFFSET", "atomic_write", "check_range", "fsync_dir", "lock_holder", "read_range", "take_lock"]

#: The largest offset or length ``read_range`` takes: a file offset is a
#: signed 64-bit off_t (Python's seek raises OverflowError above it).
MAX_OFFSET = (1 << 63) - 1


def check_range(offset, length) -> None:
    """Check a ranged read's ``offset`` and ``length`` (bytes): each an
    integer (not a bool) from 0 to MAX_OFFSET.  Raises: InvalidArgument."""
    for what, value in (("offset", offset), ("length", length)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_OFFSET:
            raise InvalidArgument(f"{what} must be an integer from 0 to 2**63-1 (bytes), got {value!r:.40}")


def read_range(path: str, offset: int, length: int, max_bytes: int) -> bytes:
    """Up to ``min(length, max_bytes)`` bytes of the file at ``path`` from
    ``offset``; b"" at or past its end, however far (the file's size is
    read first: seeking far past it fails with EINVAL on some file
    systems, e.g. 2**62 on ext4).

    Raises: InvalidArgument (see check_range), FileNotFoundError, OSError."""
    check_range(offset, length)
    with open(path, "rb") as f:
        if offset >= os.fstat(f.fileno()).st_size:
            return b""
        f.seek(offset)
        return f.read(min(length, max_bytes))


def fsync_dir(path: str) -> None:
    """fsync a directory, so that renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes | str, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably.

    Args:
        path: the file to (re)place; its directory must exist.
        data: bytes, or text (written as UTF-8).
        mode: permission bits of the new file (not subject to the umask).

    Raises: OSError (ENOSPC...); the old file is then untouched and no temp
    file is left behind.
    """
    if isinstance(data, str):
        data = data.encode()
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp.{os.getpid()}.{threading.get_ident()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def take_lock(path: str, *, write_pid: bool = True) -> int | None:
    """Take the exclusive flock on ``path`` (created 0600, its directory
    too, 0700, if missing) without waiting.

    Args:
        write_pid: write this process's pid into the file once held (for
            ``lock_holder``); false for a tool taking someone else's lock.

    Returns: the fd holding the lock (close it to release), or None when
    another open file holds it (another process, or another take_lock).
    Raises: OSError (the file cannot be made or opened).
    """
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    if write_pid:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def lock_holder(path: str) -> int | None:
    """The pid the lock file's holder wrote in it, or None (none written,
    or no file)."""
    try:
        with open(path, "rb") as f:
            text = f.read(32).decode(errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
