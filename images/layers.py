"""Layers on disk: the content-addressed half of the image store.

``LayerStore`` owns the directory layout, staging, and the layers::

    layers/<sha256>.tar    the layer as a canonical uncompressed tar; its
                           sha256 is the layer id; its presence commits the layer
    layers/<sha256>/       the unpacked layer, used as an overlayfs lower dir
    tmp/                   staging; emptied when a store is constructed

A layer's directory is renamed into place first and its tar last, so a crash
leaves at worst a directory without a tar, which construction and gc() remove.
``images.store.ImageStore`` adds the manifests on top.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from typing import Callable, Iterator

from images.errors import ImageNotFound, InvalidImage, StoreError
from images.fsutil import fsync_dir, safe_rmtree
from images.manifest import validate_digest
from images.packing import pack_dir
from images.tarsafe import safe_extract

__all__ = ["LayerStore"]

#: Cap on a layer tar received from another host (import_layer), in bytes.
DEFAULT_MAX_LAYER_BYTES = 64 * 1024**3
_CHUNK_BYTES = 1024**2


def _tree_bytes(path: str) -> int:
    """Sum of the sizes of the regular files under path (or of path itself)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_size if stat.S_ISREG(st.st_mode) else 0
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


class LayerStore:
    """Layout, staging and layers of an image store (see the module doc)."""

    def __init__(self, root: str):
        """Open (creating if needed) the store at ``root``.

        Removes staging leftovers and half-installed layers of a crash.

        Raises:
            StoreError: the directories cannot be created or cleaned.
        """
        self.root = os.path.abspath(root)
        self.layers_dir = os.path.join(self.root, "layers")
        self.manifests_dir = os.path.join(self.root, "manifests")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self._busy: set[str] = set()  # staging dirs in use by this process
        self._pinned: set[str] = set()  # layers added but not yet committed
        try:
            for path, mode in ((self.root, 0o755), (self.layers_dir, 0o755),
                               (self.manifests_dir, 0o755), (self.tmp_dir, 0o700)):
                os.makedirs(path, mode=mode, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create image store at {self.root}: {exc.strerror}") from exc
        for path in self._orphans():
            safe_rmtree(path)

    # ------------------------------------------------------------ housekeeping

    @staticmethod
    def _mkdir(path: str) -> str:
        try:
            os.mkdir(path, 0o755)
        except OSError as exc:
            raise StoreError(f"cannot create {path}: {exc.strerror}") from exc
        return path

    @contextlib.contextmanager
    def staging(self, prefix: str = "stage") -> Iterator[str]:
        """A fresh directory under ``root/tmp``, removed (with anything still
        mounted inside detached first) when the block exits, in every case.

        Yields:
            the absolute path of the directory (mode 0700).
        """
        try:
            path = tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.tmp_dir)
        except OSError as exc:
            raise StoreError(f"cannot create staging dir in {self.tmp_dir}: {exc.strerror}") from exc
        self._busy.add(path)
        try:
            yield path
        except BaseException:
            self._busy.discard(path)
            with contextlib.suppress(StoreError):
                safe_rmtree(path)
            raise
        self._busy.discard(path)
        safe_rmtree(path)

    # ------------------------------------------------------------ layers

    def has_layer(self, layer_id: str) -> bool:
        """True if the layer (tar and unpacked dir) is in the store."""
        base = os.path.join(self.layers_dir, validate_digest(layer_id))
        return os.path.isfile(base + ".tar") and os.path.isdir(base)

    def _install_layer(self, digest: str, tar_tmp: str, unpacked: str) -> None:
        base = os.path.join(self.layers_dir, digest)
        try:
            if os.path.lexists(base):
                safe_rmtree(base)  # an orphan dir of an earlier crash
            os.chmod(unpacked, 0o755)
            os.rename(unpacked, base)
            os.sync()  # the unpacked tree is durable before the tar commits it
            os.rename(tar_tmp, base + ".tar")
            fsync_dir(self.layers_dir)
        except OSError as exc:
            with contextlib.suppress(StoreError):
                if not os.path.exists(base + ".tar"):
                    safe_rmtree(base)
            raise StoreError(f"cannot install layer {digest}: {exc.strerror or exc}") from exc

    def _add_layer(self, src_dir: str, consume: bool) -> tuple[str, bool]:
        with self.staging("layer") as stage:
            tar_tmp = os.path.join(stage, "layer.tar")
            digest, _size = pack_dir(src_dir, tar_tmp)
            if self.has_layer(digest):
                return digest, False
            real = os.path.realpath(src_dir)
            if consume and real.startswith(os.path.realpath(self.tmp_dir) + os.sep):
                unpacked = real
            else:
                unpacked = self._mkdir(os.path.join(stage, "rootfs"))
                safe_extract(tar_tmp, unpacked, max_bytes=2**63, max_members=2**63, layer=True)
            self._install_layer(digest, tar_tmp, unpacked)
            return digest, True

    def add_layer_from_tar(self, path: str, *, diff_id: str | None = None,
                           max_bytes: int = DEFAULT_MAX_LAYER_BYTES,
                           max_members: int = 2_000_000, opener=None,
                           progress: Callable[[int, int], None] | None = None) -> str:
        """Add an untrusted image layer tar (plain or gzip; an OCI or
        docker-save layer: whiteouts ``.wh.NAME`` and ``.wh..wh..opq``),
        re-packed into the canonical layer tar.

        Args:
            path: the layer blob.
            diff_id: if given, the sha256 hex the decompressed tar must have.
            max_bytes: cap on the decompressed size, in bytes.
            max_members: cap on the number of members.
            opener: read the blob from this callable's file object instead
                of opening ``path`` (a member of an archive).
            progress: ``progress(members, stored_bytes)`` after each member
                (tarsafe.safe_extract's).

        Returns:
            the layer id; the layer is pinned (gc and remove keep it) until
            ``unpin()`` or ``drop_layer_if_unused()``.

        Raises:
            InvalidImage: hostile or corrupt layer (names the member),
                duplicate paths, bad whiteouts, diff_id mismatch.
            StoreError: I/O failure.  Nothing is left in the store.
        """
        with self.staging("oci-layer") as stage:
            unpacked = self._mkdir(os.path.join(stage, "rootfs"))
            info = safe_extract(path, unpacked, max_bytes=max_bytes, max_members=max_members,
                                layer=True, sha256=diff_id is not None, opener=opener,
                                progress=progress)
            if diff_id is not None and info["sha256"] != diff_id:
                raise InvalidImage(f"layer {path}: diff_id mismatch: the config says "
                                   f"sha256:{diff_id}, the tar is sha256:{info['sha256']}")
            tar_tmp = os.path.join(stage, "layer.tar")
            digest, _size = pack_dir(unpacked, tar_tmp)
            self._pinned.add(digest)
            if self.has_layer(digest):
                return digest
            try:
                self._install_layer(digest, tar_tmp, unpacked)
            except BaseException:
                self._pinned.discard(digest)
                raise
            return digest

    def unpin(self, layer_id: str) -> None:
        """Let gc/remove consider a layer added by add_layer_from_tar again."""
        self._pinned.discard(layer_id)

    def drop_layer_if_unused(self, layer_id: str, referenced: set[str]) -> None:
        """Remove a layer this caller added, unless ``referenced`` holds it
        (rollback of a failed multi-layer import)."""
        self._pinned.discard(layer_id)
        if layer_id not in referenced and self.has_layer(layer_id):
            self._remove_layer(layer_id)

    def add_layer_from_dir(self, src_dir: str, *, consume: bool = False, pin: bool = False) -> str:
        """Pack a directory tree into a layer (a no-op if the layer exists).

        Args:
            src_dir: the tree; its root directory itself is not recorded.
            consume: if src_dir lies under ``root/tmp`` (a staging dir), move
                it into the store instead of copying it.
            pin: keep the layer from gc and remove until ``unpin()`` (a
                layer of an image not yet committed).

        Returns:
            the layer id (sha256 hex of the canonical tar).

        Raises:
            InvalidImage: the tree holds a device node, fifo or socket.
            StoreError: I/O failure; no partial layer is left.
        """
        layer_id = self._add_layer(src_dir, consume)[0]
        if pin:
            self._pinned.add(layer_id)
        return layer_id

    def export_layer(self, layer_id: str) -> str:
        """Path of the layer's canonical tar (read it; do not modify it).

        Raises:
            InvalidImage: not a 64-hex id.  ImageNotFound: no such layer.
        """
        if not self.has_layer(layer_id):
            raise ImageNotFound(f"layer {layer_id} not found")
        return os.path.join(self.layers_dir, f"{layer_id}.tar")

    def import_layer(self, tar_path: str, expected_digest: str, *,
                     max_bytes: int = DEFAULT_MAX_LAYER_BYTES) -> str:
        """Add a layer tar received from elsewhere, checking its digest.

        Args:
            tar_path: the uncompressed layer tar (it is copied, not moved).
            expected_digest: the layer id the sender announced (64 hex).
            max_bytes: cap on the tar size, in bytes.

        Returns:
            the layer id (== expected_digest).

        Raises:
            InvalidImage: bad digest syntax, or hostile tar content.
            StoreError: digest mismatch, size cap, or I/O failure; nothing is
                left in the store.
        """
        validate_digest(expected_digest)
        if self.has_layer(expected_digest):
            return expected_digest
        with self.staging("import-layer") as stage:
            tar_tmp = os.path.join(stage, "layer.tar")
            sha, size = hashlib.sha256(), 0
            try:
                with open(tar_path, "rb") as src, open(tar_tmp, "wb") as dst:
                    while chunk := src.read(_CHUNK_BYTES):
                        size += len(chunk)
                        if size > max_bytes:
                            raise StoreError(f"layer tar {tar_path} is over {max_bytes} bytes")
                        sha.update(chunk)
                        dst.write(chunk)
                    dst.flush()
                    os.fsync(dst.fileno())
            except OSError as exc:
                raise StoreError(f"cannot copy layer tar {tar_path}: {exc.strerror or exc}") from exc
            if sha.hexdigest() != expected_digest:
                raise StoreError(f"layer tar {tar_path}: digest mismatch: expected "
                                 f"{expected_digest}, got {sha.hexdigest()}")
            unpacked = self._mkdir(os.path.join(stage, "rootfs"))
            safe_extract(tar_tmp, unpacked, max_bytes=max_bytes, max_members=2**63, layer=True)
            self._install_layer(expected_digest, tar_tmp, unpacked)
        return expected_digest

    def _remove_layer(self, layer_id: str) -> int:
        base = os.path.join(self.layers_dir, layer_id)
        freed = _tree_bytes(base + ".tar") + _tree_bytes(base)
        try:
            if os.path.exists(base + ".tar"):
                os.unlink(base + ".tar")  # uncommit first
            fsync_dir(self.layers_dir)
        except OSError as exc:
            raise StoreError(f"cannot remove layer {layer_id}: {exc.strerror or exc}") from exc
        safe_rmtree(base)
        return freed

    def _gc_layers(self, referenced: set[str]) -> dict:
        """Remove layers not in ``referenced`` (nor pinned), half-installed
        layer dirs and staging leftovers not in use by this object.

        Returns:
            dict with keys ``removed_layers`` (list of ids), ``freed_bytes``.
        """
        referenced = set(referenced) | self._pinned
        removed, freed = [], 0
        for entry in sorted(os.listdir(self.layers_dir)):
            layer_id = entry[:-4] if entry.endswith(".tar") else None
            if layer_id and len(layer_id) == 64 and layer_id not in referenced:
                freed += self._remove_layer(layer_id)
                removed.append(layer_id)
        for path in self._orphans():
            freed += _tree_bytes(path)
            safe_rmtree(path)
        return {"removed_layers": removed, "freed_bytes": freed}

    def _orphans(self) -> list[str]:
        out = [os.path.join(self.tmp_dir, e) for e in os.listdir(self.tmp_dir)]
        out = [p for p in out if p not in self._busy]
        for entry in os.listdir(self.layers_dir):
            path = os.path.join(self.layers_dir, entry)
            if not entry.endswith(".tar") and not os.path.exists(path + ".tar"):
                out.append(path)
        return out
