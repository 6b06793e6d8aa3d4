"""The agent's durable state: one JSON record per container.

The agent is the only writer of its state directory (DESIGN: one mediator per
host).  Every write is atomic (temp file, fsync, rename, fsync of the dir), so a
``kill -9`` at any instant leaves either the old or the new record.  Writes run
in gevent's thread pool so a slow disk never stalls heartbeats.
"""
from __future__ import annotations

import json
import os

import gevent


def write_atomic(path: str, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically (blocking; see module doc)."""
    d = os.path.dirname(path)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


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

    def save(self, record: dict) -> None:
        """Persist ``record`` (cooperatively: in the thread pool)."""
        data = json.dumps(record, sort_keys=True, indent=1).encode()
        gevent.get_hub().threadpool.apply(write_atomic, (self._path(record["name"]), data))

    def delete(self, name: str) -> None:
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            pass
