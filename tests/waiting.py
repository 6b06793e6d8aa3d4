"""One polling helper for tests: wait for a condition, with a deadline.

Tests wait for conditions, never for fixed times: a loaded machine makes
everything slower, so a bound on elapsed time fails for the wrong reason,
while a deadline on a condition only fails when the condition never holds.
"""
from __future__ import annotations

import time
from typing import Callable, TypeVar

import gevent

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.1,
             ignore: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``predicate`` every ``interval_s`` until it returns a true value,
    and return that value.

    Args:
        predicate: no arguments; a true result ends the wait.
        timeout_s: seconds before giving up.
        what: the condition in words, for the failure message.
        interval_s: seconds between tries (gevent-friendly sleep).
        ignore: exception types that count as "not yet" (e.g. a server
            still starting).

    Raises: AssertionError naming ``what`` (with the last result or error)
    when the deadline passes first.
    """
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except ignore as exc:
            last = f"{type(exc).__name__}: {exc}"
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} (last: {last!r})")
        gevent.sleep(interval_s)
