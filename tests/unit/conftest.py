"""Shared unit-test fixtures."""
import os
import time

import pytest

#: How long a descriptor new since the test's start may take to go before
#: it is a leak (one closed by a finalizer, a child's pipe being drained).
#: A leaked descriptor stays, so the check is as strict for a leak.
SETTLE_SECONDS = 1.0


def _open_fds() -> set[tuple[int, str]]:
    """The process's descriptors of the kinds these tests can leak: files
    (a target that is a path) and pipes.  Sockets, eventfds and epoll fds
    ("socket:[..]", "anon_inode:[..]") are left out: the suite's process
    runs threads no test starts (a ZeroMQ context's I/O thread retrying a
    connection, a gevent pool worker's loop) whose descriptors come and go
    on their own; two full runs failed on one such descriptor."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile, or the listing's own descriptor
            continue
        if target.startswith("/") or target.startswith("pipe:"):
            out.add((int(name), target))
    return out


@pytest.fixture
def no_fd_leak():
    """Fail a test that leaks file descriptors (files or pipes)."""
    before = _open_fds()
    yield
    deadline = time.monotonic() + SETTLE_SECONDS
    while _open_fds() - before and time.monotonic() < deadline:
        time.sleep(0.02)
    leaked = _open_fds() - before
    assert not leaked, f"test leaked file descriptors: {sorted(leaked)}"
