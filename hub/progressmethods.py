"""The hub's long work with progress as a stream (a mixin of HubService):
``image_pull`` on a host, relayed from the agent's image_pull_progress
(hub/streams.relay), and ``image_push_progress`` (image_push as a stream)."""
from __future__ import annotations

from dcctl import errors
from dcctl.progress import progress_stream
from dcctl.wire import expose
from hub.placement import PULL_TIMEOUT_SECONDS
from hub.streams import relay


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
        Raises: as image_push (NoSuchHost, ImageNotFound, AmbiguousImageRef,
        StoreError, Unreachable, CallTimeout).
        """
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

            return self.registry.receive(manifest, sizes, fetch, source=host)

        return ({**item, "host": host} for item in progress_stream(work, total))
