"""Cooperative child processes for gevent servers: ``posix_spawn`` (vfork
speed, about 1 ms, where gevent's own subprocess forks the whole Python
process, about 5 ms and more as the process grows) plus a libev child
watcher for the exit status and non-blocking pipes read by greenlets, so a
running tool never stalls ZeroRPC heartbeats.

Exit statuses come from gevent's SIGCHLD handling (``loop.child``), which
coexists with gevent.subprocess; only the main thread's hub may spawn.

Seams: tools that run to completion go through ``lxcwrap.run.run`` (the
``Runner`` seam).  Tools that must stay a live process while we talk to them
(``lxc-attach`` for exec with capped output, or on a terminal for enter)
go through the second seam, ``Spawner``: any callable with ``Child``'s
signature that returns a ``Child``.  ``Child`` itself is the default; a test
hands ``lxcwrap.lxc.Lxc`` another one the same way it hands it a Runner
(for instance one that starts a recorded-output script instead of the tool).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import signal
from typing import Callable, Mapping, Sequence

import gevent
import gevent.os
import gevent.socket
from gevent.event import AsyncResult


class SpawnTimeout(Exception):
    """The child ran past its timeout (it has been killed)."""


def _close_inheritable(keep: set[int]) -> list[tuple]:
    actions = []
    for entry in os.listdir("/proc/self/fd"):
        fd = int(entry)
        if fd > 2 and fd not in keep:
            try:
                if os.get_inheritable(fd):
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            except OSError:
                pass
    return actions


class Child:
    """A spawned process.

    Args:
        argv: program and arguments (argv[0] looked up on PATH).
        env: the complete environment.
        stdin: "pipe", "null", or an open fd to use as 0, 1 and 2 (a pty slave).
        ctty: path of a terminal to open as fds 0-2 in a new session (it
            becomes the controlling terminal, as for an interactive shell).
        setsid: start a new session (so a kill reaches the whole group).
        executable: the file to execute instead of argv[0] looked up on PATH
            (argv[0] is still the child's argv[0]): a ``sealed_exe`` path.

    Raises: FileNotFoundError when argv[0] (or ``executable``) does not exist.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], *, stdin: str = "null",
                 capture: bool = True, setsid: bool = False, ctty: str | None = None,
                 executable: str | None = None):
        hub = gevent.get_hub()
        hub.loop.install_sigchld()
        ours: list[int] = []
        actions: list[tuple] = []
        self.stdin = self.stdout = self.stderr = None
        if ctty is not None:
            actions += [(os.POSIX_SPAWN_OPEN, 0, ctty, os.O_RDWR, 0),
                        (os.POSIX_SPAWN_DUP2, 0, 1), (os.POSIX_SPAWN_DUP2, 0, 2)]
            setsid = True
        else:
            if stdin == "pipe":
                r, w = os.pipe2(os.O_CLOEXEC)
                actions.append((os.POSIX_SPAWN_DUP2, r, 0))
                ours += [r, w]
                self.stdin = w
            else:
                actions.append((os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0))
            if capture:
                out_r, out_w = os.pipe2(os.O_CLOEXEC)
                err_r, err_w = os.pipe2(os.O_CLOEXEC)
                actions += [(os.POSIX_SPAWN_DUP2, out_w, 1), (os.POSIX_SPAWN_DUP2, err_w, 2)]
                ours += [out_r, out_w, err_r, err_w]
                self.stdout, self.stderr = out_r, err_r
            else:
                actions += [(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                            (os.POSIX_SPAWN_DUP2, 1, 2)]
        actions += _close_inheritable(set(ours))
        try:
            if executable is not None:
                self.pid = os.posix_spawn(executable, list(argv), dict(env), file_actions=actions, setsid=setsid)
            else:
                self.pid = os.posix_spawnp(argv[0], list(argv), dict(env), file_actions=actions, setsid=setsid)
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        self._status = AsyncResult()
        self._watcher = hub.loop.child(self.pid, False)
        self._watcher.start(self._exited)
        for fd in ours:  # the child's ends
            if fd not in (self.stdin, self.stdout, self.stderr):
                os.close(fd)
        for fd in (self.stdin, self.stdout, self.stderr):
            if fd is not None:
                gevent.os.make_nonblocking(fd)
        self.setsid = setsid
        self.returncode: int | None = None

    def _exited(self) -> None:
        self._watcher.stop()
        self._status.set(self._watcher.rstatus)

    def poll(self) -> int | None:
        if self.returncode is None and self._status.ready():
            self.returncode = os.waitstatus_to_exitcode(self._status.get())
        return self.returncode

    def wait(self, timeout_s: float | None = None) -> int:
        """The exit code (negative: killed by that signal).

        Raises: SpawnTimeout (the child is NOT killed here)."""
        try:
            status = self._status.get(timeout=timeout_s)
        except gevent.Timeout as exc:
            raise SpawnTimeout(f"pid {self.pid} still running after {timeout_s} s") from exc
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child (its whole group when it leads a session)."""
        if self.poll() is not None:
            return
        try:
            if self.setsid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def terminate_then_kill(self, grace_s: float = 2.0) -> int:
        """SIGTERM, then SIGKILL after ``grace_s``; returns the exit code."""
        self.kill(signal.SIGTERM)
        try:
            return self.wait(grace_s)
        except SpawnTimeout:
            self.kill(signal.SIGKILL)
            return self.wait()

    def close(self) -> None:
        for name in ("stdin", "stdout", "stderr"):
            fd = getattr(self, name)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, None)


#: The seals liblxc's tools look for on /proc/self/exe (is_memfd in LXC's
#: rexec.c): with exactly these they skip their CVE-2019-5736 re-exec.
SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
#: tool -> (its file's (st_dev, st_ino, st_size, st_mtime_ns), the sealed copy's fd, the copy's (st_dev, st_ino))
_sealed: dict[str, tuple[tuple, int, tuple]] = {}


def _still_ours(fd: int, ident: tuple) -> bool:
    """Whether ``fd`` is still the sealed copy (not closed and its number
    reused by another file)."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == ident


def sealed_exe(tool: str) -> str | None:
    """A sealed in-memory copy of the program ``tool`` (a name on PATH or a
    path), made once per process and kept: returns ``/proc/self/fd/N`` to
    give ``Child`` as ``executable``, or None when it cannot be made (the
    caller then runs the tool itself).

    Why: ``lxc-attach`` (like runc, CVE-2019-5736) copies itself into a
    sealed memfd and re-executes from it at every start, so that a process
    in the container can never open the attaching program's
    ``/proc/PID/exe`` for writing and replace the host's binary.  It skips
    that copy when its /proc/self/exe is already a memfd sealed with
    ``SEALS``: this copy, made once, keeps the guard and saves an exec
    (and the dynamic linking of liblxc) per call.  The fd is close-on-exec:
    ``posix_spawn`` opens ``/proc/self/fd/N`` in the child before exec
    closes it, so no child inherits it.  When the file on disk changes (an
    upgrade), a new copy is made.  Blocking file work (lxc-attach is about 1.1 MiB), once per process.
    """
    path = shutil.which(tool)
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    held = _sealed.get(tool)
    if held is not None and not _still_ours(held[1], held[2]):
        del _sealed[tool]  # someone closed it: never exec what took its number
        held = None
    if held is not None and held[0] == key:
        return f"/proc/self/fd/{held[1]}"
    try:
        fd = os.memfd_create(os.path.basename(path), os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (OSError, AttributeError):
        return None
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())  # the file read (replaced since the stat: the next call copies again)
            data = f.read()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchmod(fd, 0o500)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
        if fcntl.fcntl(fd, fcntl.F_GET_SEALS) != SEALS or os.fstat(fd).st_size != st.st_size:
            raise OSError("seals not in force")
    except OSError:
        os.close(fd)
        return None
    if held is not None:
        os.close(held[1])
    copy = os.fstat(fd)
    _sealed[tool] = (key, fd, (copy.st_dev, copy.st_ino))
    return f"/proc/self/fd/{fd}"


#: How long a child's pipes are still read after it exits.  A process the
#: command left in the background (``sleep 1000 &``) holds them open for as
#: long as it lives; the call ends with the command, as LXD's exec does since
#: lxd#1677, and what was read by then is kept.
DRAIN_AFTER_EXIT_SECONDS = 0.5
_READ_BYTES = 65536
_FINAL_READS = 16  # at most 1 MiB read in the last non-blocking sweep


class _Sink:
    """What a reader has read so far: kept even when the reader is cut short.
    ``on_chunk(bytes)``, if given, sees every chunk as it is read (whatever
    the cap)."""

    def __init__(self, cap_bytes: int, on_chunk: Callable[[bytes], None] | None = None):
        self.cap_bytes = cap_bytes
        self.buf = bytearray()
        self.truncated = False
        self.eof = False
        self.on_chunk = on_chunk

    def add(self, chunk: bytes) -> None:
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        room = self.cap_bytes - len(self.buf)
        if room > 0:
            self.buf += chunk[:room]
        if len(chunk) > room:
            self.truncated = True


def _read_into(fd: int, sink: _Sink) -> None:
    while True:
        try:
            chunk = gevent.os.nb_read(fd, _READ_BYTES)
        except OSError:
            break
        if not chunk:
            break
        sink.add(chunk)
    sink.eof = True


def _read_available(fd: int, sink: _Sink) -> None:
    """Whatever ``fd`` (non-blocking) holds right now, without waiting."""
    for _ in range(_FINAL_READS):
        try:
            chunk = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            sink.eof = True
            return
        if not chunk:
            sink.eof = True
            return
        sink.add(chunk)


#: The live-process seam: ``spawner(argv, env, *, stdin=, capture=, setsid=, ctty=) -> Child``.
Spawner = Callable[..., Child]


def drain(fd: int, cap_bytes: int) -> tuple[bytes, bool]:
    """Read ``fd`` to EOF cooperatively, keeping at most ``cap_bytes``.

    Returns: (data, truncated)."""
    sink = _Sink(cap_bytes)
    _read_into(fd, sink)
    return bytes(sink.buf), sink.truncated


def feed(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` cooperatively, then close it."""
    try:
        view = memoryview(data)
        while view:
            try:
                n = gevent.os.nb_write(fd, view)
            except BrokenPipeError:
                return
            view = view[n:]
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


def communicate(child: Child, timeout_s: float, cap_bytes: int = 1 << 62,
                input_bytes: bytes | None = None,
                drain_s: float = DRAIN_AFTER_EXIT_SECONDS,
                on_output: Callable[[str, bytes], None] | None = None) -> dict:
    """Feed stdin, read stdout/stderr (each capped at ``cap_bytes``) and wait
    up to ``timeout_s``; a child past its time gets SIGTERM then SIGKILL.

    The call ends when the child ends: its pipes are read for ``drain_s``
    seconds more, then reading stops even if a process it left behind still
    holds them open (that process keeps running; what it writes later is not
    captured).  ``on_output(stream, chunk)`` (stream "stdout" or "stderr"),
    if given, is called with each chunk as it is read (a build's live log).

    Returns: {"returncode": int, "stdout": bytes, "stderr": bytes,
    "stdout_truncated": bool, "stderr_truncated": bool (output over
    cap_bytes was dropped), "stdout_incomplete": bool, "stderr_incomplete":
    bool (the stream was still open when reading stopped: the bytes are
    those read so far), "timed_out": bool}.
    """
    feeder = None
    if child.stdin is not None:
        fd, child.stdin = child.stdin, None
        feeder = gevent.spawn(feed, fd, input_bytes or b"")
    pipes = [child.stdout, child.stderr]
    sinks = [_Sink(cap_bytes, None if on_output is None else (lambda c: on_output("stdout", c))),
             _Sink(cap_bytes, None if on_output is None else (lambda c: on_output("stderr", c)))]
    readers = [gevent.spawn(_read_into, fd, sink) for fd, sink in zip(pipes, sinks)]
    timed_out = False
    try:
        try:
            try:
                child.wait(timeout_s)
            except SpawnTimeout:
                timed_out = True
                child.terminate_then_kill()
            gevent.joinall(readers, timeout=drain_s)
        except BaseException:
            child.kill()  # our caller went away: never leave the child behind
            raise
        finally:
            gevent.killall([g for g in readers if not g.ready()] + ([feeder] if feeder else []))
        for fd, sink in zip(pipes, sinks):
            if not sink.eof:  # cut short: take what is already in the pipe
                _read_available(fd, sink)
    finally:
        child.close()
    (out, err) = sinks
    return {"returncode": child.returncode if child.returncode is not None else -9,
            "stdout": bytes(out.buf), "stderr": bytes(err.buf),
            "stdout_truncated": out.truncated, "stderr_truncated": err.truncated,
            "stdout_incomplete": not out.eof, "stderr_incomplete": not err.eof,
            "timed_out": timed_out}
