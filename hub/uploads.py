"""Image archives uploaded to the hub from an operator's machine
(``dcctl image_push FILE NAME[:TAG]``), and the hub methods around them.

An upload is named by the sha256 of the whole file, announced up front:

    image_upload_begin(size_bytes, sha256)      -> {upload_id, offset}
    image_upload_chunk(upload_id, offset, data) -> {offset}     (<= 4 MiB each)
    image_upload_finish(upload_id, name, opts)  -> the registry manifest

Chunks append at the current end only, so a client that lost its place asks
``begin`` again and resumes from the ``offset`` it answers (an interrupted
push restarts where it stopped).  ``finish`` checks the size and the sha256,
then hands the archive to one live host: the hub never unpacks an archive
itself (it talks to agents over RPC only); the host pulls it back with
``image_upload_read``, imports it (OCI layout/archive, docker-archive or
rootfs tarball: every digest checked, see the agent's image_import), and the
hub copies the resulting image into its registry as ``image_push HOST REF``
does.  Any host then pulls it on demand (``create_container``).  The upload
file is removed once the image is in the registry, or when finish fails on
content (a digest mismatch, a hostile archive).

Layout: REGISTRY_ROOT/uploads/<sha256>.part (being written), <sha256>.json
(its announced size), <sha256>.tar (complete and verified).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re

import gevent

from dcctl import errors, files, validate
from dcctl.wire import expose, refs

log = logging.getLogger(__name__)

__all__ = ["Uploads", "UploadMethods", "MAX_UPLOAD_BYTES", "CHUNK_BYTES", "upload_name"]

CHUNK_BYTES = 4 << 20
MAX_UPLOAD_BYTES = 64 << 30
IMPORT_TIMEOUT_SECONDS = 1800.0
_SHA = re.compile(r"^[0-9a-f]{64}$")
#: Errors that say the archive itself is bad: the upload is dropped.
_CONTENT_ERRORS = (errors.InvalidImage, errors.AmbiguousImageRef, errors.ImageNotFound)


def _file_sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


def upload_name(name: object) -> refs.ImageRef:
    """The image an upload is imported as, from ``NAME[:TAG]`` (no
    ``@id``): the ref the manifest the importing host answers must match
    before the registry keeps anything.  A NAME alone matches any tag:
    the importer takes the tag from ``select`` or from the archive itself
    (``docker save ubuntu:24.04`` pushed as ``ubuntu`` is ubuntu:24.04,
    images/oci.py), else latest; the name must be NAME.

    Raises: InvalidArgument."""
    parsed = refs.parse_ref(name)
    if parsed.prefix:
        raise errors.InvalidArgument(f"image name {name!r}: want NAME or NAME:TAG, no @id")
    return parsed


def _upload_id(value: object) -> str:
    if not isinstance(value, str) or not _SHA.match(value):
        raise errors.InvalidArgument("upload id must be the file's sha256 (64 lowercase hex)")
    return value


class Uploads:
    """The upload files under ``root`` (see the module doc)."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)

    def _path(self, upload_id: str, ext: str) -> str:
        return os.path.join(self.root, f"{_upload_id(upload_id)}.{ext}")

    def begin(self, size_bytes: int, sha256: str) -> dict:
        """Start or resume an upload. Returns {upload_id, offset, complete}."""
        validate.number(size_bytes, "size_bytes", minimum=1, maximum=MAX_UPLOAD_BYTES, integer=True)
        upload_id = _upload_id(sha256)
        if os.path.exists(self._path(upload_id, "tar")):
            return {"upload_id": upload_id, "offset": size_bytes, "complete": True}
        meta = self._path(upload_id, "json")
        part = self._path(upload_id, "part")
        if os.path.exists(meta):
            with open(meta) as f:
                if json.load(f).get("size_bytes") != size_bytes:
                    raise errors.InvalidArgument(f"upload {upload_id[:12]} was begun with another size")
        else:
            with open(meta, "w") as f:
                json.dump({"size_bytes": size_bytes}, f)
        if not os.path.exists(part):
            open(part, "wb").close()
        return {"upload_id": upload_id, "offset": os.path.getsize(part), "complete": False}

    def _size(self, upload_id: str) -> int:
        try:
            with open(self._path(upload_id, "json")) as f:
                return int(json.load(f)["size_bytes"])
        except FileNotFoundError:
            raise errors.NoSuchUpload(f"no upload {upload_id[:12]} on the hub",
                                      hint="begin it again: image_upload_begin") from None

    def write(self, upload_id: str, offset: int, data: bytes) -> dict:
        """Append ``data`` at ``offset`` (which must be the current end)."""
        size = self._size(upload_id)
        if not isinstance(data, bytes) or not data or len(data) > CHUNK_BYTES:
            raise errors.InvalidArgument(f"a chunk is 1 to {CHUNK_BYTES} bytes")
        part = self._path(upload_id, "part")
        try:
            with open(part, "ab") as f:
                end = f.tell()
                if offset != end:
                    raise errors.InvalidArgument(f"upload {upload_id[:12]} is at offset {end}, not {offset}",
                                                 hint="resume from the offset image_upload_begin answers")
                if end + len(data) > size:
                    raise errors.InvalidArgument(f"upload {upload_id[:12]}: more than the announced "
                                                 f"{size} bytes")
                f.write(data)
                return {"offset": end + len(data)}
        except FileNotFoundError:
            raise errors.NoSuchUpload(f"no upload {upload_id[:12]} on the hub") from None
        except OSError as exc:
            raise errors.StoreError(f"cannot write upload {upload_id[:12]}: {exc.strerror or exc}") from exc

    def complete(self, upload_id: str) -> str:
        """Check size and sha256 of a fully written upload; its .tar path.

        Raises: NoSuchUpload, InvalidArgument (short), StoreError (digest
        mismatch: the upload is dropped)."""
        final = self._path(upload_id, "tar")
        if os.path.exists(final):
            return final
        size = self._size(upload_id)
        part = self._path(upload_id, "part")
        have = os.path.getsize(part) if os.path.exists(part) else 0
        if have != size:
            raise errors.InvalidArgument(f"upload {upload_id[:12]} has {have} of {size} bytes",
                                         hint="send the rest, then finish")
        digest = gevent.get_hub().threadpool.apply(_file_sha256, (part,))  # heartbeats go on
        if digest != upload_id:
            self.remove(upload_id)
            raise errors.StoreError(f"upload {upload_id[:12]}: the file's sha256 is "
                                    f"{digest[:12]}; nothing kept")
        os.replace(part, final)
        return final

    def read(self, upload_id: str, offset: int, length: int) -> bytes:
        """Up to ``length`` (<= CHUNK_BYTES) bytes of a complete upload from
        ``offset``; b"" at or past its end (dcctl.files.read_range).

        Raises: InvalidArgument (offset or length not an integer from 0 to
        2**63-1), NoSuchUpload."""
        files.check_range(offset, length)
        try:
            return files.read_range(self._path(upload_id, "tar"), offset, length, CHUNK_BYTES)
        except FileNotFoundError:
            raise errors.NoSuchUpload(f"no complete upload {upload_id[:12]} on the hub") from None

    def info(self, upload_id: str) -> dict:
        final = self._path(upload_id, "tar")
        if not os.path.exists(final):
            raise errors.NoSuchUpload(f"no complete upload {upload_id[:12]} on the hub")
        return {"upload_id": upload_id, "size_bytes": os.path.getsize(final), "sha256": upload_id}

    def remove(self, upload_id: str) -> None:
        for ext in ("part", "json", "tar"):
            try:
                os.unlink(self._path(upload_id, ext))
            except FileNotFoundError:
                pass


class UploadMethods:
    """The hub's upload methods (mixed into hub.service.HubService, which
    gives ``registry``, ``store`` and ``agents``)."""

    @property
    def uploads(self) -> Uploads:
        if getattr(self, "_uploads", None) is None:
            self._uploads = Uploads(os.path.join(self.registry.root, "uploads"))
        return self._uploads

    @expose
    def image_upload_begin(self, size_bytes: int, sha256: str) -> dict:
        """Start (or resume) uploading an image archive from the caller's
        machine (dcctl image_push FILE NAME does the whole dance).

        Args: size_bytes: the file's size; sha256: its sha256 hex (the
        upload id).
        Returns: {upload_id, offset (bytes already received: resume there),
        complete}.
        Raises: InvalidArgument.
        """
        return self.uploads.begin(size_bytes, sha256)

    @expose
    def image_upload_chunk(self, upload_id: str, offset: int, data: bytes) -> dict:
        """Append up to 4 MiB at ``offset`` (the current end).

        Returns: {offset (the new end)}.
        Raises: NoSuchUpload, InvalidArgument (wrong offset: resume from
        image_upload_begin's), StoreError (disk full).
        """
        return self.uploads.write(upload_id, offset, data)

    @expose(shielded=True)
    def image_upload_finish(self, upload_id: str, name: str, options: dict | None = None) -> dict:
        """Check the upload's sha256, import it on one live host and copy
        the image into the registry (see the module doc).

        Args:
            upload_id: the file's sha256.
            name: ``NAME`` or ``NAME:TAG``.
            options: {host: the host that imports it (default: the first
                live host by name), select: which image of a layout holding
                several (its tag), format: as the agent's image_import}.

        Returns: {manifest, host (that imported it), bytes (archive size)}.
        Raises: NoSuchUpload, InvalidArgument, StoreError (sha256 mismatch),
        NoCapacity (no live host), and the agent's image_import errors
        (InvalidImage...: the upload is dropped); InvalidImage too when the
        host answers an image whose name or tag is not ``name`` (nothing
        kept in the registry; the upload stays, for another host).
        """
        opts = validate.options(options, {"host": "importing host", "select": "tag in a layout",
                                          "format": "image format"}, "image_upload_finish")
        wanted = upload_name(name)
        path = self.uploads.complete(upload_id)
        host = self.import_host(opts.pop("host", None))
        try:
            if self.endpoints:  # several hubs: the agent fetches from this one, which holds the upload
                opts["upload_hubs"] = list(self.endpoints)
            manifest = self.agents.call(host, "image_import_upload", upload_id, name, opts,
                                  timeout_s=IMPORT_TIMEOUT_SECONDS)
        except _CONTENT_ERRORS:
            self.uploads.remove(upload_id)
            raise
        ref = f"{manifest['name']}@{manifest['id']}"
        info = self.agents.call(host, "image_manifest", ref)
        stored = self.registry.receive(
            info["manifest"], info["layer_sizes"],
            lambda d, off, n: self.agents.call(host, "image_layer_read", d, off, n,
                                               timeout_s=IMPORT_TIMEOUT_SECONDS), source=host, expect=wanted)
        size = os.path.getsize(path)
        self.uploads.remove(upload_id)
        log.info("upload %s imported on %s as %s", upload_id[:12], host, ref[:80])
        return {"manifest": stored, "host": host, "bytes": size}

    def import_host(self, host: str | None) -> str:
        """The host that imports an upload: ``host``, else the first live
        host by name.  Raises: NoCapacity (no live host)."""
        if host is not None:
            return host
        alive = sorted(h["name"] for h in self.store.hosts() if h["state"] == "alive")
        if not alive:
            raise errors.NoCapacity("no live host to import the archive")
        return alive[0]

    @expose(access="pull")
    def image_upload_info(self, upload_id: str) -> dict:
        """For the importing host: a complete upload's size.

        Returns: {upload_id, size_bytes, sha256}.
        Raises: NoSuchUpload.
        """
        return self.uploads.info(upload_id)

    @expose(access="pull")
    def image_upload_read(self, upload_id: str, offset: int, length: int) -> bytes:
        """For the importing host: a piece of a complete upload.

        Args: offset, length: in bytes (length at most 4 MiB).
        Returns: up to ``length`` bytes from ``offset`` (b"" past the end).
        Raises: NoSuchUpload, InvalidArgument.
        """
        return self.uploads.read(upload_id, offset, length)
