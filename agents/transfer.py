"""Image transfer between the agent and a source (the hub's registry, or
another agent): layers move in chunks and are checked against their sha256
before the store keeps them; a pull that fails leaves nothing.

Both the hub and the agents serve the same two methods, so either can be a
source: ``image_manifest(ref) -> {manifest, layer_sizes}`` and
``image_layer_read(digest, offset, length) -> bytes``.

Concurrent pulls of one image on one host download it once: later callers
wait for the first (single flight).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile

import gevent
from gevent.event import AsyncResult

from dcctl import errors, files, wire
from images.errors import ImageExists, ImageNotFound
from images.store import ImageStore

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20
PULL_CALL_TIMEOUT_SECONDS = 120.0


def _blocking(fn, *args):
    return gevent.get_hub().threadpool.apply(fn, args)


class Puller:
    """Pulls images into ``store``; mutations hold ``store_lock``."""

    def __init__(self, store: ImageStore, store_lock):
        self.store = store
        self.store_lock = store_lock
        self._inflight: dict[str, AsyncResult] = {}

    def manifest(self, ref: str) -> dict:
        """This host's manifest for ``ref`` and its layer sizes (bytes)."""
        m = self.store.resolve(ref)
        sizes = {d: os.path.getsize(self.store.export_layer(d)) for d in m["layers"]}
        return {"manifest": m, "layer_sizes": sizes}

    def read_layer(self, digest: str, offset: int, length: int) -> bytes:
        """Up to ``length`` (<= 4 MiB) bytes of a layer tar from ``offset``;
        b"" at or past its end (dcctl.files.read_range).

        Raises: InvalidArgument (offset or length not an integer from 0 to
        2**63-1), ImageNotFound (the store's)."""
        files.check_range(offset, length)
        path = self.store.export_layer(digest)
        return _blocking(files.read_range, path, offset, length, CHUNK_BYTES)

    def pull(self, ref: str, source: str, keys=None, progress=None) -> dict:
        """Pull ``ref`` from ``source`` (an endpoint) unless present.

        ``progress(bytes_done, bytes_total)``, if given, is told after each
        chunk (bytes of the layers this pull moves; total 0 when the image
        is here already or another pull of it is under way).

        Returns: {"manifest": ..., "pulled": bool, "bytes": int transferred}.
        Raises: ImageNotFound (the source lacks it), StoreError (digest
        mismatch, disk full), Unreachable / CallTimeout (the source).
        """
        with wire.connect(source, timeout_s=PULL_CALL_TIMEOUT_SECONDS, keys=keys) as client:
            info = client.call("image_manifest", ref)
            manifest = info["manifest"]
            image_id = manifest["id"]
            try:
                return {"manifest": self.store.get(image_id), "pulled": False, "bytes": 0}
            except ImageNotFound:
                pass
            waiter = self._inflight.get(image_id)
            if waiter is not None:
                return {**waiter.get(), "pulled": False}
            waiter = self._inflight[image_id] = AsyncResult()
            try:
                result = self._pull(client, manifest, info["layer_sizes"], progress)
                waiter.set(result)
                return result
            except BaseException as exc:
                waiter.set_exception(exc)
                raise
            finally:
                del self._inflight[image_id]

    def pull_from_any(self, ref: str, sources: list[str], keys=None) -> dict:
        """``pull`` from the first of ``sources`` (endpoints, in order: a
        fleet's hubs, the current one first) that can be reached; the next
        one when a source is Unreachable (a hub just killed refuses at
        once; a failed pull leaves nothing, so trying again is safe).

        Returns: as ``pull``.  Raises: as ``pull`` (the last source's
        Unreachable when none could be reached); InvalidArgument (no source)."""
        if not sources:
            raise errors.InvalidArgument("no source to pull from")
        for i, source in enumerate(sources):
            try:
                return self.pull(ref, source, keys)
            except errors.Unreachable as exc:
                if i == len(sources) - 1:
                    raise
                log.warning("pull %s: %s: %s; trying %s", ref, source, exc, sources[i + 1])
        raise AssertionError("not reached")

    def _pull(self, client: wire.RpcClient, manifest: dict, sizes: dict, progress=None) -> dict:
        moved = 0
        tmp_root = self.store.tmp_dir
        total = sum(s for d, s in sizes.items() if d in manifest["layers"] and isinstance(s, int)
                    and not self.store.has_layer(d))
        for digest in manifest["layers"]:
            if self.store.has_layer(digest):
                continue
            size = sizes.get(digest)
            if not isinstance(size, int) or size < 0:
                raise errors.InvalidArgument(f"source gave no size for layer {digest[:12]}")
            fd, path = tempfile.mkstemp(prefix="pull-", dir=tmp_root)
            try:
                with os.fdopen(fd, "wb") as out:
                    offset = 0
                    while offset < size:
                        chunk = client.call("image_layer_read", digest, offset, min(CHUNK_BYTES, size - offset))
                        if not chunk:
                            raise errors.StoreError(f"layer {digest[:12]} ended at {offset} of {size} bytes")
                        _blocking(out.write, chunk)
                        offset += len(chunk)
                        if progress is not None:
                            progress(moved + offset, total)
                moved += size
                with self.store_lock:
                    _blocking(self.store.import_layer, path, digest)
            finally:
                if os.path.exists(path):
                    os.unlink(path)
        with self.store_lock:
            try:
                stored = _blocking(self.store.import_manifest, manifest)
            except ImageExists:
                stored = self.store.get(manifest["id"])
        log.info("pulled %s@%s (%d bytes)", manifest["name"], manifest["id"][:12], moved)
        return {"manifest": stored, "pulled": True, "bytes": moved}


#: At most this many endpoints in an ``upload_hubs`` option.
MAX_UPLOAD_HUBS = 16


def upload_source(offered, configured: list[str], current: str | None) -> str:
    """The hub endpoint to fetch an upload from.

    With several hubs the hub that holds an upload (hub.uploads, on that
    hub's disk) names its own endpoints with the call (``offered``); the
    agent takes the first of them that is in its own ``--hub`` list, so a
    caller can never point it at an arbitrary address.  Without an offer
    (one hub, an older hub) it is ``current``, the hub its link uses now.
    With one configured hub and no offered endpoint in it (the hub listens
    on an address the agent spells otherwise) it is that one hub.

    Args: offered: None or a list of endpoint strings (at most
    MAX_UPLOAD_HUBS); configured: the agent's hub endpoints; current: the
    endpoint its link uses now, or None.
    Returns: one endpoint of ``configured``.
    Raises: InvalidArgument (no hub; a malformed offer; several configured
    hubs and none of them offered).
    """
    if not configured:
        raise errors.InvalidArgument("this agent has no hub to fetch the upload from")
    if offered is None:
        return current if current in configured else configured[0]
    if (not isinstance(offered, list) or not 0 < len(offered) <= MAX_UPLOAD_HUBS
            or not all(isinstance(ep, str) for ep in offered)):
        raise errors.InvalidArgument(f"upload_hubs: want a list of 1 to {MAX_UPLOAD_HUBS} endpoint strings")
    for ep in offered:
        if ep in configured:
            return ep
    if len(configured) == 1:
        return configured[0]
    raise errors.InvalidArgument(f"upload_hubs: none of {offered!r} is one of this agent's hubs "
                                 f"({','.join(configured)}); an upload is fetched only from a configured hub")


def fetch_upload(source: str, keys, upload_id: str, dest_dir: str, progress=None) -> str:
    """Copy a complete image upload (hub.uploads) from ``source`` into a new
    file under ``dest_dir``, in CHUNK_BYTES calls, checking its size and its
    sha256 (the upload id); ``progress(done_bytes, total_bytes)`` after
    each chunk if given.

    Returns: the file's path (the caller removes it).
    Raises: NoSuchUpload, StoreError (short or digest mismatch; no file is
    left), Unreachable, CallTimeout.
    """
    with wire.connect(source, timeout_s=PULL_CALL_TIMEOUT_SECONDS, keys=keys) as client:
        size = client.call("image_upload_info", upload_id)["size_bytes"]
        fd, path = tempfile.mkstemp(prefix="upload-", dir=dest_dir)
        sha = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                offset = 0
                while offset < size:
                    chunk = client.call("image_upload_read", upload_id, offset, min(CHUNK_BYTES, size - offset))
                    if not chunk:
                        raise errors.StoreError(f"upload {upload_id[:12]} ended at {offset} of {size} bytes")
                    _blocking(lambda c: (sha.update(c), out.write(c)), chunk)
                    offset += len(chunk)
                    if progress is not None:
                        progress(offset, size)
            if sha.hexdigest() != upload_id:
                raise errors.StoreError(f"upload {upload_id[:12]}: digest mismatch after transfer")
        except BaseException:
            os.unlink(path)
            raise
    return path
