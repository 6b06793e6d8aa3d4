"""The one seam through which dcfleet starts host tools.

``run(argv, timeout_s)`` starts a process from an argv list (never a shell
string) cooperatively (``lxcwrap.spawn``: posix_spawn, a libev child watcher
and non-blocking pipes), so a slow tool never freezes the ZeroRPC heartbeats
of the service that called it.  A tool that outlives its timeout, or whose
caller goes away, is killed with its whole process group.  Tests can hand
any caller another ``Runner`` (for instance one that prefixes
``ip netns exec NS`` or replays recorded output).

Errors::

    ToolError                    (root of this module's errors)
     +-- ToolTimeout             the tool ran past timeout_s and was killed
     +-- ToolNotFound            argv[0] is not installed
     +-- ToolFailed              non-zero exit while check=True
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
from typing import Callable, Mapping, Sequence

from lxcwrap import spawn

DEFAULT_TIMEOUT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Completed:
    """What a finished tool left: argv, exit status, captured output (bytes)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def stderr_text(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()

    @property
    def stdout_text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


class ToolError(Exception):
    """Root of the errors raised while running a host tool."""

    def __init__(self, message: str, argv: Sequence[str] = (), completed: Completed | None = None):
        super().__init__(message)
        self.argv = tuple(argv)
        self.completed = completed


class ToolTimeout(ToolError):
    """The tool ran longer than its timeout and was killed (SIGKILL)."""


class ToolNotFound(ToolError):
    """The tool's executable is not installed or not on PATH."""


class ToolFailed(ToolError):
    """The tool exited non-zero and the caller asked for check=True."""


Runner = Callable[..., Completed]


def run(
    argv: Sequence[str],
    timeout_s: float = DEFAULT_TIMEOUT_SECONDS,
    *,
    check: bool = False,
    input_bytes: bytes | None = None,
    env: Mapping[str, str] | None = None,
) -> Completed:
    """Run ``argv`` to completion, cooperatively, and capture its output.

    Args:
        argv: the command as a list of strings; argv[0] is looked up on PATH.
        timeout_s: seconds before the process is killed with SIGKILL.
        check: raise ToolFailed on a non-zero exit status.
        input_bytes: bytes written to the tool's standard input, if any.
        env: the complete environment for the tool (default: a minimal one
            with PATH and LANG=C, so tool messages are parseable).

    Returns:
        Completed(argv, returncode, stdout, stderr).

    Raises:
        ToolNotFound, ToolTimeout, ToolFailed (with ``.completed``).
    """
    argv = [str(a) for a in argv]
    if env is None:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"}
    try:
        child = spawn.Child(argv, env, stdin="pipe" if input_bytes is not None else "null", setsid=True)
    except FileNotFoundError as exc:
        raise ToolNotFound(f"{argv[0]}: not installed", argv) from exc
    out = spawn.communicate(child, timeout_s, input_bytes=input_bytes)
    done = Completed(tuple(argv), out["returncode"], out["stdout"], out["stderr"])
    if out["timed_out"]:
        raise ToolTimeout(f"{argv[0]} ran past {timeout_s:g} s and was killed", argv, done)
    if check and done.returncode != 0:
        raise ToolFailed(f"{argv[0]} exited {done.returncode}: {done.stderr_text[-500:]}", argv, done)
    return done


def hollow_run(argv: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_SECONDS, **kw) -> Completed:
    """A Runner that starts nothing and reports success with no output: the
    runtime of a "hollow" agent (like Kubernetes' kubemark hollow nodes),
    which serves the real RPC surface for fan-out benchmarks without
    touching LXC, links or netfilter."""
    return Completed(tuple(str(a) for a in argv), 0, b"", b"")


def blocking_runner(prefix: Sequence[str] = ()) -> Runner:
    """A Runner for plain scripts that run no gevent loop (``ops/fleet``,
    ``bench/``): a blocking ``subprocess.run`` of ``[*prefix, *argv]`` (say
    ``prefix=["nsenter", "--net=/run/netns/NS", "--"]``).  In a gevent
    server use ``run``: its child watcher would reap this one's children.
    ``check`` and ``env`` mean what they mean for ``run``."""

    def runner(argv: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_SECONDS, *, check: bool = False,
               input_bytes: bytes | None = None, env: Mapping[str, str] | None = None) -> Completed:
        argv = [str(a) for a in argv]
        full = [*prefix, *argv]
        if env is None:
            env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"}
        try:
            out = subprocess.run(full, input=input_bytes, capture_output=True, timeout=timeout_s, env=env,
                                 stdin=None if input_bytes is not None else subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise ToolNotFound(f"{full[0]}: not installed", argv) from exc
        except subprocess.TimeoutExpired as exc:
            raise ToolTimeout(f"{full[0]} ran past {timeout_s:g} s and was killed", argv) from exc
        done = Completed(tuple(argv), out.returncode, out.stdout, out.stderr)
        if check and done.returncode != 0:
            raise ToolFailed(f"{argv[0]} exited {done.returncode}: {done.stderr_text[-500:]}", argv, done)
        return done

    return runner


def netns_runner(namespace: str, base: Runner = run) -> Runner:
    """A Runner that runs every tool inside network namespace ``namespace``
    (``ip netns exec``); used by tests and the local fleet."""

    def runner(argv: Sequence[str], timeout_s: float = DEFAULT_TIMEOUT_SECONDS, **kw) -> Completed:
        return base(["ip", "netns", "exec", namespace, *argv], timeout_s, **kw)

    return runner
