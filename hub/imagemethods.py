"""The hub's image registry methods: listing, pushing from a host, and what
agents pull (manifests and layer chunks); the storage is hub/registry.py.
"""
from __future__ import annotations

from dcctl import errors
from dcctl.wire import expose, refs
from hub.placement import PULL_TIMEOUT_SECONDS


class ImageMethods:
    """Image registry methods of HubService (a mixin); they use the hub's
    ``store``, ``registry`` and ``agents``."""

    @expose(access="read")
    def image_ls(self) -> list:
        """Images in the hub's registry.

        Returns: [{name, tag ("latest" if none), id (64 hex), created (Unix
        s), size_bytes, layers (digests, bottom first), exposed_ports
        [{proto, port}]}].
        """
        return [{**{k: m.get(k) for k in ("name", "id", "created", "size_bytes", "layers", "exposed_ports")},
                 "tag": m.get("tag") or "latest"} for m in self.registry.ls()]

    @expose(shielded=True)
    def image_push(self, host: str, ref: str) -> dict:
        """Copy an image from a host's store into the hub's registry (layers
        in chunks, each checked against its digest; nothing partial is kept).
        (``dcctl image_push FILE NAME[:TAG]`` with a local file uploads it
        instead: see image_upload_begin.)

        Args: host: a fleet host's name; ref: ``name[:tag][@idprefix]``
        in that host's store.
        Returns: the manifest.
        Raises: InvalidArgument (bad ref), NoSuchHost, ImageNotFound,
        AmbiguousImageRef, InvalidImage (the host answered an image ``ref``
        does not name, as resolve reads it: another name, tag or id;
        nothing kept), StoreError (digest mismatch, I/O), Unreachable,
        CallTimeout.
        """
        wanted = refs.parse_ref(ref).lookup()
        self.store.host(host)
        info = self.agents.call(host, "image_manifest", ref)
        return self.registry.receive(
            info["manifest"], info["layer_sizes"],
            lambda d, off, n: self.agents.call(host, "image_layer_read", d, off, n,
                                               timeout_s=PULL_TIMEOUT_SECONDS), source=host, expect=wanted)

    @expose(access="pull", redact_env=False)
    def image_manifest(self, ref: str) -> dict:
        """For agents pulling: an image of the registry.

        Returns: {manifest, layer_sizes {digest: size in bytes}}.
        Raises: InvalidArgument (bad ref), ImageNotFound, AmbiguousImageRef.
        """
        m = self.registry.resolve(ref)
        if self.registry.missing(m):
            self._fetch_layers(m)
        return {"manifest": m, "layer_sizes": {d: self.registry.layer_size(d) for d in m["layers"]}}

    def _fetch_layers(self, m: dict) -> None:
        """Several hubs: bring the layers of ``m`` this hub lacks from the
        host the image was pushed from (the shared index names it).
        Raises: ImageNotFound (no host to fetch from), the host's errors."""
        entry = self.registry.entry(m["id"]) or {}
        host = entry.get("source")
        if not host:
            raise errors.ImageNotFound(f"image {m['id'][:12]}'s layers are not on this hub and no host holds them",
                                       hint="push it again through this hub")
        self.registry.receive(m, entry.get("sizes") or {},
                              lambda d, off, n: self.agents.call(host, "image_layer_read", d, off, n,
                                                                 timeout_s=PULL_TIMEOUT_SECONDS), source=host,
                              expect=None)  # the shared index's manifest (its id checked), not the host's

    @expose(access="pull")
    def image_layer_read(self, digest: str, offset: int, length: int) -> bytes:
        """For agents pulling: up to ``length`` bytes (<= 4 MiB) of a layer
        tar from ``offset`` (bytes); b"" past the end.

        Returns: bytes.
        Raises: InvalidArgument (bad digest; offset or length not an
        integer from 0 to 2**63-1), ImageNotFound (no such layer).
        """
        return self.registry.read_layer(digest, offset, length)
