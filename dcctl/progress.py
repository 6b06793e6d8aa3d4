"""Long work reported as a stream of progress items, for the agents' and
the hub's ``@expose(stream=True)`` methods (agents/progress.py,
hub/progressmethods.py).  The work runs in its own greenlet and goes on to
its end if the reader leaves, as a shielded call does."""
from __future__ import annotations

import time

import gevent

__all__ = ["PROGRESS_EVERY_SECONDS", "progress_stream"]

PROGRESS_EVERY_SECONDS = 0.2


def progress_stream(work, total_hint: int = 0, step: str | None = None):
    """Run ``work(report)`` in a greenlet (``report(done, total)`` as it
    goes, or ``report(done, total, step)`` for work in several steps, each
    counting its own bytes; ``report`` may be called from a thread of the
    pool) and yield {phase "running", bytes_done, bytes_total,
    rate_bytes_s, elapsed_s, step (when reported)} at most every
    PROGRESS_EVERY_SECONDS, then {phase "done", ..., result}.  ``step``
    names the first step (the items before ``work`` reports one).  The rate
    is of the current step since it began.  Raises: whatever ``work``
    raises."""
    started = time.monotonic()
    state = {"done": 0, "total": total_hint, "step": step, "since": started}

    def report(done: int, total: int, step: str | None = None) -> None:
        if step != state["step"]:
            state["step"], state["since"] = step, time.monotonic()
        state["done"], state["total"] = done, total

    def run():
        try:
            return True, work(report)
        except Exception as exc:  # raised to the reader below
            return False, exc

    task = gevent.spawn(run)

    def item(phase: str) -> dict:
        now = time.monotonic()
        elapsed, in_step = max(now - started, 1e-6), max(now - state["since"], 1e-6)
        out = {"phase": phase, "bytes_done": state["done"], "bytes_total": state["total"],
               "rate_bytes_s": round(state["done"] / in_step), "elapsed_s": round(elapsed, 3)}
        if state["step"] is not None:
            out["step"] = state["step"]
        return out

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
