"""The hub's ``build`` method: a Dockerfile build on one idle host, streamed.

``dcctl build DIR -t NAME`` packs the context (``.dockerignore`` honoured)
into a tar, uploads it in chunks with image_upload_begin/chunk (hub/uploads:
named and checked by its sha256), then calls ``build(upload_id, name,
options)``.  The hub takes one idle host from its worker queue (the same
FIFO as ``queue``: a host runs one queued job at a time), relays that
host's ``image_build_dockerfile`` stream to the caller as it comes
(hub/streams.relay), and once the host has committed the image copies it
into the registry: only the layers the registry lacks move, which for a
base already in the registry is the build's one new layer.  The context
upload is removed whatever happens (a hub killed mid-build removes it at its
next start: REGISTRY/builds/contexts/ names the contexts of builds under
way); the build log of a successful build is kept at
REGISTRY/builds/<image id>.log.  A caller that goes away (or a hub that
dies) stops the build on its host within a few heartbeats: the relayed
stream is closed or lost, and the agent kills and removes the build
container.
"""
from __future__ import annotations

import logging
import os

import gevent

from dcctl import errors, validate
from dcctl.wire import expose, refs
from hub.streams import relay

log = logging.getLogger(__name__)

__all__ = ["BuildMethods", "BUILD_OPTIONS"]

#: How long a build waits for an idle host, seconds (default).
IDLE_WAIT_SECONDS = 60.0
LAYER_READ_TIMEOUT_SECONDS = 600.0
#: The build log kept per image, bytes (its last part).
LOG_KEEP_BYTES = 4 << 20
BUILD_OPTIONS = {"tag": "image tag", "build_args": "{NAME: value}", "timeout_s": "build timeout, seconds",
                 "dockerfile": "path of the Dockerfile in the context", "host": "build on this host",
                 "wait_s": "seconds to wait for an idle host"}


class BuildMethods:
    """Build methods of HubService (a mixin); they use the hub's ``store``,
    ``agents``, ``workers``, ``registry`` and ``uploads``."""

    @expose(stream=True)
    def build(self, upload_id: str, name: str, options: dict | None = None):
        """Build an image from a Dockerfile on one idle host (see the module
        doc); a stream.

        Args:
            upload_id: the sha256 of the context tar, uploaded with
                image_upload_begin/image_upload_chunk.
            name: the image name (``NAME``; a tag goes in options).
            options: {tag, build_args {NAME: value}, timeout_s (the build's,
                default 1800), dockerfile (default "Dockerfile"), host (build
                there instead of on the longest-idle host), wait_s (for an
                idle host, default 60)}.

        Returns: a stream: {"log": line} items as the build runs, then
        {"result": {image ("name@id12"), id, name, tag, layer, layer_bytes
        (the new layer's tar), size_bytes (the image's), pushed_bytes
        (what moved into the registry), host, duration_s}}.

        Raises: InvalidArgument (bad option, or an upload not complete: before
        any work), NoSuchUpload, StoreError (the upload's sha256 is wrong: dropped),
        NoCapacity (no idle host within wait_s), NoSuchHost, InvalidImage
        (the host answered an image of another name or tag than ``name``
        and the tag option: nothing kept in the registry), and the
        agent's image_build_dockerfile errors (InvalidImage naming the
        Dockerfile line, BuildFailed with the log's tail, ImageNotFound for
        the FROM image, StoreError); Unreachable when the host is lost
        mid-build.  The upload is removed in every case; a failed build
        leaves no container, layer or image.
        """
        opts = validate.options(options, BUILD_OPTIONS, "build")
        refs.image_name(name)
        if opts.get("tag") is not None:
            refs.image_tag(opts["tag"])
        wait = validate.number(opts.pop("wait_s", IDLE_WAIT_SECONDS), "wait_s", minimum=0.1, maximum=86400)
        pinned = opts.pop("host", None)
        if pinned is not None:
            self.store.host(pinned)  # NoSuchHost
        self.uploads.complete(upload_id)  # size and sha256 checked (NoSuchUpload...), before a host is taken
        self._mark_context(upload_id)  # a hub that dies mid-build removes it at its next start
        if self.endpoints:  # several hubs: the agent fetches the context from this one, which holds it
            opts["upload_hubs"] = list(self.endpoints)
        return self._build(upload_id, name, opts, pinned, wait)

    @expose(access="read")
    def build_log(self, ref: str, max_bytes: int = 1 << 20) -> dict:
        """The kept log of the build that made an image of the registry.

        Args: ref: ``name``, ``name:tag`` or ``name[:tag]@idprefix``;
        max_bytes: at most this many bytes from the log's end (1 to 4 MiB).
        Returns: {id, image ("name@id12"), log (text), truncated (bool)}.
        Raises: InvalidArgument, ImageNotFound (no such image, or it was not
        built here: imported or pushed images have no build log),
        AmbiguousImageRef.
        """
        limit = validate.number(max_bytes, "max_bytes", minimum=1, maximum=LOG_KEEP_BYTES, integer=True)
        m = self.registry.resolve(ref)
        path = os.path.join(self.registry.root, "builds", f"{m['id']}.log")

        def tail() -> tuple[bytes, bool]:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - limit))
                return f.read(), size > limit

        try:
            data, cut = gevent.get_hub().threadpool.apply(tail)
        except FileNotFoundError:
            raise errors.ImageNotFound(f"image {m['name']}@{m['id'][:12]} has no build log "
                                       "(it was imported or pushed, not built)") from None
        return {"id": m["id"], "image": f"{m['name']}@{m['id'][:12]}", "log": data.decode("utf-8", "replace"),
                "truncated": cut}

    def _build(self, upload_id: str, name: str, opts: dict, pinned: str | None, wait_s: float):
        host = None
        try:
            if pinned is None:
                host = self.workers.acquire(wait_s)
            lines: list[str] = []
            kept = 0
            result = None
            for item in relay(self.agents, host or pinned, "image_build_dockerfile", upload_id, name, opts):
                if isinstance(item, dict) and "result" in item:
                    result = item["result"]
                    continue
                if isinstance(item, dict) and isinstance(item.get("log"), str):
                    lines.append(item["log"])
                    kept += len(item["log"]) + 1
                    while kept > LOG_KEEP_BYTES and lines:
                        kept -= len(lines.pop(0)) + 1
                yield item
            if result is None:
                raise errors.InternalError(f"the build on {host or pinned} ended without a result")
            wanted = refs.ImageRef(name, opts.get("tag") or refs.DEFAULT_TAG)
            yield {"result": self._push_built(host or pinned, result, lines, wanted)}
        finally:
            if host is not None:
                self.workers.release(host)
            self.uploads.remove(upload_id)
            try:
                os.unlink(os.path.join(self._contexts_dir(), upload_id))
            except FileNotFoundError:
                pass

    def _contexts_dir(self) -> str:
        return os.path.join(self.registry.root, "builds", "contexts")

    def _mark_context(self, upload_id: str) -> None:
        os.makedirs(self._contexts_dir(), mode=0o700, exist_ok=True)
        with open(os.path.join(self._contexts_dir(), upload_id), "w"):
            pass

    def recover_builds(self) -> list[str]:
        """At the hub's start: remove the context uploads of builds an
        earlier run of this hub did not finish (it died mid-build; their
        hosts stopped those builds once they lost its stream).  Uploads
        that no build took (an image_push that may resume) are left.

        Returns: the upload ids removed. Raises: nothing (a file that cannot
        be removed is logged)."""
        removed = []
        try:
            names = sorted(os.listdir(self._contexts_dir()))
        except FileNotFoundError:
            return removed
        for upload_id in names:
            try:
                self.uploads.remove(upload_id)
                os.unlink(os.path.join(self._contexts_dir(), upload_id))
                removed.append(upload_id)
            except (OSError, errors.DcError) as exc:
                log.warning("stale build context %s not removed: %s", upload_id[:12], exc)
        if removed:
            log.info("removed %d build context(s) left by an earlier run of the hub", len(removed))
        return removed

    def _push_built(self, host: str, result: dict, lines: list[str], wanted) -> dict:
        """Copy the built image from ``host`` into the registry (its missing
        layers only) and keep the log.  ``wanted`` (a refs.ImageRef) is the
        build's name and tag: the manifest the host answers must match it
        (Registry.receive's ``expect``; InvalidImage, nothing kept).
        Returns the result with pushed_bytes and host, its name and tag
        the stored manifest's."""
        ref = f"{result['name']}@{result['id']}"
        info = self.agents.call(host, "image_manifest", ref)
        manifest = info["manifest"]
        moved = 0
        for d in manifest["layers"]:
            try:
                self.registry.layer_size(d)
            except errors.ImageNotFound:
                moved += int(info["layer_sizes"].get(d, 0))
        self.registry.receive(manifest, info["layer_sizes"],
                              lambda d, off, n: self.agents.call(host, "image_layer_read", d, off, n,
                                                                 timeout_s=LAYER_READ_TIMEOUT_SECONDS),
                              expect=wanted)
        logs = os.path.join(self.registry.root, "builds")

        def keep() -> None:
            os.makedirs(logs, mode=0o700, exist_ok=True)
            tmp = os.path.join(logs, f".{manifest['id']}.log")
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            os.replace(tmp, os.path.join(logs, f"{manifest['id']}.log"))

        try:
            gevent.get_hub().threadpool.apply(keep)
        except OSError as exc:  # best effort: the image is in the registry
            log.warning("build log of %s not kept: %s", ref, exc)
        log.info("built %s on %s: %d bytes into the registry", ref[:80], host, moved)
        return {"image": f"{manifest['name']}@{manifest['id'][:12]}", "id": manifest["id"], "name": manifest["name"], "tag": result["tag"],
                "layer": result["layer"], "layer_bytes": result["layer_bytes"],
                "size_bytes": result["size_bytes"], "pushed_bytes": moved, "host": host,
                "duration_s": result["duration_s"]}
