"""Put the test process past select(2)'s FD_SETSIZE (1024 file
descriptors), where ``select.select`` (and so gevent's select and pyzmq's
green Poller) fail with ``ValueError: filedescriptor out of range``: a hub
of 1,000 hosts holds 2,000 descriptors, an agent one per log pipe."""
from __future__ import annotations

import contextlib
import os
import resource
import select

FD_SETSIZE = 1024


@contextlib.contextmanager
def fds_past_select_limit(past: int = FD_SETSIZE + 64):
    """Hold descriptors (dups of /dev/null) until the lowest free one is
    above ``past``, so every descriptor opened inside the block is; the
    soft RLIMIT_NOFILE is raised for it if needed.  All are closed and
    the limit put back on exit, even when the block fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = past + 1024
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))
    held = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while held[-1] <= past:
            held.append(os.dup(held[0]))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def readable(fd: int, timeout_s: float) -> bool:
    """True when ``fd`` is readable within ``timeout_s``: poll(2), which
    takes any descriptor (select(2) refuses one past FD_SETSIZE)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))
