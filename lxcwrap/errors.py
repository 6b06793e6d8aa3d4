"""Errors raised by lxcwrap; the agent maps them onto wire errors.

    LxcError                        root: .argv, .returncode, .stderr, .hint
     +-- LxcNotFound                the container is not defined in that lxcpath
     +-- LxcAlreadyRunning          start of a running container
     +-- LxcNotRunning              attach/stop of a stopped container
     +-- LxcStartFailed             lxc-start could not bring the container up
     +-- LxcExecNotFound            lxc-attach could not exec the command
     +-- LxcTimeout                 an LXC tool ran past its timeout
     +-- LxcToolMissing             LXC is not installed
"""
from __future__ import annotations

from typing import Sequence


class LxcError(Exception):
    """Root of lxcwrap's errors; keeps the tool's argv, exit status and stderr."""

    def __init__(self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None,
                 stderr: str = "", hint: str | None = None):
        super().__init__(message)
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.hint = hint


class LxcNotFound(LxcError):
    pass


class LxcAlreadyRunning(LxcError):
    pass


class LxcNotRunning(LxcError):
    pass


class LxcStartFailed(LxcError):
    pass


class LxcExecNotFound(LxcError):
    pass


class LxcTimeout(LxcError):
    pass


class LxcToolMissing(LxcError):
    pass
