"""Filesystem helpers shared by the store, the unpacker and the templates.

Image content is untrusted and full of symlinks (``/bin/sh -> /bin/busybox``
points at the *host's* busybox when followed on the host), so host-side code
never follows a path inside a layer or a container rootfs with plain
``open()``: it walks the path one component at a time with ``O_NOFOLLOW``
(``open_dir_beneath``).  Writes are staged and renamed into place
(``atomic_write``); staging trees are removed with ``safe_rmtree``, which first
detaches anything still mounted inside (a crashed debootstrap leaves /proc).
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from typing import Sequence

from images.errors import InvalidImage, StoreError

O_DIR_NOFOLLOW = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

#: Linux PATH_MAX and NAME_MAX, in bytes.
MAX_PATH_BYTES = 4096
MAX_COMPONENT_BYTES = 255

_MNT_DETACH = 2


def split_path(path: str, *, what: str, absolute: bool | None = None) -> tuple[str, ...]:
    """Split a slash-separated path into its components, refusing tricks.

    Args:
        path: the path as found in an archive member, manifest or template list.
        what: how to name the path in an error message (e.g. ``"member 'a/b'"``).
        absolute: True requires a leading "/", False refuses one, None accepts
            both (an absolute path is then taken relative to the root).

    Returns:
        the components, without "" and "." entries; ``()`` for the root itself.

    Raises:
        InvalidImage: NUL byte, ".." component, wrong absoluteness, or a path
            or component longer than Linux allows.
    """
    if not isinstance(path, str) or not path:
        raise InvalidImage(f"{what}: empty or not a string")
    if "\x00" in path:
        raise InvalidImage(f"{what}: contains a NUL byte")
    is_abs = path.startswith("/")
    if absolute is True and not is_abs:
        raise InvalidImage(f"{what}: must be an absolute path")
    if absolute is False and is_abs:
        raise InvalidImage(f"{what}: absolute path refused")
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise InvalidImage(f"{what}: path longer than {MAX_PATH_BYTES} bytes")
    parts = tuple(p for p in path.split("/") if p not in ("", "."))
    for part in parts:
        if part == "..":
            raise InvalidImage(f"{what}: '..' component refused")
        if len(os.fsencode(part)) > MAX_COMPONENT_BYTES:
            raise InvalidImage(f"{what}: component longer than {MAX_COMPONENT_BYTES} bytes")
    return parts


def symlink_escapes(link_parts: Sequence[str], target: str) -> bool:
    """True if symlink ``link_parts`` (components below the root) with this
    target climbs above the root when resolved lexically from its directory.
    An absolute target is read relative to the root (as inside the container).
    """
    stack = [] if target.startswith("/") else list(link_parts[:-1])
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(comp)
    return False


def open_dir_beneath(root_fd: int, parts: Sequence[str], *, what: str, create: bool = False,
                     mode: int = 0o755, created: list | None = None) -> int:
    """Open directory ``root/parts...`` without following any symlink.

    Args:
        root_fd: an open directory fd for the root (not closed here).
        parts: the components below the root (``()`` gives a dup of root_fd).
        what: how to name the path in an error message.
        create: make missing directories (with ``mode``, owned by the caller).
        created: if a list, the component tuples of directories made here are
            appended to it.

    Returns:
        a new O_DIRECTORY fd; the caller closes it.

    Raises:
        InvalidImage: a component is a symlink or not a directory.
        FileNotFoundError: a component is missing and create is False.
        OSError: any other failure (callers translate it into StoreError).
    """
    fd = os.dup(root_fd)
    for i, part in enumerate(parts):
        try:
            try:
                nfd = os.open(part, O_DIR_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(part, mode, dir_fd=fd)
                    if created is not None:
                        created.append(tuple(parts[: i + 1]))
                except FileExistsError:
                    pass
                nfd = os.open(part, O_DIR_NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                where = "/".join(parts[: i + 1])
                raise InvalidImage(f"{what}: '{where}' is a symlink or not a directory") from exc
            raise
        os.close(fd)
        fd = nfd
    return fd


def fsync_dir(path: str) -> None:
    """fsync a directory so that renames inside it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, *, tmp_dir: str, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically: stage in tmp_dir, fsync, rename.

    Raises:
        StoreError: on any I/O failure (disk full...); nothing is left behind.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="write-")
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(os.path.dirname(path))
    except OSError as exc:
        raise StoreError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _unescape_mountinfo(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path`` (from /proc/self/mountinfo), deepest first."""
    path = os.path.realpath(path)
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4:
                    point = _unescape_mountinfo(fields[4])
                    if point == path or point.startswith(path.rstrip("/") + "/"):
                        found.append(point)
    except OSError:
        return []
    return sorted(set(found), key=len, reverse=True)


def safe_rmtree(path: str) -> None:
    """Remove a staging tree; first detach (umount -l) anything mounted in it,
    so that a leftover /proc or bind mount is never deleted through.

    Raises:
        StoreError: a mount could not be detached, or the tree not removed.
    """
    if not os.path.lexists(path):
        return
    points = mounts_under(path)
    if points:
        libc = ctypes.CDLL(None, use_errno=True)
        for point in points:
            if libc.umount2(os.fsencode(point), _MNT_DETACH) != 0:
                err = ctypes.get_errno()
                raise StoreError(f"cannot detach leftover mount {point}: {os.strerror(err)}")
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StoreError(f"cannot remove {path}: {exc.strerror or exc}") from exc
