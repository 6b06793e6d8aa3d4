"""Long work that reports progress as a stream (a mixin of AgentService):
``image_pull_progress``.  The work runs in its own greenlet and goes on to
its end if the reader leaves (as the non-stream method, which is shielded);
the stream reports at most every PROGRESS_EVERY_SECONDS, then the result."""
from __future__ import annotations

import time

import gevent

from dcctl import errors
from dcctl.wire import expose, validate_endpoint

PROGRESS_EVERY_SECONDS = 0.2


def progress_stream(work, total_hint: int = 0):
    """Run ``work(report)`` in a greenlet (``report(done, total)`` as it
    goes) and yield {phase "running", bytes_done, bytes_total, rate_bytes_s,
    elapsed_s} at most every PROGRESS_EVERY_SECONDS, then {phase "done",
    ..., result}.  Raises: whatever ``work`` raises."""
    started = time.monotonic()
    state = {"done": 0, "total": total_hint}

    def report(done: int, total: int) -> None:
        state["done"], state["total"] = done, total

    def run():
        try:
            return True, work(report)
        except Exception as exc:  # raised to the reader below
            return False, exc

    task = gevent.spawn(run)

    def item(phase: str) -> dict:
        elapsed = max(time.monotonic() - started, 1e-6)
        return {"phase": phase, "bytes_done": state["done"], "bytes_total": state["total"],
                "rate_bytes_s": round(state["done"] / elapsed), "elapsed_s": round(elapsed, 3)}

    yield item("running")
    last = 0.0
    while not task.ready():
        gevent.wait([task], timeout=PROGRESS_EVERY_SECONDS)
        if time.monotonic() - last >= PROGRESS_EVERY_SECONDS and not task.ready():
            last = time.monotonic()
            yield item("running")
    ok, result = task.get()
    if not ok:
        raise result
    if not state["total"]:
        state["total"] = state["done"]
    yield {**item("done"), "result": result}


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
