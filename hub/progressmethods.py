"""The hub's long work with progress as a stream (a mixin of HubService):
``image_pull`` on a host, relayed from the agent's image_pull_progress
(hub/streams.relay), ``image_push_progress`` (image_push as a stream) and
``image_upload_finish_progress`` (image_upload_finish as a stream: the
agent's image_import_upload_progress relayed, then the registry copy)."""
from __future__ import annotations

import os

from dcctl import errors, validate
from dcctl.progress import progress_stream
from dcctl.wire import expose, refs
from hub.placement import PULL_TIMEOUT_SECONDS
from hub.streams import relay
from hub.uploads import _CONTENT_ERRORS, IMPORT_TIMEOUT_SECONDS, upload_name


def _running(items, host: str):
    """Hand on a step's items as "running" ones (with the host); returns
    the step's result (its "done" item's)."""
    for item in items:
        if item.get("phase") == "done":
            return item.get("result")
        yield {**item, "phase": "running", "host": host}
    raise errors.Unreachable(f"host {host}: the stream ended without a result")


class ProgressMethods:
    """Progress streams of HubService; they use the hub's ``store`` and ``agents``."""

    @expose(stream=True)
    def image_pull(self, ref: str, host: str) -> dict:
        """Pull an image from the hub's registry onto ``host``, reporting
        progress as a stream (``dcctl image_pull REF --host HOST`` shows a
        progress bar; ``--json`` one JSON object per line).

        Returns (a stream): {phase "running", bytes_done, bytes_total,
        rate_bytes_s, elapsed_s, host} about every 0.2 s, then {phase
        "done", ..., result {manifest, pulled, bytes}}.
        Raises: NoSuchHost, Unreachable (the host is lost or dies during the
        pull), InvalidArgument, ImageNotFound, StoreError (the host's).
        """
        if not isinstance(ref, str) or not ref:
            raise errors.InvalidArgument("ref must be an image name like 'busybox' or 'busybox@1a2b'")
        self.store.host(host)  # NoSuchHost before any work
        return relay(self.agents, host, "image_pull_progress", ref, None, annotate=lambda item: {**item, "host": host})

    @expose(stream=True)
    def image_push_progress(self, host: str, ref: str) -> dict:
        """image_push (a host's image into the hub's registry) as a stream of
        its progress; image_push stays as it was.

        Returns (a stream): {phase "running", bytes_done, bytes_total (of the
        layers the registry lacks; 0 when it has them all), rate_bytes_s,
        elapsed_s, host} about every 0.2 s, then {phase "done", ..., result
        (the manifest)}.
        Raises: as image_push (InvalidArgument, NoSuchHost, ImageNotFound,
        AmbiguousImageRef, InvalidImage: the host answered another image
        than ``ref`` names, StoreError, Unreachable, CallTimeout).
        """
        wanted = refs.parse_ref(ref).lookup()
        self.store.host(host)
        info = self.agents.call(host, "image_manifest", ref)
        manifest, sizes = info["manifest"], info["layer_sizes"]
        total = sum(sizes.get(d, 0) for d in self.registry.missing(manifest))

        def work(report):
            moved = [0]

            def fetch(digest: str, offset: int, length: int) -> bytes:
                chunk = self.agents.call(host, "image_layer_read", digest, offset, length,
                                         timeout_s=PULL_TIMEOUT_SECONDS)
                moved[0] += len(chunk)
                report(moved[0], total)
                return chunk

            return self.registry.receive(manifest, sizes, fetch, source=host, expect=wanted)

        return ({**item, "host": host} for item in progress_stream(work, total))

    @expose(stream=True)
    def image_upload_finish_progress(self, upload_id: str, name: str, options: dict | None = None) -> dict:
        """image_upload_finish (dcctl image_push FILE NAME) as a stream of
        its progress; image_upload_finish stays as it was.

        Args: as image_upload_finish (upload_id: the file's sha256; name:
        NAME[:TAG]; options {host, select, format}).

        Returns (a stream): {phase "running", step, bytes_done, bytes_total,
        rate_bytes_s (of the step), elapsed_s, host} about every 0.2 s, the
        steps being "verify" (the upload's sha256 on the hub), "copy" (the
        host copies the upload), "unpack" and "pack" (the host imports it:
        the agent's image_import_upload_progress), "registry" (the layers
        copied into the hub's registry); then {phase "done", ..., result
        {manifest, host, bytes (archive size)}}.
        Raises: as image_upload_finish (NoSuchUpload, InvalidArgument,
        StoreError, NoCapacity, Unreachable, the agent's image_import
        errors: InvalidImage... drop the upload; InvalidImage when the host
        answers an image of another name or tag: nothing kept, the upload
        stays).
        """
        opts = validate.options(options, {"host": "importing host", "select": "tag in a layout",
                                          "format": "image format"}, "image_upload_finish_progress")
        upload_name(name)  # InvalidArgument before any work
        host = self.import_host(opts.pop("host", None))
        self.store.host(host)  # NoSuchHost before any work
        return self._upload_finish_items(upload_id, name, opts, host)

    def _upload_finish_items(self, upload_id: str, name: str, opts: dict, host: str):
        wanted = upload_name(name)
        path = yield from _running(progress_stream(lambda report: self.uploads.complete(upload_id),
                                                   step="verify"), host)
        size = os.path.getsize(path)
        if self.endpoints:  # several hubs: the agent fetches from this one, which holds the upload
            opts = {**opts, "upload_hubs": list(self.endpoints)}
        try:
            manifest = yield from _running(
                relay(self.agents, host, "image_import_upload_progress", upload_id, name, opts), host)
        except _CONTENT_ERRORS:
            self.uploads.remove(upload_id)
            raise
        info = self.agents.call(host, "image_manifest", f"{manifest['name']}@{manifest['id']}")
        layer_sizes = info["layer_sizes"]
        total = sum(layer_sizes.get(d, 0) for d in self.registry.missing(info["manifest"]))

        def copy(report):
            moved = [0]

            def fetch(digest: str, offset: int, length: int) -> bytes:
                chunk = self.agents.call(host, "image_layer_read", digest, offset, length,
                                         timeout_s=IMPORT_TIMEOUT_SECONDS)
                moved[0] += len(chunk)
                report(moved[0], total, "registry")
                return chunk

            return self.registry.receive(info["manifest"], layer_sizes, fetch, source=host, expect=wanted)

        for item in progress_stream(copy, total, step="registry"):
            if item["phase"] == "done":
                stored = item.pop("result")
                self.uploads.remove(upload_id)
                yield {**item, "host": host, "result": {"manifest": stored, "host": host, "bytes": size}}
            else:
                yield {**item, "host": host}
