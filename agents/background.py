"""A loop the agent runs in its own greenlet (the hub link, the supervisor)."""
from __future__ import annotations

import gevent


class BackgroundLoop:
    """Subclasses implement ``_loop``; ``start`` runs it in a greenlet and
    ``stop`` kills it."""

    _task: gevent.Greenlet | None = None

    def start(self) -> None:
        self._task = gevent.spawn(self._loop)

    def stop(self) -> None:
        if self._task is not None:
            self._task.kill()

    def _loop(self) -> None:
        raise NotImplementedError
