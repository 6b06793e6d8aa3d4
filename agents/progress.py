"""Long work that reports progress as a stream (a mixin of AgentService):
``image_pull_progress``, ``image_import_progress``,
``image_import_upload_progress``.  The work runs in its own greenlet and goes on to
its end if the reader leaves (as the non-stream method, which is shielded);
the stream reports at most every PROGRESS_EVERY_SECONDS, then the result."""
from __future__ import annotations

from dcctl import errors
from dcctl.progress import progress_stream
from dcctl.wire import expose, validate_endpoint

class ProgressMethods:
    """Stream forms of the agent's long work (uses ``self.puller``, ``self.m``, ``self.hub_keys``)."""

    @expose(stream=True)
    def image_pull_progress(self, ref: str, source: str | None = None) -> dict:
        """image_pull as a stream of its progress (image_pull stays as it was).

        Returns (a stream): {phase "running", bytes_done, bytes_total (of the
        layers this pull moves; 0 when the image is here already),
        rate_bytes_s, elapsed_s} about every 0.2 s, then {phase "done", ...,
        result (image_pull's answer: {manifest, pulled, bytes})}.
        Raises: as image_pull (InvalidArgument, ImageNotFound, StoreError,
        Unreachable, CallTimeout); the pull finishes even if the reader leaves.
        """
        source = source or self.m.config.hub
        if not source:
            raise errors.InvalidArgument("no source given and this agent has no hub")
        validate_endpoint(source)
        keys = self.hub_keys if source == self.m.config.hub else None
        return progress_stream(lambda report: self.puller.pull(ref, source, keys, progress=report))

    @expose(stream=True)
    def image_import_progress(self, path: str, name: str, options: dict | None = None) -> dict:
        """image_import as a stream of its progress (image_import stays as
        it was); the arguments are checked before any work, as there.

        Returns (a stream): {phase "running", step ("unpack": bytes of the
        archive as stored, or of an OCI image's layer blobs, read so far;
        "pack": a rootfs tarball's layer being written), bytes_done,
        bytes_total, rate_bytes_s (of the step), elapsed_s} about every
        0.2 s, then {phase "done", ..., result (the manifest, as
        image_import returns it)}.
        Raises: as image_import (InvalidArgument at the first item,
        InvalidImage, AmbiguousImageRef, ImageNotFound, StoreError); the
        import finishes even if the reader leaves.
        """
        work = self.prepare_import(path, name, options)
        return progress_stream(lambda report: work(lambda step, done, total: report(done, total, step)),
                               step="unpack")

    @expose(stream=True)
    def image_import_upload_progress(self, upload_id: str, name: str, options: dict | None = None) -> dict:
        """image_import_upload (called by the hub) as a stream of its
        progress: step "copy" (the upload copied from the hub), then as
        image_import_progress.

        Returns (a stream): as image_import_progress; the last item's result
        is the manifest.
        Raises: as image_import_upload.
        """
        work = self.import_upload_work(upload_id, name, options)
        return progress_stream(lambda report: work(lambda step, done, total: report(done, total, step)),
                               step="copy")
