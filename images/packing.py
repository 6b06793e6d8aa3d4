"""The canonical layer tar: a directory tree packed deterministically.

The layer id is the sha256 of these bytes, so the same tree must always give
the same tar: members in byte order of their paths (depth-first), PAX format,
numeric owners with empty user/group names, integer mtimes, permission bits
(setuid/setgid/sticky included), hard links as links to the first path in that
order, and no entry for the root directory itself.  Unpacking the tar with
``tarsafe.safe_extract`` and packing again gives the same bytes.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile

from images.errors import InvalidImage, StoreError
from images.fsutil import split_path, symlink_escapes

__all__ = ["pack_dir"]

_CHUNK_BYTES = 1024**2


class _HashingWriter:
    """Write-through file wrapper that hashes and counts what tarfile writes."""

    def __init__(self, raw):
        self.raw, self.sha, self.size = raw, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.raw.write(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def _walk(src_dir: str, rel: str = ""):
    """Yield (relative path, lstat) depth-first, children in byte order."""
    here = os.path.join(src_dir, rel) if rel else src_dir
    with os.scandir(here) as it:
        names = sorted((e.name for e in it), key=os.fsencode)
    for name in names:
        path = f"{rel}/{name}" if rel else name
        st = os.lstat(os.path.join(src_dir, path))
        yield path, st
        if stat.S_ISDIR(st.st_mode):
            yield from _walk(src_dir, path)


def _info(path: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid = st.st_uid, st.st_gid
    info.uname = info.gname = ""
    info.mtime = int(st.st_mtime)
    return info


def pack_dir(src_dir: str, out_path: str) -> tuple[str, int]:
    """Pack ``src_dir`` into the canonical uncompressed tar at ``out_path``.

    Args:
        src_dir: the tree to pack (symlinks are stored, never followed).
        out_path: the tar file to create (truncated if present); fsynced.

    Returns:
        (sha256 hex digest of the tar bytes, tar size in bytes).

    Raises:
        InvalidImage: the tree holds a device node, fifo or socket, a symlink
            climbing above the root, or a path too long for a tar member.
        StoreError: I/O failure reading the tree or writing the tar.
    """
    seen_inodes: dict[tuple[int, int], str] = {}
    try:
        with open(out_path, "wb") as raw:
            writer = _HashingWriter(raw)
            with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT,
                              encoding="utf-8", errors="surrogateescape") as tar:
                for path, st in _walk(src_dir):
                    # what safe_extract would refuse must not get into a layer
                    parts = split_path(path, what=f"{src_dir}: {path!r}", absolute=False)
                    info = _info(path, st)
                    if stat.S_ISDIR(st.st_mode):
                        info.type = tarfile.DIRTYPE
                        tar.addfile(info)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type = tarfile.SYMTYPE
                        info.linkname = os.readlink(os.path.join(src_dir, path))
                        if symlink_escapes(parts, info.linkname):
                            raise InvalidImage(f"{src_dir}/{path}: symlink to {info.linkname!r} "
                                               "points outside the root")
                        tar.addfile(info)
                    elif stat.S_ISREG(st.st_mode):
                        key = (st.st_dev, st.st_ino)
                        if st.st_nlink > 1 and key in seen_inodes:
                            info.type = tarfile.LNKTYPE
                            info.linkname = seen_inodes[key]
                            tar.addfile(info)
                            continue
                        seen_inodes[key] = path
                        info.size = st.st_size
                        with open(os.path.join(src_dir, path), "rb") as f:
                            tar.addfile(info, f)
                    else:
                        raise InvalidImage(f"{src_dir}/{path}: device node, fifo or socket "
                                           "refused in a layer")
            raw.flush()
            os.fsync(raw.fileno())
    except OSError as exc:
        raise StoreError(f"cannot pack {src_dir} into {out_path}: {exc.strerror or exc}") from exc
    return writer.sha.hexdigest(), writer.size
