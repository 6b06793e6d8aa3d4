"""Shared unit-test fixtures."""
import os
import time

import pytest

#: How long a count above the test's start may take to come back down before
#: it is a leak: the suite's process also runs threads it did not start in
#: this test (a ZeroMQ context's I/O thread retrying a connection, a gevent
#: pool worker), whose descriptors come and go within milliseconds.  A leaked
#: descriptor stays, so the check is as strict for a leak as it was.
SETTLE_SECONDS = 1.0


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_leak():
    """Fail a test that leaks file descriptors."""
    before = _open_fds()
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while _open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _open_fds() <= before, "test leaked file descriptors"
