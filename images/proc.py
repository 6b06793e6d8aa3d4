"""A blocking process runner that works from any thread, gevent or not.

The agent runs image work in a thread pool.  gevent's subprocess cannot be
used there (lxcwrap.run raises "child watchers are only available on the
default loop" in a pool thread), and once gevent's child watchers are in use
its SIGCHLD handler may reap any child, so ``os.waitpid`` can lose the exit
status.  ``blocking_run`` therefore:

* starts ``/bin/sh -c '"$@"; echo $? > status'`` with the C library's
  posix_spawn in a new process group: if gevent has patched ``os`` (its
  posix_spawn would register a child watcher, which fails off the main
  loop), the original function is taken from the already-loaded
  ``gevent.monkey`` -- images never imports gevent itself;
* sends stdout and stderr to a file, never a pipe (no reader to schedule);
* polls ``waitpid(WNOHANG)``, treating ECHILD as "already reaped by someone
  else", and reads the exit status from the status file the shell wrote;
* on timeout kills the whole process group with SIGKILL.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Mapping, Sequence

from images.errors import ImageError

__all__ = ["Ran", "blocking_run"]

_POLL_SECONDS = 0.2
_MAX_OUTPUT_BYTES = 1024**2
_WRAPPER = 'status=$1; shift; "$@"; echo $? > "$status"'


@dataclasses.dataclass(frozen=True)
class Ran:
    """A finished process: argv, exit status (-9 if killed), and the last
    MiB of its output (stdout and stderr interleaved, in ``stdout``)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes = b""


def _posix_spawn():
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("os"):
        return monkey.get_original("os", "posix_spawn")
    return os.posix_spawn


def _reaped(pid: int) -> bool:
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != 0
    except ChildProcessError:
        return True  # an event loop's SIGCHLD handler reaped it first


def blocking_run(argv: Sequence[str], timeout_s: float, *,
                 env: Mapping[str, str] | None = None) -> Ran:
    """Run ``argv`` to completion, blocking only the calling thread.

    Args:
        argv: the command; argv[0] is looked up on PATH.
        timeout_s: seconds before the process group is killed.
        env: the complete environment (default: PATH and LANG=C).

    Returns:
        Ran(argv, returncode, stdout=combined output tail, stderr=b"").

    Raises:
        ImageError: argv[0] is not installed, or it ran past timeout_s (the
            process group was killed).
    """
    argv = [str(a) for a in argv]
    exe = shutil.which(argv[0])
    if exe is None:
        raise ImageError(f"{argv[0]}: not installed")
    if env is None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"}
    with tempfile.TemporaryDirectory(prefix="dcfleet-run-") as work:
        status_path = os.path.join(work, "status")
        with open(os.path.join(work, "output"), "w+b") as out:
            actions = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                       (os.POSIX_SPAWN_DUP2, out.fileno(), 1),
                       (os.POSIX_SPAWN_DUP2, out.fileno(), 2)]
            pid = _posix_spawn()("/bin/sh", ["sh", "-c", _WRAPPER, "sh", status_path, exe,
                                             *argv[1:]],
                                 dict(env), file_actions=actions, setpgroup=0)
            deadline = time.monotonic() + timeout_s
            while not _reaped(pid):
                if time.monotonic() > deadline:
                    try:
                        os.killpg(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    while not _reaped(pid):
                        time.sleep(_POLL_SECONDS)
                    raise ImageError(f"{argv[0]} ran past {timeout_s:g} s and was killed")
                time.sleep(_POLL_SECONDS)
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - _MAX_OUTPUT_BYTES))
            output = out.read()
        try:
            with open(status_path) as f:
                returncode = int(f.read().strip())
        except (OSError, ValueError):
            returncode = -9  # the shell itself was killed before writing it
    return Ran(tuple(argv), returncode, output)
