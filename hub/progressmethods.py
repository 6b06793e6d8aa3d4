"""The hub's long work with progress as a stream (a mixin of HubService):
``image_pull`` on a host, relayed from the agent's image_pull_progress
(hub/streams.relay)."""
from __future__ import annotations

from dcctl import errors
from dcctl.wire import expose
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
