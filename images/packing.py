"""The canonical layer tar: a directory tree packed deterministically.

The layer id is the sha256 of these bytes, so the same tree must always give
the same tar: members in byte order of their paths (depth-first), PAX format,
numeric owners with empty user/group names, integer mtimes, permission bits
(setuid/setgid/sticky included), hard links as links to the first path in that
order, and no entry for the root directory itself.  Unpacking the tar with
``tarsafe.safe_extract(..., layer=True)`` and packing again gives the same
bytes.

Deletions are written as OCI whiteouts, so a layer tar is also an OCI layer:
a 0/0 character device NAME (an overlayfs whiteout) becomes an empty
``.wh.NAME`` (mode 0, owner 0, mtime 0), and a directory with the xattr
``trusted.overlay.opaque=y`` gets a ``.wh..wh..opq`` entry.  In each
directory the opaque marker comes first, then the whiteouts, then the other
entries (whiteouts come before their siblings).  A real file whose name
starts with ``.wh.`` cannot be stored and is refused.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile

from images.errors import InvalidImage, StoreError
from images.fsutil import split_path, symlink_escapes
from images.tarsafe import OPAQUE_MARKER, OPAQUE_XATTR, WHITEOUT_PREFIX

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


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _walk(src_dir: str, rel: str = ""):
    """Yield (relative path, lstat, kind) depth-first: in each directory its
    opaque marker, then whiteouts, then the other children in byte order;
    kind is "opaque", "whiteout" or "entry"."""
    here = os.path.join(src_dir, rel) if rel else src_dir
    with os.scandir(here) as it:
        names = sorted((e.name for e in it), key=os.fsencode)
    if _is_opaque(here):
        yield (f"{rel}/{OPAQUE_MARKER}" if rel else OPAQUE_MARKER), None, "opaque"
    entries, whiteouts = [], []
    for name in names:
        path = f"{rel}/{name}" if rel else name
        if name.startswith(WHITEOUT_PREFIX):
            raise InvalidImage(f"{src_dir}/{path}: a file named {WHITEOUT_PREFIX}* cannot be "
                               "stored in a layer (it means a deletion)")
        st = os.lstat(os.path.join(src_dir, path))
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            wh = f"{rel}/{WHITEOUT_PREFIX}{name}" if rel else WHITEOUT_PREFIX + name
            whiteouts.append((wh, st))
        else:
            entries.append((path, st))
    for wh, st in sorted(whiteouts, key=lambda e: os.fsencode(e[0])):
        yield wh, st, "whiteout"
    for path, st in entries:
        yield path, st, "entry"
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
            for path, st, kind in _walk(src_dir):
                # what safe_extract would refuse must not get into a layer
                parts = split_path(path, what=f"{src_dir}: {path!r}", absolute=False)
                if kind != "entry":
                    info = tarfile.TarInfo(path)
                    info.mode, info.uid, info.gid, info.mtime = 0, 0, 0, 0
                    info.uname = info.gname = ""
                    _add(writer, info)
                    continue
                info = _info(path, st)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    _add(writer, info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type = tarfile.SYMTYPE
                    info.linkname = os.readlink(os.path.join(src_dir, path))
                    if symlink_escapes(parts, info.linkname):
                        raise InvalidImage(f"{src_dir}/{path}: symlink to {info.linkname!r} "
                                           "points outside the root")
                    _add(writer, info)
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in seen_inodes:
                        info.type = tarfile.LNKTYPE
                        info.linkname = seen_inodes[key]
                        _add(writer, info)
                        continue
                    seen_inodes[key] = path
                    info.size = st.st_size
                    with open(os.path.join(src_dir, path), "rb") as f:
                        _add(writer, info, f)
                else:
                    raise InvalidImage(f"{src_dir}/{path}: device node, fifo or socket "
                                       "refused in a layer")
            _finish(writer)
            raw.flush()
            os.fsync(raw.fileno())
    except OSError as exc:
        raise StoreError(f"cannot pack {src_dir} into {out_path}: {exc.strerror or exc}") from exc
    return writer.sha.hexdigest(), writer.size


def _add(writer: _HashingWriter, info: tarfile.TarInfo, data=None) -> None:
    """Write one member exactly as ``TarFile.addfile`` does for a PAX,
    UTF-8/surrogateescape archive (header, data, NUL padding to 512), with
    large reads (tarfile copies in 16 KiB pieces)."""
    writer.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    if data is None:
        return
    left = info.size
    while left:
        chunk = data.read(min(_CHUNK_BYTES, left))
        if not chunk:
            raise OSError("unexpected end of data")
        writer.write(chunk)
        left -= len(chunk)
    remainder = info.size % tarfile.BLOCKSIZE
    if remainder:
        writer.write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))


def _finish(writer: _HashingWriter) -> None:
    """The end of archive as ``TarFile.close`` writes it: two zero blocks,
    then zeros up to a whole record."""
    writer.write(tarfile.NUL * (tarfile.BLOCKSIZE * 2))
    remainder = writer.size % tarfile.RECORDSIZE
    if remainder:
        writer.write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))
