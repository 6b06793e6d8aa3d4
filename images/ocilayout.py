"""The vocabulary of OCI image layouts and docker-save archives, and safe
readers of them: a layout directory or an uncompressed archive read in place,
every path kept inside it (images.oci imports, images.ociexport writes)."""
from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
import platform
import tarfile
import zlib
from typing import Any, BinaryIO

from images.errors import InvalidImage
from images.manifest import validate_tag
from images.tarsafe import detect_compression

__all__ = ["FORMATS", "EXPORT_FORMATS", "MAX_JSON_BYTES", "MAX_ARCHIVE_MEMBERS", "MAX_ARCHIVE_BYTES",
           "MAX_LAYERS", "MT_OCI_INDEX", "MT_OCI_MANIFEST", "MT_OCI_CONFIG", "MT_OCI_LAYER",
           "MT_DOCKER_LIST", "MT_DOCKER_MANIFEST", "host_arch", "split_source", "detect_format",
           "Source", "DirSource", "TarSource"]

FORMATS = ("oci", "oci-archive", "docker-archive", "rootfs")
EXPORT_FORMATS = ("oci", "oci-archive", "docker-archive")
#: Cap on index.json, manifest.json, an OCI manifest or an image config, in bytes.
MAX_JSON_BYTES = 4 * 1024**2
MAX_ARCHIVE_MEMBERS = 100_000
#: Cap on a compressed archive's decompressed size (``docker save | gzip``), bytes.
MAX_ARCHIVE_BYTES = 64 * 1024**3
MAX_LAYERS = 256
_CHUNK_BYTES = 1024**2

MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def host_arch() -> str:
    """This host's architecture in OCI's words (amd64, arm64...)."""
    machine = platform.machine()
    return _ARCH.get(machine, machine)


def split_source(path: str) -> tuple[str, str | None]:
    """Split ``PATH:TAG`` (skopeo's ``oci:PATH:TAG``) into (PATH, TAG), or
    (PATH, None) when PATH itself exists or has no ``:TAG`` suffix.

    Raises:
        InvalidImage: the suffix is not a valid tag.
    """
    if os.path.lexists(path):
        return path, None
    head, sep, tag = path.rpartition(":")
    if not sep or "/" in tag or not head:
        return path, None
    return head, validate_tag(tag)


# ------------------------------------------------------------------ sources

class Source:
    """Files of a layout or archive, by relative path; every lookup stays
    inside it (symlinks resolved and checked)."""

    path: str

    def exists(self, rel: str) -> bool:
        raise NotImplementedError

    def size(self, rel: str) -> int:
        raise NotImplementedError

    def open(self, rel: str) -> BinaryIO:
        raise NotImplementedError

    def read_json(self, rel: str, what: str, declared_size: int | None = None,
                  digest: str | None = None) -> Any:
        if not self.exists(rel):
            raise InvalidImage(f"{self.path}: {what} {rel!r} is missing")
        size = self.size(rel)
        if size > MAX_JSON_BYTES:
            raise InvalidImage(f"{self.path}: {what} {rel!r} is {size} bytes, over the "
                               f"{MAX_JSON_BYTES}-byte cap")
        if declared_size is not None and size != declared_size:
            raise InvalidImage(f"{self.path}: {what} {rel!r} is {size} bytes; its descriptor "
                               f"says {declared_size}")
        with self.open(rel) as f:
            data = f.read(MAX_JSON_BYTES + 1)
        if digest is not None and hashlib.sha256(data).hexdigest() != digest:
            raise InvalidImage(f"{self.path}: {what} {rel!r} does not match its digest sha256:{digest}")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidImage(f"{self.path}: {what} {rel!r} is not valid JSON ({exc})") from exc

    def verify_blob(self, rel: str, digest: str, declared_size: int | None, what: str) -> None:
        if not self.exists(rel):
            raise InvalidImage(f"{self.path}: {what} {rel!r} is missing (named by the manifest)")
        size = self.size(rel)
        if declared_size is not None and size != declared_size:
            raise InvalidImage(f"{self.path}: {what} {rel!r} is {size} bytes; its descriptor "
                               f"says {declared_size}")
        sha = hashlib.sha256()
        with self.open(rel) as f:
            while chunk := f.read(_CHUNK_BYTES):
                sha.update(chunk)
        if sha.hexdigest() != digest:
            raise InvalidImage(f"{self.path}: {what} {rel!r} does not match its digest "
                               f"sha256:{digest} (it is sha256:{sha.hexdigest()})")


class DirSource(Source):
    def __init__(self, path: str):
        self.path = path
        self.root = os.path.realpath(path)

    def _real(self, rel: str) -> str | None:
        if rel.startswith("/") or "\x00" in rel or ".." in rel.split("/"):
            raise InvalidImage(f"{self.path}: path {rel!r} leaves the layout")
        real = os.path.realpath(os.path.join(self.root, rel))
        if not real.startswith(self.root + os.sep):
            raise InvalidImage(f"{self.path}: {rel!r} leads outside the layout")
        return real if os.path.isfile(real) else None

    def exists(self, rel: str) -> bool:
        return self._real(rel) is not None

    def size(self, rel: str) -> int:
        return os.path.getsize(self._real(rel))

    def open(self, rel: str) -> BinaryIO:
        return open(self._real(rel), "rb")


class _Slice(io.RawIOBase):
    """A read-only window [offset, offset+size) of a file."""

    def __init__(self, path: str, offset: int, size: int):
        self.f = open(path, "rb")
        self.start, self.size, self.pos = offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self.size - self.pos)
        if n <= 0:
            return 0
        self.f.seek(self.start + self.pos)
        data = self.f.read(n)
        buf[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        self.f.close()
        super().close()


class TarSource(Source):
    """Members of an uncompressed tar, read in place (never extracted)."""

    def __init__(self, path: str):
        self.path = self.file = path  # path: named in messages; file: read
        self.files: dict[str, tuple[int, int]] = {}
        self.links: dict[str, str] = {}
        try:
            with tarfile.open(path, mode="r:") as tar:
                count = 0
                while (member := tar.next()) is not None:
                    count += 1
                    if count > MAX_ARCHIVE_MEMBERS:
                        raise InvalidImage(f"archive {path}: more than {MAX_ARCHIVE_MEMBERS} members")
                    tar.members.clear()
                    name = _norm(member.name)
                    if name is None and _is_root(member.name):
                        # "." or "./", as `tar -C DIR -cf X .` writes first:
                        # the archive's own root, which holds no blob
                        if not member.isdir():
                            raise InvalidImage(f"archive {path}: member {member.name[:200]!r}: "
                                               "the archive root must be a directory")
                        continue
                    if name is None:
                        raise InvalidImage(f"archive {path}: member {member.name[:200]!r} leaves the archive")
                    if name in self.files or name in self.links:
                        raise InvalidImage(f"archive {path}: member {name!r} appears twice")
                    if member.isreg():
                        self.files[name] = (member.offset_data, member.size)
                    elif member.issym():
                        target = _norm(os.path.join(os.path.dirname(name), member.linkname)) \
                            if not member.linkname.startswith("/") else None
                        if target is None:
                            raise InvalidImage(f"archive {path}: symlink {name!r} points outside it")
                        self.links[name] = target
                    elif member.islnk():
                        target = _norm(member.linkname)
                        if target is None:
                            raise InvalidImage(f"archive {path}: hard link {name!r} points outside it")
                        self.links[name] = target
                    elif not member.isdir():
                        raise InvalidImage(f"archive {path}: member {name!r}: unsupported type")
        except tarfile.TarError as exc:
            raise InvalidImage(f"archive {path}: not a valid tar ({exc})") from exc
        except OSError as exc:
            raise InvalidImage(f"archive {path}: cannot read ({exc.strerror or exc})") from exc
        end = os.path.getsize(path)
        for name, (offset, size) in self.files.items():
            if offset + size > end:
                raise InvalidImage(f"archive {path}: member {name!r} is truncated")

    def _resolve(self, rel: str) -> str | None:
        name = _norm(rel)
        for _ in range(16):
            if name is None:
                return None
            if name in self.files:
                return name
            name = self.links.get(name)
        return None

    def exists(self, rel: str) -> bool:
        return self._resolve(rel) is not None

    def size(self, rel: str) -> int:
        return self.files[self._resolve(rel)][1]

    def open(self, rel: str) -> BinaryIO:
        offset, size = self.files[self._resolve(rel)]
        return io.BufferedReader(_Slice(self.file, offset, size), buffer_size=_CHUNK_BYTES)


def _is_root(name: str) -> bool:
    """Whether a member path names the archive's root ("", ".", "./", ".//.")."""
    return all(part in ("", ".") for part in name.split("/"))


def _norm(name: str) -> str | None:
    """A member path without "./" and "", or None if it climbs out."""
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(part)
    return "/".join(out) if out else None


# ------------------------------------------------------------------ detection

def detect_format(path: str) -> str:
    """"oci", "oci-archive", "docker-archive" or "rootfs" (module doc).

    Raises:
        InvalidImage: the path is neither a directory nor a readable file,
            or a directory that is not an OCI layout.
    """
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "oci-layout")) or os.path.isfile(os.path.join(path, "index.json")):
            return "oci"
        raise InvalidImage(f"{path}: a directory but not an OCI image layout (no oci-layout)")
    if not os.path.isfile(path):
        raise InvalidImage(f"{path}: not a file or directory")
    compressed = detect_compression(path) != "none"
    names = set()
    try:
        # headers only: data is seeked over (a compressed archive is read through)
        with tarfile.open(path, mode="r:*" if compressed else "r:") as tar:
            while (member := tar.next()) is not None:
                tar.members.clear()
                name = _norm(member.name)
                if name and "/" not in name and member.isfile():
                    names.add(name)
                    if len(names) > 64:
                        return "rootfs"  # not an image archive's few top-level files
    except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error, lzma.LZMAError):
        return "rootfs"  # import_tar names what is wrong with it
    if "oci-layout" in names or "index.json" in names:
        return "oci-archive"
    if "manifest.json" in names:
        return "docker-archive"
    return "rootfs"
