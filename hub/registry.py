"""The hub's image registry: manifests and content-addressed layer tars.

Layers move in chunks (``CHUNK_BYTES``, well under msgpack's 100 MiB limit),
each layer checked against its sha256 before it is renamed into place, so a
partial or corrupt transfer leaves nothing.  The registry stores what agents
push and serves what they pull; it never unpacks a layer.

Layout: ROOT/layers/<sha256>.tar, ROOT/manifests/<id>.json, ROOT/tmp/.

Several hubs (an etcd store): the registry's index is shared (``index``,
the EtcdStore: each manifest with its layers' sizes and the host it was
pushed from), and it alone says which images exist; each hub keeps the
layers it has on its own disk.  A hub asked for an image whose layers it
lacks fetches them from that host (``missing``/``receive``, see
hub/imagemethods.py), verified like any push.

Every file read, write, hash, fsync, listing and removal runs in gevent's
thread pool (layers are up to 8 GiB): the hub's loop keeps answering calls
and heartbeats meanwhile, and errors raised there reach the caller unchanged.
The chunk source (``fetch``) is called on the loop, since it is an RPC.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable

import gevent

from dcctl import errors, files
from dcctl.wire import refs
from dcctl.wire.refs import manifest_id

CHUNK_BYTES = 4 << 20
MAX_LAYER_BYTES = 8 << 30


def _blocking(fn, *args):
    """Run blocking file or hash work in gevent's thread pool; its exception
    is raised here."""
    return gevent.get_hub().threadpool.apply(fn, args)


def digest(value: object, what: str = "layer digest") -> str:
    """``value`` if it is a digest (dcctl.wire.refs.digest).  Raises: InvalidArgument."""
    return refs.digest(value, what)


class Registry:
    """Images pushed to the hub (see module doc)."""

    def __init__(self, root: str, index=None):
        self.root = root
        #: the shared index (registry_put, registry_manifests, registry_entry,
        #: registry_remove: hub/store/etcd.py), or None for a hub of its own
        self.index = index
        for d in ("layers", "manifests", "tmp"):
            os.makedirs(os.path.join(root, d), mode=0o700, exist_ok=True)
        for leftover in os.listdir(os.path.join(root, "tmp")):
            os.unlink(os.path.join(root, "tmp", leftover))

    def _layer(self, d: str) -> str:
        return os.path.join(self.root, "layers", digest(d) + ".tar")

    def ls(self) -> list[dict]:
        """Manifests, by name then creation time (the shared index's, when
        there is one)."""
        if self.index is not None:
            return sorted(self.index.registry_manifests(), key=lambda m: (m["name"], m.get("created") or 0))
        return _blocking(self._ls)

    def entry(self, image_id: str) -> dict | None:
        """{manifest, sizes {digest: bytes}, source (the host it was pushed
        from, or None)} from the shared index, or None (no index, or no
        such image)."""
        return self.index.registry_entry(image_id) if self.index is not None else None

    def missing(self, manifest: dict) -> list[str]:
        """The manifest's layers not on this hub's disk."""
        return [d for d in manifest.get("layers", []) if not os.path.exists(self._layer(d))]

    def _ls(self) -> list[dict]:
        out = []
        for entry in os.listdir(os.path.join(self.root, "manifests")):
            with open(os.path.join(self.root, "manifests", entry)) as f:
                out.append(json.load(f))
        return sorted(out, key=lambda m: (m["name"], m.get("created") or 0))

    def resolve(self, ref: str) -> dict:
        """``name`` (``name:latest``: an untagged image is "latest"; never
        the newest of another tag), ``name:tag`` (the newest of that name
        and tag), ``name@idprefix`` (that id, whatever its tag) or
        ``name:tag@idprefix``.

        Raises: InvalidArgument, ImageNotFound (the hint lists the name's
        other tags), AmbiguousImageRef."""
        parsed = refs.parse_ref(ref).lookup()
        every = self.ls()
        found = [m for m in every if parsed.matches(m)]
        if not found:
            tags = sorted({m.get("tag") or refs.DEFAULT_TAG for m in every if m["name"] == parsed.name})
            hint = (f"{parsed.name} has the tags {', '.join(tags)}: name one ({parsed.name}:TAG)" if tags else
                    "push it first: dcctl image_push HOST REF, or dcctl image_push FILE NAME")
            raise errors.ImageNotFound(f"no image {str(parsed)!r} in the hub's registry", hint=hint)
        if parsed.prefix and len(found) > 1:
            raise errors.AmbiguousImageRef(
                f"{ref!r} matches {len(found)} images: " + ", ".join(m["id"][:12] for m in found))
        return found[-1]

    def get(self, image_id: str) -> dict:
        """The manifest with this full id. Raises: ImageNotFound."""
        if self.index is not None:
            found = self.entry(digest(image_id, "image id"))
            if found is None:
                raise errors.ImageNotFound(f"no image {image_id[:12]} in the hub's registry")
            return found["manifest"]
        path = os.path.join(self.root, "manifests", digest(image_id, "image id") + ".json")

        def load() -> dict:
            with open(path) as f:
                return json.load(f)

        try:
            return _blocking(load)
        except FileNotFoundError as exc:
            raise errors.ImageNotFound(f"no image {image_id[:12]} in the hub's registry") from exc

    def layer_size(self, d: str) -> int:
        """A stored layer's size in bytes. Raises: InvalidArgument,
        ImageNotFound."""
        try:
            return os.path.getsize(self._layer(d))
        except FileNotFoundError as exc:
            raise errors.ImageNotFound(f"no layer {d[:12]} in the hub's registry") from exc

    def read_layer(self, d: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes (capped at CHUNK_BYTES) of a layer tar from
        ``offset``; b"" at or past the end (any offset up to
        dcctl.files.MAX_OFFSET, read by dcctl.files.read_range).

        Raises: InvalidArgument (bad digest; offset or length not an
        integer from 0 to MAX_OFFSET), ImageNotFound."""
        files.check_range(offset, length)
        path = self._layer(d)
        try:
            return _blocking(files.read_range, path, offset, length, CHUNK_BYTES)
        except FileNotFoundError as exc:
            raise errors.ImageNotFound(f"no layer {d[:12]} in the hub's registry") from exc

    def receive(self, manifest: dict, sizes: dict[str, int],
                fetch: Callable[[str, int, int], bytes], source: str | None = None, *,
                expect: refs.ImageRef | None) -> dict:
        """Store ``manifest`` and fetch its missing layers with
        ``fetch(digest, offset, length)``; each is verified before it is
        kept. ``sizes`` gives each layer's size in bytes; ``source`` is the
        host they came from (kept in the shared index, for other hubs).

        ``expect`` (required, keyword) is what the caller asked for: the
        manifest must match it (``ImageRef.matches``: name, tag, id prefix)
        before anything is fetched or written, since a manifest a host
        answers is the host's word and a host's key may be a hostile
        client's (it could otherwise replace ``busybox`` fleet-wide under
        any push, upload or build).  None only for a manifest that did not
        come from a host (the shared index's, hub/imagemethods.py).

        Returns: the manifest. Raises: InvalidArgument (bad manifest or
        sizes), InvalidImage (the manifest is not ``expect``: nothing
        kept), StoreError (digest mismatch, I/O error; nothing kept).
        """
        if not isinstance(manifest, dict) or manifest_id(manifest) != manifest.get("id"):
            raise errors.InvalidArgument("manifest id does not match its content")
        refs.image_name(manifest.get("name"))
        if expect is not None and not expect.matches(manifest):
            got = f"{manifest['name']}:{manifest.get('tag') or refs.DEFAULT_TAG}@{manifest['id'][:12]}"
            raise errors.InvalidImage(f"{source or 'the source'} answered the image {got}, not {expect}: "
                                      "nothing kept in the hub's registry",
                                      hint="a host must return the image it was asked for; check that host")
        for d in manifest.get("layers", []):
            if os.path.exists(self._layer(d)):
                continue
            size = sizes.get(d)
            if not isinstance(size, int) or not 0 <= size <= MAX_LAYER_BYTES:
                raise errors.InvalidArgument(f"bad size for layer {d[:12]}")
            self._fetch_layer(d, size, fetch)
        try:
            _blocking(self._write_manifest, manifest)
        except OSError as exc:
            raise errors.StoreError(f"cannot store manifest {manifest['id'][:12]}: {exc}") from exc
        if self.index is not None:
            known = self.entry(manifest["id"])
            if known is None or (source is not None and known.get("source") is None):
                self.index.registry_put(manifest, {d: sizes[d] for d in manifest.get("layers", []) if d in sizes},
                                        source)
        return manifest

    def _write_manifest(self, manifest: dict) -> None:
        path = os.path.join(self.root, "manifests", manifest["id"] + ".json")
        tmp = os.path.join(self.root, "tmp", manifest["id"] + ".json")
        with open(tmp, "w") as f:
            json.dump(manifest, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def _fetch_layer(self, d: str, size: int, fetch: Callable[[str, int, int], bytes]) -> None:
        tmp = os.path.join(self.root, "tmp", d + ".part")
        sha = hashlib.sha256()

        def keep(out, chunk: bytes) -> None:  # in the pool: hash and write one chunk
            sha.update(chunk)
            out.write(chunk)

        def finish(out) -> None:  # in the pool
            out.flush()
            os.fsync(out.fileno())
            out.close()
            if sha.hexdigest() != d:
                raise errors.StoreError(f"layer {d[:12]}: digest mismatch (got {sha.hexdigest()[:12]})")
            os.replace(tmp, self._layer(d))

        try:
            out = _blocking(open, tmp, "wb")
            try:
                offset = 0
                while offset < size:
                    chunk = fetch(d, offset, min(CHUNK_BYTES, size - offset))
                    if not chunk:
                        raise errors.StoreError(f"layer {d[:12]} ended at {offset} of {size} bytes")
                    if len(chunk) > size - offset:
                        raise errors.StoreError(f"layer {d[:12]}: source sent more than its {size} bytes")
                    _blocking(keep, out, chunk)
                    offset += len(chunk)
                _blocking(finish, out)
            finally:
                out.close()
        except OSError as exc:
            raise errors.StoreError(f"cannot store layer {d[:12]}: {exc}") from exc
        finally:
            _blocking(_unlink_if_there, tmp)

    def remove(self, ref: str) -> dict:
        """Remove an image, the layers no other manifest uses and its build
        log (REGISTRY/builds/<id>.log).

        Returns: the removed manifest. Raises: as resolve(); StoreError
        (I/O error)."""
        m = self.resolve(ref)
        if self.index is not None:  # other hubs keep their copies of its layers on disk
            self.index.registry_remove(m["id"])
        try:
            _blocking(_unlink_if_there, os.path.join(self.root, "manifests", m["id"] + ".json"))
            used = {d for other in self.ls() for d in other["layers"]}
            for d in m["layers"]:
                if d not in used:
                    _blocking(_unlink_if_there, self._layer(d))
            # the log of the build that made it (hub/buildmethods.py), if any
            _blocking(_unlink_if_there, os.path.join(self.root, "builds", m["id"] + ".log"))
        except OSError as exc:
            raise errors.StoreError(f"cannot remove image {m['id'][:12]}: {exc}") from exc
        return m

    def disk_usage_bytes(self) -> int:
        """Bytes of all stored layers."""
        return _blocking(lambda: sum(e.stat().st_size for e in os.scandir(os.path.join(self.root, "layers"))))


def _unlink_if_there(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["CHUNK_BYTES", "Registry", "manifest_id", "digest"]
