"""The agent's durable state: one JSON record per container.

The agent is the only writer of its state directory (DESIGN: one mediator per
host).  Every write is atomic (temp file, fsync, rename, fsync of the dir), so a
``kill -9`` at any instant leaves either the old or the new record.  Writes run
in gevent's thread pool so a slow disk never stalls heartbeats.

A full disk must not make a record lie about its container (a container can
fill the state dir: its rootfs lives there by default).  The store keeps a
reserve of ``RESERVE_SLOTS`` preallocated files (``reserve/slot-*``, on the
same filesystem as the records,
``SLOT_BYTES`` each, written with zeros so their blocks are really taken).
A *critical* write that fails for lack of space is written into a reserve
file instead (over blocks it already owns: no new space is needed), which is
then renamed over the record; the reserve is topped up again after any write
that found room.  A record over SLOT_BYTES, or one written when the reserve is
used up, fails as before.  This holds on filesystems that overwrite in place
(tmpfs, ext4, xfs), not on copy-on-write ones (btrfs).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
import threading

import gevent

from dcctl import files

log = logging.getLogger(__name__)

RESERVE_SLOTS = 8
SLOT_BYTES = 128 << 10
_SLOT_RE = re.compile(r"^slot-[0-9a-f]{12}$")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically (blocking; see module doc).
    A failed write leaves no temp file behind.  (dcctl.files.atomic_write.)"""
    files.atomic_write(path, data, mode=mode)


class StateStore:
    """Container records under ``root/containers/NAME.json``.

    A record is a dict with string keys (see agents.containers for the keys).
    """

    def __init__(self, root: str):
        self.root = root
        self.dir = os.path.join(root, "containers")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for entry in os.listdir(self.dir):  # leftovers of a crash mid-write
            if entry.startswith("."):
                os.unlink(os.path.join(self.dir, entry))
        self.reserve_dir = os.path.join(root, "reserve")
        os.makedirs(self.reserve_dir, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()  # the reserve, shared by the pool's threads
        self._reserve: list[str] = []
        for entry in os.listdir(self.reserve_dir):
            path = os.path.join(self.reserve_dir, entry)
            if _SLOT_RE.match(entry) and os.path.getsize(path) == SLOT_BYTES:
                self._reserve.append(path)
            else:  # a slot half made, or half used
                os.unlink(path)
        self._refill()

    def _path(self, name: str) -> str:
        return os.path.join(self.dir, name + ".json")

    def load_all(self) -> dict[str, dict]:
        """Every record, by container name (unreadable files are skipped
        and renamed *.corrupt so an operator can look)."""
        out = {}
        for entry in sorted(os.listdir(self.dir)):
            if not entry.endswith(".json"):
                continue
            path = os.path.join(self.dir, entry)
            try:
                with open(path, "rb") as f:
                    rec = json.loads(f.read())
                out[rec["name"]] = rec
            except (OSError, ValueError, KeyError):
                os.replace(path, path + ".corrupt")
        return out

    def save(self, record: dict, critical: bool = True) -> None:
        """Persist ``record`` (cooperatively: in the thread pool).

        Args:
            record: the record; ``record["name"]`` names the file.
            critical: on a full disk, write it through the reserve (see the
                module doc).  Writes whose failure can simply be reported
                (a create's first record) pass False and keep the reserve
                for the writes that must not fail.

        Raises: OSError (ENOSPC when even the reserve could not take it).
        """
        data = json.dumps(record, sort_keys=True, indent=1).encode()
        gevent.get_hub().threadpool.apply(self._save_blocking, (self._path(record["name"]), data, critical))

    def _save_blocking(self, path: str, data: bytes, critical: bool) -> None:
        try:
            write_atomic(path, data)
        except OSError as exc:
            if exc.errno not in _NO_SPACE or not critical or not self._write_from_reserve(path, data):
                raise
            log.warning("state dir full: %s written from the reserve (%d files left)",
                        os.path.basename(path), len(self._reserve))
            return
        if len(self._reserve) < RESERVE_SLOTS:
            self._refill()

    def _write_from_reserve(self, path: str, data: bytes) -> bool:
        if len(data) > SLOT_BYTES:
            return False
        with self._lock:
            if not self._reserve:
                return False
            slot = self._reserve.pop()
        try:
            fd = os.open(slot, os.O_WRONLY)
            try:
                os.pwrite(fd, data, 0)  # over blocks the file owns
                os.ftruncate(fd, len(data))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(slot, 0o600)
            os.replace(slot, path)
            files.fsync_dir(self.dir)
            files.fsync_dir(self.reserve_dir)
        except OSError:
            log.exception("writing %s from the reserve failed", os.path.basename(path))
            try:
                os.unlink(slot)
            except OSError:
                pass
            return False
        return True

    def _refill(self) -> None:
        """Top the reserve up to RESERVE_SLOTS files (best effort: stops at
        the first write that finds no room)."""
        with self._lock:
            while len(self._reserve) < RESERVE_SLOTS:
                slot = os.path.join(self.reserve_dir, f"slot-{secrets.token_hex(6)}")
                part = slot + ".part"
                try:
                    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                    try:
                        os.write(fd, bytes(SLOT_BYTES))
                        os.fsync(fd)
                    finally:
                        os.close(fd)
                    if os.path.getsize(part) != SLOT_BYTES:
                        raise OSError(errno.ENOSPC, "short write")
                    os.replace(part, slot)
                except OSError:
                    try:
                        os.unlink(part)
                    except OSError:
                        pass
                    return
                self._reserve.append(slot)

    def reserve_left(self) -> int:
        """How many reserve files are ready."""
        return len(self._reserve)

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
