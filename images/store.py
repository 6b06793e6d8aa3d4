"""The local image store: content-addressed layers and manifests on disk.

Layout under ``root`` (e.g. ``<agent state dir>/images``)::

    layers/<sha256>.tar    the layer as a canonical uncompressed tar; its
                           sha256 is the layer id; its presence commits the layer
    layers/<sha256>/       the unpacked layer, used as an overlayfs lower dir
    manifests/<id>.json    one file per image (see images.manifest)
    tmp/                   staging; emptied when a store is constructed

Every write is staged in tmp/, fsynced and renamed into place.  A layer's
directory is renamed in first and its tar last, so a crash leaves at worst a
directory without a tar, which construction and gc() remove.

The store is plain blocking code with no locks: the agent runs it in a thread
pool and serializes mutations (imports, commits, remove, gc) itself.
"""
from __future__ import annotations

import json
import os
import stat
import time
from typing import Any, Callable, Iterable, Mapping

from dcctl.wire.refs import DEFAULT_TAG
from images.errors import (AmbiguousImageRef, ImageExists, ImageInUse, ImageNotFound,
                           InvalidImage, StoreError)
from images.fsutil import O_DIR_NOFOLLOW, atomic_write, fsync_dir, open_dir_beneath, split_path
from images.layers import LayerStore
from images.manifest import (MANIFEST_FIELDS, OPTIONAL_FIELDS, manifest_id, normalize_fields,
                             parse_full_ref, ref_matches, short_ref, validate_digest, validate_name)
from images.tarsafe import DEFAULT_MAX_BYTES, DEFAULT_MAX_MEMBERS, OPAQUE_XATTR, safe_extract

__all__ = ["ImageStore"]


def _is_whiteout(st: os.stat_result) -> bool:
    """A 0/0 character device: overlayfs's mark of a deleted path."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _lookup_in_layer(layer_dir: str, parts: tuple[str, ...], path: str):
    """(lstat of the path in this layer or None, whether the lower layers
    are hidden for it: a directory on the way is opaque or whited out)."""
    fd = os.open(layer_dir, O_DIR_NOFOLLOW)
    hidden = False
    try:
        for i, part in enumerate(parts[:-1]):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return None, hidden
            if _is_whiteout(st):
                return None, True
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
                raise InvalidImage(f"path {path!r} in {layer_dir}: "
                                   f"'{'/'.join(parts[:i + 1])}' is a symlink or not a directory")
            nfd = os.open(part, O_DIR_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
            hidden = hidden or _is_opaque(fd)
        try:
            return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False), hidden
        except FileNotFoundError:
            return None, hidden
    finally:
        os.close(fd)


def _is_opaque(dir_fd: int) -> bool:
    try:
        return os.getxattr(dir_fd, OPAQUE_XATTR) == b"y"
    except OSError:
        return False


class ImageStore(LayerStore):
    """Layers and manifests under one root directory (see the module doc).

    ``ImageStore(root)`` opens (creating if needed) the store at ``root`` and
    removes staging leftovers and half-installed layers of a crash; it raises
    StoreError if the directories cannot be created or cleaned.
    """

    # ------------------------------------------------------------ reading

    def _manifest_path(self, image_id: str) -> str:
        return os.path.join(self.manifests_dir, f"{image_id}.json")

    def _read_manifest(self, path: str) -> dict:
        try:
            with open(path, "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read manifest {path}: {exc}") from exc
        if not isinstance(manifest, dict) or manifest.get("id") != os.path.basename(path)[:-5]:
            raise StoreError(f"corrupt manifest {path}: id does not match the file name")
        return manifest

    def ls(self) -> list[dict]:
        """All image manifests.

        Returns:
            a list of manifest dicts (keys: see images.manifest), sorted by
            name, then created (oldest first).

        Raises:
            StoreError: a manifest cannot be read.
        """
        out = []
        for entry in os.listdir(self.manifests_dir):
            if entry.endswith(".json") and len(entry) == 69:
                try:
                    out.append(self._read_manifest(os.path.join(self.manifests_dir, entry)))
                except FileNotFoundError:
                    continue  # removed while we listed
        return sorted(out, key=lambda m: (m["name"], m["created"], m["id"]))

    def get(self, image_id: str) -> dict:
        """The manifest of the image with this full id (64 hex digits).

        Raises:
            InvalidImage: not a 64-hex id.  ImageNotFound: no such image.
            StoreError: the manifest cannot be read.
        """
        validate_digest(image_id, "image id")
        try:
            return self._read_manifest(self._manifest_path(image_id))
        except FileNotFoundError:
            raise ImageNotFound(f"image id {image_id} not found") from None

    def resolve(self, ref: str) -> dict:
        """The manifest an image ref names.

        Args:
            ref: ``name`` (``name:latest``: an untagged image is
                "latest"; never the newest of another tag), ``name:tag``
                (the newest of that name and tag), ``name@idprefix`` (that
                id, whatever its tag; an id prefix of at least 4 lowercase
                hex digits) or ``name:tag@idprefix``.

        Returns:
            the manifest dict.

        Raises:
            InvalidImage: bad ref syntax.  ImageNotFound: nothing matches.
            AmbiguousImageRef: the prefix matches several images (their refs
                are in the message and in ``.candidates``).
        """
        name, tag, prefix = parse_full_ref(ref)
        if tag is None and not prefix:
            tag = DEFAULT_TAG  # a bare name is name:latest
        every = self.ls()
        found = [m for m in every if ref_matches(m, name, tag, prefix)]
        if not found:
            tags = sorted({m.get("tag") or DEFAULT_TAG for m in every if m["name"] == name})
            raise ImageNotFound(f"image {name}:{tag}{'@' + prefix if prefix else ''} not found"
                                + (f" ({name} has the tags {', '.join(tags)})" if tags else ""))
        if prefix and len(found) > 1:
            refs = [short_ref(m) for m in found]
            raise AmbiguousImageRef(f"image ref {ref!r} is ambiguous: matches {', '.join(refs)}",
                                    refs)
        return max(found, key=lambda m: (m["created"], m["id"]))

    def layer_dirs(self, manifest: Mapping[str, Any]) -> list[str]:
        """Absolute unpacked layer dirs of an image, TOPMOST FIRST (the
        overlayfs ``lowerdir=`` order).

        Raises:
            InvalidImage: the manifest's layer list is malformed.
            StoreError: a layer is missing from the store.
        """
        layers = manifest.get("layers")
        if not isinstance(layers, list) or not layers:
            raise InvalidImage(f"manifest {manifest.get('id')!r}: no layer list")
        out = []
        for layer_id in reversed(layers):
            if not self.has_layer(layer_id):
                raise StoreError(f"layer {layer_id} of image {manifest.get('name')!r} "
                                 "is missing from the store")
            out.append(os.path.join(self.layers_dir, layer_id))
        return out

    def find_file(self, manifest: Mapping[str, Any], path: str) -> tuple[str, os.stat_result] | None:
        """Find a file of the image's rootfs in its layers, topmost first,
        never following a symlink on the way.

        Args:
            path: absolute path inside the rootfs, e.g. "/etc/hostname".

        Returns:
            (layer dir holding it, its lstat) or None if no layer has it.

        Raises:
            InvalidImage: bad path, or a directory on the way is a symlink.
        """
        parts = split_path(path, what=f"path {path!r}", absolute=True)
        if not parts:
            raise InvalidImage(f"path {path!r}: not a file")
        for layer_dir in self.layer_dirs(manifest):
            found, hidden = _lookup_in_layer(layer_dir, parts, path)
            if found is not None:
                if _is_whiteout(found):
                    return None  # deleted by this layer
                return layer_dir, found
            if hidden:
                return None  # an opaque dir or a whiteout on the way hides the lower layers
        return None

    # ------------------------------------------------------------ layers
    # ------------------------------------------------------------ images

    def _layers_size(self, layers: list[str]) -> int:
        try:
            return sum(os.path.getsize(os.path.join(self.layers_dir, f"{layer}.tar"))
                       for layer in layers)
        except OSError as exc:
            raise StoreError(f"cannot stat layer tars: {exc.strerror or exc}") from exc

    def _write_manifest(self, manifest: dict) -> None:
        data = json.dumps(manifest, sort_keys=True, indent=1).encode("ascii") + b"\n"
        atomic_write(self._manifest_path(manifest["id"]), data, tmp_dir=self.tmp_dir)

    def commit(self, name: str, layers: Iterable[str], **fields: Any) -> dict:
        """Record an image made of layers already in the store.

        Args:
            name: image name (^[a-z0-9][a-z0-9._-]{0,63}$).
            layers: layer ids, bottom first.
            **fields: exposed_ports (list of {"proto", "port"}), env (dict),
                command (list of str), stop_signal (default "SIGPWR"), init
                (default "/sbin/init"), templates (absolute paths, each a
                regular file in the layers), parent (image id or None),
                created (Unix seconds, default now), tag (optional),
                config (optional, see images.manifest).

        Returns:
            the new manifest dict.

        Raises:
            InvalidImage: bad name or field, template missing from the layers.
            ImageNotFound: a layer is not in the store.
            StoreError: I/O failure; no manifest is left.
        """
        validate_name(name)
        norm = normalize_fields(fields)
        layers = [validate_digest(layer) for layer in layers]
        if not layers:
            raise InvalidImage(f"image {name!r}: needs at least one layer")
        for layer_id in layers:
            if not self.has_layer(layer_id):
                raise ImageNotFound(f"layer {layer_id} not found (image {name!r})")
        manifest = {"name": name, "created": norm.pop("created", time.time()), "layers": layers,
                    "size_bytes": self._layers_size(layers), **norm}
        for path in manifest["templates"]:
            found = self.find_file(manifest, path)
            if found is None or not stat.S_ISREG(found[1].st_mode):
                raise InvalidImage(f"image {name!r}: template {path} is not a regular file "
                                   "in its layers")
        manifest["id"] = manifest_id(manifest)
        self._write_manifest(manifest)
        return manifest

    def import_manifest(self, manifest: Mapping[str, Any]) -> dict:
        """Store a manifest made elsewhere (its layers already imported),
        keeping its id.

        Returns:
            the stored manifest dict.

        Raises:
            InvalidImage: bad or unknown field, or an id that does not match
                the content.  ImageExists: that id is already stored.
            ImageNotFound: a layer is missing.  StoreError: I/O failure.
        """
        if (not isinstance(manifest, Mapping) or not set(MANIFEST_FIELDS) <= set(manifest)
                or set(manifest) - set(MANIFEST_FIELDS) - set(OPTIONAL_FIELDS)):
            raise InvalidImage(f"manifest must have exactly the keys {', '.join(MANIFEST_FIELDS)} "
                               f"(and optionally {', '.join(OPTIONAL_FIELDS)})")
        fields = {k: manifest[k] for k in ("exposed_ports", "env", "command", "stop_signal",
                                           "init", "templates", "parent", "created",
                                           *OPTIONAL_FIELDS) if k in manifest}
        norm = normalize_fields(fields)
        layers = [validate_digest(layer) for layer in manifest["layers"]]
        out = {"name": validate_name(manifest["name"]), "layers": layers,
               "size_bytes": manifest["size_bytes"], **norm}
        out["id"] = manifest_id(out)
        if out["id"] != manifest["id"]:
            raise InvalidImage(f"manifest {manifest['id']!r}: id does not match its content")
        if os.path.exists(self._manifest_path(out["id"])):
            raise ImageExists(f"image {short_ref(out)} already exists")
        for layer_id in layers:
            if not self.has_layer(layer_id):
                raise ImageNotFound(f"layer {layer_id} of image {short_ref(out)} not found")
        if out["size_bytes"] != self._layers_size(layers):
            raise InvalidImage(f"manifest {short_ref(out)}: size_bytes does not match its layers")
        self._write_manifest(out)
        return out

    def import_tar(self, path: str, name: str, *, exposed_ports=(), env=None, command=None,
                   templates=(), stop_signal: str = "SIGPWR", init: str = "/sbin/init",
                   tag: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                   max_members: int = DEFAULT_MAX_MEMBERS,
                   progress: Callable[[str, int, int], None] | None = None) -> dict:
        """Import a rootfs tarball (plain, gzip, xz or bzip2) as a one-layer
        image.  Members are re-packed into the canonical layer tar, so the
        same content always gives the same layer id.

        Args:
            path: the tarball.
            name: image name.
            exposed_ports, env, command, templates, stop_signal, init, tag:
                manifest fields (see commit()).
            max_bytes: cap on the decompressed size, in bytes (bomb cap).
            max_members: cap on the number of archive members.
            progress: called as ``progress(step, done_bytes, total_bytes)``:
                step "unpack" after each member (bytes of the tarball as
                stored read so far, of its size), then "pack" once
                (the whole tarball read; the layer being written).

        Returns:
            the new manifest dict.

        Raises:
            InvalidImage: bad name/field, or hostile/corrupt archive (the
                message names the member).
            StoreError: I/O failure (disk full...).  In every error case the
                store is left as it was.
        """
        validate_name(name)
        fields = dict(exposed_ports=exposed_ports, env=env, command=command,
                      templates=templates, stop_signal=stop_signal, init=init, tag=tag)
        normalize_fields(fields)  # refuse bad fields before the slow part
        with self.staging("import") as stage:
            rootfs = self._mkdir(os.path.join(stage, "rootfs"))
            unpacked = None
            if progress is not None:
                size = os.path.getsize(path)
                unpacked = lambda _members, done: progress("unpack", done, size)  # noqa: E731
            safe_extract(path, rootfs, max_bytes=max_bytes, max_members=max_members, progress=unpacked)
            if progress is not None:
                progress("pack", size, size)
            return self.commit_dir(name, rootfs, consume=True, **fields)

    def commit_dir(self, name: str, src_dir: str, *, consume: bool = False, **fields: Any) -> dict:
        """Make a one-layer image from a directory tree: add_layer_from_dir()
        then commit(), removing the new layer again if the commit fails.

        Args:
            name: image name.
            src_dir: the rootfs tree.
            consume: move src_dir into the store if it lies under root/tmp.
            **fields: manifest fields, as for commit().

        Returns:
            the new manifest dict.

        Raises:
            as add_layer_from_dir() and commit().
        """
        validate_name(name)
        normalize_fields(fields)
        layer_id, new = self._add_layer(src_dir, consume)
        self._pinned.add(layer_id)
        try:
            return self.commit(name, [layer_id], **fields)
        except BaseException:
            if new and not any(layer_id in m["layers"] for m in self.ls()):
                self._pinned.discard(layer_id)
                self._remove_layer(layer_id)
            raise
        finally:
            self._pinned.discard(layer_id)

    def remove(self, ref: str, in_use_by: list[str],
               offload: Callable[..., Any] | None = None) -> dict:
        """Remove an image, then the layers no other image references.

        Args:
            ref: ``name`` or ``name@idprefix``.
            in_use_by: names of the containers using this image (the agent
                knows them); a non-empty list refuses the removal.
            offload: ``offload(fn, *args) -> fn(*args)`` runs each layer
                tree's removal, e.g. in a thread pool so that an event loop
                keeps running meanwhile (the manifest is gone before, so
                no new user can find the image); default: a direct call.

        Returns:
            dict with keys ``id``, ``name``, ``removed_layers`` (list of layer
            ids) and ``freed_bytes`` (int).

        Raises:
            InvalidImage, ImageNotFound, AmbiguousImageRef: as resolve().
            ImageInUse: in_use_by is non-empty (names them).
            StoreError: I/O failure.
        """
        manifest = self.resolve(ref)
        if in_use_by:
            users = [str(c) for c in in_use_by]
            raise ImageInUse(f"image {short_ref(manifest)} is in use by container(s) "
                             f"{', '.join(users)}", users)
        try:
            os.unlink(self._manifest_path(manifest["id"]))
            fsync_dir(self.manifests_dir)
        except OSError as exc:
            raise StoreError(f"cannot remove image {short_ref(manifest)}: {exc.strerror}") from exc
        referenced = {layer for m in self.ls() for layer in m["layers"]} | self._pinned
        removed, freed = [], 0
        run = offload or (lambda fn, *args: fn(*args))
        for layer_id in dict.fromkeys(manifest["layers"]):
            if layer_id not in referenced:
                freed += run(self._remove_layer, layer_id)
                removed.append(layer_id)
        return {"id": manifest["id"], "name": manifest["name"], "removed_layers": removed,
                "freed_bytes": freed}

    def gc(self) -> dict:
        """Remove unreferenced layers, half-installed layer dirs and staging
        leftovers (staging dirs in use by this store object are kept).

        Returns:
            dict with keys ``removed_layers`` (list of layer ids) and
            ``freed_bytes`` (int).

        Raises:
            StoreError: I/O failure.
        """
        referenced = {layer for m in self.ls() for layer in m["layers"]}
        return self._gc_layers(referenced)
