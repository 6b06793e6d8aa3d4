"""Unpack an untrusted tarball into a directory, refusing anything hostile.

``safe_extract`` does its own member handling (tarfile only parses headers and
streams data); each check below is tested in tests/unit/test_images_tarsafe.py:

* member names: absolute paths, ".." components, NUL bytes, a path over 4096
  bytes or a component over 255 bytes are refused;
* every member is created beneath the target through directory fds opened with
  O_NOFOLLOW, so a member written *through* an earlier symlink (``a -> /etc``
  then ``a/passwd``) is refused, and an existing symlink is replaced, never
  written through;
* symlinks: an absolute target is read relative to the rootfs root (so
  ``/bin/sh -> /bin/busybox`` is fine); a relative target that climbs above the
  root from the member's directory is refused;
* hard links must name an earlier non-directory member of the same archive;
* character and block devices are refused, and so are fifos (a rootfs never
  needs one at rest, and LXC populates /dev itself); unknown types too;
* caps: the decompressed stream and the sum of member sizes (sparse files
  count at their apparent size) are capped at ``max_bytes``; a single header
  record over 16 MiB and more than ``max_members`` members are refused.

Modes (setuid included), numeric ownership (when root), mtimes, symlinks and
hard links are preserved.  On any refusal the target is emptied again.

``layer=True`` reads the archive as an image layer (the store's canonical
layer tar, or an OCI / docker-save layer), as overlayfs wants it on disk:

* ``DIR/.wh.NAME`` becomes a whiteout (a 0/0 character device ``DIR/NAME``,
  root-owned), ``DIR/.wh..wh..opq`` marks DIR opaque (the xattr
  ``trusted.overlay.opaque=y``); both need root;
* a whiteout must be a regular file and name one plain component (``.wh.``,
  ``.wh..``, ``.wh...`` and other ``.wh..wh.*`` markers are refused);
* no path may appear twice (a member, or a member and a whiteout of it).

``sha256=True`` also hashes the whole decompressed stream (an OCI diff_id).

tarfile.data_filter is not used: it refuses absolute symlink targets and
strips setuid bits, both normal in a rootfs; the checks above cover its cases.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import stat
import tarfile
import zlib
from typing import Callable

from images.errors import InvalidImage, StoreError
from images.fsutil import open_dir_beneath, safe_rmtree, split_path, symlink_escapes

__all__ = ["safe_extract", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_MEMBERS", "OPAQUE_XATTR",
           "WHITEOUT_PREFIX", "OPAQUE_MARKER"]

#: overlayfs's mark of an opaque directory (lower layers hidden beneath it).
OPAQUE_XATTR = "trusted.overlay.opaque"
WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

DEFAULT_MAX_BYTES = 8 * 1024**3
DEFAULT_MAX_MEMBERS = 200_000
#: No legitimate tar header record (pax, GNU long name) comes near this.
MAX_HEADER_READ_BYTES = 16 * 1024**2
_CHUNK_BYTES = 1024**2
_HEADER_SLACK_BYTES = 64 * 1024**2

_MAGIC = [
    (b"\x1f\x8b", "gzip", gzip.GzipFile),
    (b"\xfd7zXZ\x00", "xz", lzma.LZMAFile),
    (b"BZh", "bzip2", bz2.BZ2File),
]
_DECODE_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError)


def detect_compression(path: str, opener=None) -> str:
    """Return "gzip", "xz", "bzip2" or "none" from the file's magic bytes.

    Args:
        path: the file (named in errors).
        opener: if given, a callable returning a fresh binary file object of
            the content to read instead of opening ``path``.

    Raises:
        InvalidImage: the file cannot be read, or is zstd (not supported).
    """
    try:
        with (opener() if opener else open(path, "rb")) as f:
            head = f.read(8)
    except OSError as exc:
        raise InvalidImage(f"archive {path}: cannot read ({exc.strerror or exc})") from exc
    for magic, kind, _cls in _MAGIC:
        if head.startswith(magic):
            return kind
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        raise InvalidImage(f"archive {path}: zstd compression is not supported")
    return "none"


class _LimitedReader:
    """A read/seek/tell view of the decompressed archive that refuses to go
    past ``max_total`` bytes or to read one record over MAX_HEADER_READ_BYTES
    (tarfile reads a pax header in one call: a huge one would fill memory)."""

    def __init__(self, raw, max_total: int, path: str):
        self.raw, self.max_total, self.path, self.pos = raw, max_total, path, 0

    def _refuse_past(self, end: int) -> None:
        if end > self.max_total:
            raise InvalidImage(f"archive {self.path}: decompressed size exceeds "
                               f"{self.max_total} bytes (bomb cap)")

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_HEADER_READ_BYTES:
            raise InvalidImage(f"archive {self.path}: header record over "
                               f"{MAX_HEADER_READ_BYTES} bytes")
        self._refuse_past(self.pos + size)
        try:
            data = self.raw.read(size)
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"archive {self.path}: corrupt or truncated ({exc})") from exc
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0:
            raise InvalidImage(f"archive {self.path}: unsupported seek")
        self._refuse_past(offset)
        try:
            self.raw.seek(offset)
        except _DECODE_ERRORS as exc:
            raise InvalidImage(f"archive {self.path}: corrupt or truncated ({exc})") from exc
        self.pos = offset
        return offset

    def tell(self) -> int:
        return self.pos


class _HashingStream:
    """Hashes every decompressed byte read from ``raw``; a forward seek reads
    through (so skipped data is hashed too), a backward one is refused."""

    def __init__(self, raw, path: str):
        self.raw, self.path, self.pos, self.sha = raw, path, 0, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset < self.pos:
            raise InvalidImage(f"archive {self.path}: non-sequential read")
        while self.pos < offset:
            if not self.read(min(_CHUNK_BYTES, offset - self.pos)):
                break
        return self.pos

    def tell(self) -> int:
        return self.pos

    def drain(self, limit: int) -> None:
        """Hash the rest of the stream (tar padding after the end blocks)."""
        while self.read(_CHUNK_BYTES):
            if self.pos > limit:
                raise InvalidImage(f"archive {self.path}: decompressed size exceeds "
                                   f"{limit} bytes (bomb cap)")


class _Extractor:
    """Creates members beneath ``root_fd``; see the module docstring."""

    def __init__(self, root_fd: int, path: str, layer: bool = False):
        self.root_fd, self.path, self.layer = root_fd, path, layer
        self._parent: tuple[tuple[str, ...], int] | None = None
        self.seen: set[tuple[str, ...]] = set()
        self.is_root = os.geteuid() == 0
        self.nondirs: set[tuple[str, ...]] = set()
        self.dirs: dict[tuple[str, ...], tarfile.TarInfo] = {}
        self.implied: list[tuple[str, ...]] = []

    def what(self, member: tarfile.TarInfo) -> str:
        name = member.name if len(member.name) <= 160 else f"{member.name[:100]}...{member.name[-40:]}"
        return f"archive {self.path}: member {name!r}"

    def parent(self, parts: tuple[str, ...], member: tarfile.TarInfo) -> int:
        """A new fd of the member's parent directory.  The last one opened
        is kept: siblings come one after another, and a directory, once
        opened beneath the root without following symlinks, is never
        replaced during the unpack (members cannot replace a directory)."""
        key = parts[:-1]
        if self._parent is not None and self._parent[0] == key:
            return os.dup(self._parent[1])
        fd = open_dir_beneath(self.root_fd, key, what=self.what(member), create=True, created=self.implied)
        self.close_cache()
        self._parent = (key, os.dup(fd))
        return fd

    def close_cache(self) -> None:
        if self._parent is not None:
            os.close(self._parent[1])
            self._parent = None

    def clear(self, pfd: int, parts: tuple[str, ...], member, want_dir: bool) -> bool:
        """Make room for the member; True if a directory is already there."""
        try:
            st = os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if want_dir:
                return True
            raise InvalidImage(f"{self.what(member)}: would replace a directory")
        os.unlink(parts[-1], dir_fd=pfd)
        self.nondirs.discard(parts)
        return False

    def owner(self, name_or_fd, member, pfd=None) -> None:
        if self.is_root:
            if pfd is None:
                os.chown(name_or_fd, member.uid, member.gid)
            else:
                os.chown(name_or_fd, member.uid, member.gid, dir_fd=pfd, follow_symlinks=False)

    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> int:
        """Create one member; return the bytes of data written."""
        what = self.what(member)
        parts = split_path(member.name, what=what, absolute=False)
        if member.ischr() or member.isblk():
            raise InvalidImage(f"{what}: device node refused")
        if member.isfifo():
            raise InvalidImage(f"{what}: fifo refused")
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise InvalidImage(f"{what}: unsupported member type {member.type!r}")
        if not parts:
            if not member.isdir():
                raise InvalidImage(f"{what}: the archive root must be a directory")
            self.dirs[()] = member
            return 0
        if self.layer:
            if parts[-1].startswith(WHITEOUT_PREFIX):
                self.whiteout(parts, member)
                return 0
            if parts in self.seen:
                raise InvalidImage(f"{what}: the path appears twice in the layer")
            self.seen.add(parts)
        if member.issym():
            self.check_symlink(parts, member)
        pfd = self.parent(parts, member)
        try:
            name = parts[-1]
            if member.isdir():
                if self.layer:  # nothing is replaced in a layer: try first, look only if it is there
                    try:
                        os.mkdir(name, 0o700, dir_fd=pfd)
                    except FileExistsError:
                        self.clear(pfd, parts, member, want_dir=True)
                elif not self.clear(pfd, parts, member, want_dir=True):
                    os.mkdir(name, 0o700, dir_fd=pfd)
                self.dirs[parts] = member
                return 0
            if not self.layer:
                self.clear(pfd, parts, member, want_dir=False)
            # (in a layer, the only thing already there can be a directory
            # made as a parent: creating the member fails with EEXIST below)
            written = 0
            if member.issym():
                os.symlink(member.linkname, name, dir_fd=pfd)
                self.owner(name, member, pfd)
                os.utime(name, (member.mtime, member.mtime), dir_fd=pfd, follow_symlinks=False)
            elif member.islnk():
                self.hardlink(parts, member, pfd)
            else:
                written = self.regular(tar, member, pfd, name)
            self.nondirs.add(parts)
            return written
        except FileExistsError as exc:
            raise InvalidImage(f"{what}: would replace a directory") from exc
        finally:
            os.close(pfd)

    def whiteout(self, parts: tuple[str, ...], member) -> None:
        """``.wh.NAME`` -> a 0/0 char device NAME; ``.wh..wh..opq`` -> the
        parent directory's opaque xattr (see the module docstring)."""
        what = self.what(member)
        if not member.isreg():
            raise InvalidImage(f"{what}: a whiteout must be a regular file")
        base = parts[-1]
        if base == OPAQUE_MARKER:
            key = (*parts[:-1], "\x00opaque")
            if key in self.seen:
                raise InvalidImage(f"{what}: the opaque marker appears twice in the layer")
            self.seen.add(key)
            fd = open_dir_beneath(self.root_fd, parts[:-1], what=what, create=True,
                                  created=self.implied)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)
            return
        name = base[len(WHITEOUT_PREFIX):]
        if name in ("", ".", "..") or name.startswith(WHITEOUT_PREFIX):
            raise InvalidImage(f"{what}: whiteout names no path inside the layer")
        target = (*parts[:-1], name)
        if target in self.seen:
            raise InvalidImage(f"{what}: whiteout of a path that appears twice in the layer")
        self.seen.add(target)
        pfd = self.parent(target, member)
        try:
            os.mknod(name, stat.S_IFCHR | 0o600, os.makedev(0, 0), dir_fd=pfd)
        except FileExistsError as exc:
            raise InvalidImage(f"{what}: whiteout of a path that appears twice in the layer") from exc
        finally:
            os.close(pfd)

    def check_symlink(self, parts: tuple[str, ...], member) -> None:
        target = member.linkname
        what = self.what(member)
        if not target or "\x00" in target or len(os.fsencode(target)) > 4096:
            raise InvalidImage(f"{what}: bad symlink target")
        if symlink_escapes(parts, target):
            raise InvalidImage(f"{what}: symlink to {target!r} points outside the root")

    def hardlink(self, parts, member, pfd: int) -> None:
        what = self.what(member)
        target = split_path(member.linkname, what=f"{what} hard link target", absolute=False)
        if target not in self.nondirs or target == parts:
            raise InvalidImage(f"{what}: hard link to {member.linkname!r}, "
                               "which is not an earlier file of the archive")
        tfd = open_dir_beneath(self.root_fd, target[:-1], what=what)
        try:
            os.link(target[-1], parts[-1], src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)

    def regular(self, tar, member, pfd: int, name: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=pfd)
        written = 0
        with os.fdopen(fd, "wb") as out:
            src = tar.extractfile(member)
            while True:
                try:
                    chunk = src.read(_CHUNK_BYTES)
                except tarfile.TarError as exc:
                    raise InvalidImage(f"{self.what(member)}: truncated data ({exc})") from exc
                if not chunk:
                    break
                out.write(chunk)
                written += len(chunk)
            if written != member.size:
                raise InvalidImage(f"{self.what(member)}: truncated data "
                                   f"({written} of {member.size} bytes)")
            out.flush()
            self.owner(out.fileno(), member)
            os.fchmod(out.fileno(), member.mode & 0o7777)
            os.utime(out.fileno(), (member.mtime, member.mtime))
        return written

    def finish(self) -> None:
        """Apply directory metadata last, deepest first (writing into a
        directory changes its mtime)."""
        todo = {p: None for p in self.implied}
        todo.update(self.dirs)
        for parts in sorted(todo, key=len, reverse=True):
            member = todo[parts]
            fd = open_dir_beneath(self.root_fd, parts, what=f"archive {self.path}: {'/'.join(parts)}")
            try:
                if member is None:
                    os.fchmod(fd, 0o755)
                    os.utime(fd, (0, 0))
                else:
                    self.owner(fd, member)
                    os.fchmod(fd, member.mode & 0o7777)
                    os.utime(fd, (member.mtime, member.mtime))
            finally:
                os.close(fd)


class _Position:
    """Where a reader stands in the archive as stored (compressed) bytes:
    ``safe_extract``'s progress.  It holds the raw file object under the
    decompressor (a gzip/xz/bzip2 wrapper given a file object closes
    nothing, so the caller closes ``raw``)."""

    def __init__(self, raw):
        self.raw = raw

    def __call__(self) -> int:
        try:
            return int(self.raw.tell())
        except (OSError, ValueError, AttributeError):
            return 0


def _open_counted(path: str, kind: str, opener=None):
    """(stream, _Position): like _open_stream, the raw file kept in view."""
    raw = opener() if opener is not None else open(path, "rb")
    if kind == "none":
        return raw, _Position(raw), raw
    cls = next(c for _m, k, c in _MAGIC if k == kind)
    return (gzip.GzipFile(fileobj=raw, mode="rb") if kind == "gzip" else cls(raw, "rb")), _Position(raw), raw


def _open_stream(path: str, kind: str, opener=None):
    if opener is None:
        if kind == "none":
            return open(path, "rb")
        cls = next(c for _m, k, c in _MAGIC if k == kind)
        return cls(path, "rb")
    raw = opener()
    if kind == "none":
        return raw
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    cls = next(c for _m, k, c in _MAGIC if k == kind)
    return cls(raw, "rb")


def _empty_dir(dest_dir: str) -> None:
    for entry in os.listdir(dest_dir):
        safe_rmtree(os.path.join(dest_dir, entry))


def safe_extract(archive_path: str, dest_dir: str, *, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_members: int = DEFAULT_MAX_MEMBERS, layer: bool = False,
                 sha256: bool = False, opener=None,
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Unpack a (plain, gzip, xz or bzip2) tarball into an empty directory.

    Args:
        archive_path: the tarball; compression is detected from magic bytes.
        dest_dir: an existing, empty directory (e.g. a fresh staging dir).
        max_bytes: cap, in bytes, on the decompressed stream and on the sum of
            member sizes (gzip-bomb cap).
        max_members: cap on the number of archive members.
        layer: read it as an image layer: whiteouts, no duplicate paths
            (see the module docstring).
        sha256: hash the whole decompressed stream.
        opener: a callable returning a fresh binary file object to read
            instead of opening archive_path (a member of a bigger archive);
            archive_path then only names it in messages.
        progress: called as ``progress(members, stored_bytes)`` after each
            member: the members unpacked so far and how far into the
            archive as stored (compressed bytes; for an ``opener``, the
            position of its file object) the reader stands.

    Returns:
        dict with keys ``members`` (int, count) and ``bytes`` (int, sum of
        regular file sizes) and ``compression`` ("gzip"|"xz"|"bzip2"|"none"),
        and with sha256=True ``sha256`` (hex of the decompressed stream).

    Raises:
        InvalidImage: hostile or corrupt archive (the message names the
            member); dest_dir is emptied again.
        StoreError: I/O failure writing under dest_dir (disk full...); dest_dir
            is emptied again.
    """
    kind = detect_compression(archive_path, opener)
    if os.listdir(dest_dir):
        raise StoreError(f"unpack target {dest_dir} is not empty")
    root_fd = os.open(dest_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    count = total = 0
    hashing = extractor = None
    position = raw_file = None
    try:
        if progress is None:
            opened = _open_stream(archive_path, kind, opener)
        else:
            opened, position, raw_file = _open_counted(archive_path, kind, opener)
        with opened as raw:
            if sha256:
                raw = hashing = _HashingStream(raw, archive_path)
            reader = _LimitedReader(raw, max_bytes + _HEADER_SLACK_BYTES, archive_path)
            extractor = _Extractor(root_fd, archive_path, layer=layer)
            with tarfile.open(fileobj=reader, mode="r:") as tar:
                while True:
                    member = tar.next()
                    if member is None:
                        break
                    tar.members.clear()  # we keep our own index; bound memory
                    count += 1
                    if count > max_members:
                        raise InvalidImage(f"archive {archive_path}: more than {max_members} members")
                    total += member.size if member.isreg() else 0
                    if total > max_bytes:
                        raise InvalidImage(f"archive {archive_path}: member {member.name!r} takes "
                                           f"the content over {max_bytes} bytes (size cap)")
                    extractor.add(tar, member)
                    if position is not None:
                        progress(count, position())
            if count == 0 and not layer:  # an empty layer is a valid layer
                raise InvalidImage(f"archive {archive_path}: no members")
            extractor.finish()
            if hashing is not None:
                hashing.drain(max_bytes + _HEADER_SLACK_BYTES)
    except (InvalidImage, StoreError):
        _empty_dir(dest_dir)
        raise
    except tarfile.TarError as exc:
        _empty_dir(dest_dir)
        raise InvalidImage(f"archive {archive_path}: not a valid tar ({exc})") from exc
    except _DECODE_ERRORS as exc:
        _empty_dir(dest_dir)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise StoreError(f"unpacking {archive_path} into {dest_dir}: "
                             f"{exc.strerror or exc}") from exc
        raise InvalidImage(f"archive {archive_path}: corrupt ({exc})") from exc
    finally:
        if extractor is not None:
            extractor.close_cache()
        if raw_file is not None:
            raw_file.close()
        os.close(root_fd)
    out = {"members": count, "bytes": total, "compression": kind}
    if hashing is not None:
        out["sha256"] = hashing.sha.hexdigest()
    return out
