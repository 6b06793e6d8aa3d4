"""One function per LXC tool, each with an explicit lxcpath (``-P``), argv
lists only, run through the cooperative ``lxcwrap.run`` seam (tools that run
to completion) or the ``lxcwrap.spawn.Spawner`` seam (``lxc-attach``, which
stays a live process while we read it or while it holds a terminal).  They
return plain data and raise ``lxcwrap.errors`` types.

``Lxc`` also owns each container's directory under the lxcpath: it creates
it (``prepare``), writes its LXC config (``write_config``) and removes it
(``destroy``).  Layout of ``LXCPATH/NAME/``: ``config``, ``delta0/`` (the
overlay's upper dir, the container's own layer), ``olwork/`` (the overlay's
work dir), ``console.log``, ``lxc.log``, ``init.pid``.

The tools' paths are settings (``Tools``), so a host can point at another LXC
build; tests can hand a recording ``run`` and ``spawner``.
"""
from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import re
import shutil
import signal
import time
from typing import Callable, Mapping, Sequence

import gevent

from lxcwrap import cgroup, direct, errors, spawn
from lxcwrap.config import ContainerConfig
from lxcwrap.run import DEFAULT_TIMEOUT_SECONDS, Completed, Runner, ToolNotFound, ToolTimeout, run

_default_run = run

#: Environment for processes started inside containers when the caller gives none.
DEFAULT_EXEC_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": "xterm",
}
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The overlay's upper (read-write) dir and its work dir, inside the container's dir.
UPPER_DIR = "delta0"
WORK_DIR = "olwork"
VERSION_TIMEOUT_SECONDS = 10.0
#: Removals of a container directory tried before ``destroy`` gives up (a
#: file written into it meanwhile makes it "not empty").
DESTROY_ATTEMPTS = 10
#: How long ``stop`` waits for the monitor to exit once the container is killed.
KILL_WAIT_SECONDS = 30.0
#: Where liblxc run as root keeps a lock file per container,
#: ``/run/lxc/lock/LXCPATH/.NAME`` (its "%s/lxc/lock/%s/.%s"): made on the
#: container's first use by any tool and never removed by LXC.
LOCK_ROOT = "/run/lxc/lock"


@dataclasses.dataclass(frozen=True)
class Tools:
    """Where the LXC tools live (settings, not constants)."""

    start: str = "lxc-start"
    stop: str = "lxc-stop"
    info: str = "lxc-info"
    ls: str = "lxc-ls"
    attach: str = "lxc-attach"
    wait: str = "lxc-wait"


class Lxc:
    """The LXC tools bound to one lxcpath.

    Args:
        lxcpath: the directory holding the containers (``-P``).
        run: the tool-running seam (default: lxcwrap.run.run).
        tools: tool paths.
        spawner: the live-process seam for lxc-attach (default:
            lxcwrap.spawn.Child, which then runs lxc-attach from a sealed
            in-memory copy made once, see spawn.sealed_exe).
        direct: do what needs no tool in process (``stop``; see
            lxcwrap.direct); default: when ``run`` is lxcwrap's own.
    """

    def __init__(self, lxcpath: str, run: Runner = run, tools: Tools = Tools(),
                 spawner: spawn.Spawner = spawn.Child, direct: bool | None = None):
        self.lxcpath = lxcpath
        self._run = run
        self.tools = tools
        self._spawn = spawner
        # steps done in process only when the tools would run here, as ourselves
        self.direct = (run is _default_run) if direct is None else direct
        self._layout: cgroup.Layout | None = None
        # lxc-attach from one sealed copy (its CVE-2019-5736 re-exec skipped) with the default spawner only
        self.sealed_attach = spawner is spawn.Child

    def layout(self) -> cgroup.Layout:
        """This host's cgroup layout (detected once)."""
        if self._layout is None:
            self._layout = cgroup.detect()
        return self._layout

    # -- the container's directory
    def path(self, name: str, *parts: str) -> str:
        """``LXCPATH/NAME[/PARTS...]`` (see the module doc for the layout)."""
        return os.path.join(self.lxcpath, name, *parts)

    def upper_dir(self, name: str) -> str:
        """The container's own layer: the overlay's upper dir."""
        return self.path(name, UPPER_DIR)

    def prepare(self, name: str) -> str:
        """Create the container's directory with its overlay upper and work
        dirs (blocking file work).

        Returns: the upper dir's path.
        Raises: FileExistsError (the directory exists), OSError."""
        upper = self.upper_dir(name)
        os.makedirs(upper, mode=0o755)
        os.makedirs(self.path(name, WORK_DIR), mode=0o700)
        return upper

    def write_config(self, name: str, cfg: ContainerConfig, layout: cgroup.Layout) -> str:
        """Write the container's LXC config (``LXCPATH/NAME/config``) from
        ``cfg``, with the cgroup keys ``layout`` needs (v1 or v2).  The file
        is written once, at create, in a directory ``prepare`` made; a
        failed create removes the whole directory (``destroy``).

        Returns: the config's path.
        Raises: ValueError (a value with a newline or NUL), OSError."""
        text = cfg.render(layout)
        path = self.path(name, "config")
        with open(path, "w") as f:
            f.write(text)
        return path

    def has_config(self, name: str) -> bool:
        """Whether LXC can see the container (its config file exists)."""
        return os.path.exists(self.path(name, "config"))

    def destroy(self, name: str) -> bool:
        """Remove the container's directory: its LXC definition, config,
        logs and its own layer (the image's lower layers are the image
        store's and stay).  The container must not run.  No ``lxc-destroy``:
        the caller owns the lxcpath and its overlay storage.  Blocking file
        work (run it in a thread pool from a server).

        A file written into it during the removal (the container's monitor
        exiting after ``lxc-stop -k`` still appends to its log) makes a
        directory "not empty": the removal is tried again, up to
        DESTROY_ATTEMPTS times 0.1 s apart.  liblxc's lock file of the name
        goes too (``remove_lock``).

        Returns: whether there was a directory to remove.
        Raises: OSError (something under it could not be removed, say a
        mount; the rest is removed)."""
        removed = self._remove_dir(name)
        self.remove_lock(name)  # not when the directory stays (OSError): the container is still there
        return removed

    def _remove_dir(self, name: str) -> bool:
        cdir = self.path(name)
        if not os.path.isdir(cdir):
            return False
        for attempt in range(DESTROY_ATTEMPTS):
            try:
                shutil.rmtree(cdir)
                return True
            except FileNotFoundError:
                if not os.path.exists(cdir):
                    return True
                if attempt == DESTROY_ATTEMPTS - 1:
                    raise
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY or attempt == DESTROY_ATTEMPTS - 1:
                    raise
            time.sleep(0.1)
        return True

    def lock_path(self, name: str) -> str:
        """liblxc's lock file for container ``name`` (see LOCK_ROOT)."""
        return os.path.join(LOCK_ROOT, self.lxcpath.lstrip("/"), "." + name)

    def remove_lock(self, name: str) -> None:
        """Remove liblxc's lock file of a container that is gone (``destroy``
        does): LXC leaves one per container name ever used, in /run (RAM),
        so a host churning names (deploys, builds) would gather them without
        end.  Only while no one holds it: a non-blocking POSIX write lock is
        taken first (liblxc locks it with fcntl(2), OFD or POSIX, which
        conflict with it), so a tool holding it keeps the file it locked.
        Best effort: a file already gone, held, or that cannot be removed,
        is left."""
        path = self.lock_path(name)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)

    # -- helpers
    def _call(self, tool: str, name: str | None, args: Sequence[str], timeout_s: float) -> Completed:
        argv = [tool, "-P", self.lxcpath, *(["-n", name] if name is not None else []), *args]
        try:
            return self._run(argv, timeout_s)
        except ToolNotFound as exc:
            raise errors.LxcToolMissing(f"{tool} is not installed", argv=argv,
                                        hint="install Debian's lxc package") from exc
        except ToolTimeout as exc:
            raise errors.LxcTimeout(f"{tool} on {name} ran past {timeout_s:g} s", argv=argv) from exc

    @staticmethod
    def _fail(done: Completed, name: str | None, what: str) -> errors.LxcError:
        err = done.stderr_text
        low = err.lower()
        kw = dict(argv=done.argv, returncode=done.returncode, stderr=err)
        if "doesn't exist" in low or "does not exist" in low or "no container" in low:
            return errors.LxcNotFound(f"no LXC container {name!r}", **kw)
        if "not running" in low:
            return errors.LxcNotRunning(f"container {name!r} is not running", **kw)
        if "already running" in low:
            return errors.LxcAlreadyRunning(f"container {name!r} is already running", **kw)
        return errors.LxcError(f"{what} {name!r} failed (exit {done.returncode}): {err[-400:]}", **kw)

    def log_tail(self, name: str, lines: int = 8) -> str:
        """The last ERROR lines of the container's LXC log (for hints)."""
        path = os.path.join(self.lxcpath, name, "lxc.log")
        try:
            with open(path, errors="replace") as f:
                text = f.read()[-16384:]
        except OSError:
            return ""
        errs = [ln.split(" - ", 2)[-1] for ln in text.splitlines() if " ERROR " in ln]
        return "; ".join(errs[-lines:])

    # -- tools
    def version(self, timeout_s: float = VERSION_TIMEOUT_SECONDS) -> str | None:
        """``lxc-start --version``: LXC's version ("5.0.2"), or None when
        the tool cannot be run or says nothing (best effort)."""
        try:
            done = self._run([self.tools.start, "--version"], timeout_s)
        except (ToolNotFound, ToolTimeout):
            return None
        return (done.stdout_text.strip() or None) if done.returncode == 0 else None

    def ls(self, timeout_s: float = DEFAULT_TIMEOUT_SECONDS) -> list[dict]:
        """``lxc-ls --fancy``: [{"name", "state", "pid" (int or None)}].

        Without a process where it can (``direct`` on cgroup v2, see
        lxcwrap.direct.listing: the pid files, the monitors' cgroups and
        command sockets); ``lxc-info`` for each container that cannot tell
        for sure (one starting or stopping, one started by hand), and
        ``lxc-ls`` when it cannot read them at all."""
        if self.direct and self.layout().v2:
            rows = direct.listing(self.lxcpath, self.layout().v2)
            if rows is not None:
                known = []
                for row in rows:
                    if row["state"] is None:
                        try:
                            row.update(self.info(row["name"], timeout_s))
                        except errors.LxcNotFound:
                            continue  # destroyed meanwhile
                    known.append(row)
                return known
        done = self._call(self.tools.ls, None, ["-f", "-F", "NAME,STATE,PID"], timeout_s)
        if done.returncode != 0:
            raise self._fail(done, None, "lxc-ls")
        return parse_ls(done.stdout_text)

    def info(self, name: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS) -> dict:
        """``lxc-info``: {"state": "RUNNING"|"STOPPED"|..., "pid": int|None}.

        Raises: LxcNotFound."""
        done = self._call(self.tools.info, name, ["-s", "-p"], timeout_s)
        if done.returncode != 0:
            raise self._fail(done, name, "lxc-info")
        return parse_info(done.stdout_text)

    def start(self, name: str, timeout_s: float = DEFAULT_TIMEOUT_SECONDS) -> int | None:
        """``lxc-start -d -p PIDFILE``: the container's monitor daemonizes and
        outlives us.

        Returns: the container init's pid on the host (see _init_pid), or None.

        Raises: LxcAlreadyRunning, LxcNotFound, LxcStartFailed (with the LXC
        log's errors in the message; ``.log_errors`` has them alone)."""
        pidfile = os.path.join(self.lxcpath, name, "init.pid")
        done = self._call(self.tools.start, name, ["-d", "-p", pidfile], timeout_s)
        if "already running" in done.stderr_text.lower():  # lxc-start exits 0 then
            raise errors.LxcAlreadyRunning(f"container {name!r} is already running", argv=done.argv,
                                           returncode=done.returncode, stderr=done.stderr_text)
        if done.returncode == 0:
            return self._init_pid(name)
        err = self._fail(done, name, "lxc-start")
        if type(err) is errors.LxcError:
            cause = self.log_tail(name)
            failed = errors.LxcStartFailed(
                f"container {name!r} failed to start" + (f": {cause}" if cause else ""),
                argv=done.argv, returncode=done.returncode, stderr=done.stderr_text,
                hint=f"see {os.path.join(self.lxcpath, name, 'lxc.log')}")
            failed.log_errors = cause
            raise failed
        raise err

    def _init_pid(self, name: str) -> int | None:
        """The running container's init pid on the host: the monitor's child
        in the payload cgroup (the pid file ``lxc-start -p`` writes names the
        monitor, not init), else ``lxc-info``'s, else None."""
        layout = self.layout()
        mon = direct.monitor(self.lxcpath, name) if layout.v2 else None
        if mon is not None:
            with mon:
                found = mon.payload(layout.v2)
            if found is not None:
                os.close(found[1])
                return found[0]
        try:
            return self.info(name)["pid"]
        except errors.LxcError:
            return None

    def stop(self, name: str, timeout_s: float = 10.0, kill: bool = False) -> None:
        """Stop the container: send the halt signal (lxc.signal.halt), wait
        up to ``timeout_s`` seconds, then SIGKILL; ``kill`` or a timeout
        under half a second skips the graceful part.  Returns once the
        container's monitor has exited, so its veth, mounts and cgroups are
        gone and nothing writes into its directory any more.
        Bounded: lxc-stop's own 60 s default never applies (lxc/lxc#2342).

        Without a process where it can (``direct``, see lxcwrap.direct): the
        halt signal goes to init through a pidfd, the kill is a write to
        the payload cgroup's ``cgroup.kill`` (every process of the
        container, attached ones too), and the wait is on the monitor's
        pidfd.  Otherwise (no pid file naming the monitor, no cgroup v2 or
        no cgroup.kill, a halt signal we cannot read, or a runner that is
        not lxcwrap's own) it runs ``lxc-stop`` (``-t`` rounded to whole
        seconds, or ``-k``).

        Raises: LxcNotRunning, LxcNotFound, LxcTimeout (the container was
        still up after the kill)."""
        if self.direct:
            done_direct = self._stop_direct(name, timeout_s, kill)
            if done_direct is True:
                return
            kill = kill or done_direct == "kill"  # the graceful wait is spent: no second one
        # lxc-stop -t 0 asks for a halt and does not wait: a zero timeout
        # means kill here, as it does for docker stop -t 0.
        seconds = int(round(timeout_s))
        args = ["-k"] if kill or seconds <= 0 else ["-t", str(seconds)]
        done = self._call(self.tools.stop, name, args, timeout_s + 30)
        if done.returncode != 0:
            raise self._fail(done, name, "lxc-stop")

    def _stop_direct(self, name: str, timeout_s: float, kill: bool) -> bool | str:
        """``stop`` without lxc-stop.  Returns True when the container is
        down, False when the tool must do the whole stop (nothing was
        signalled), or "kill" when the halt signal was sent and its wait ran
        out but no cgroup.kill is there: ``lxc-stop -k`` must finish.

        Raises: LxcTimeout (still up KILL_WAIT_SECONDS after the kill)."""
        layout = self.layout()
        if not layout.v2:
            return False
        mon = direct.monitor(self.lxcpath, name)
        if mon is None:
            return False
        with mon:
            found = mon.payload(layout.v2)
            if found is None:
                return mon.wait_exit(0)  # already exited: stopped; else the tool decides
            _init_pid, init_fd, payload = found
            try:
                graceful = not kill and timeout_s >= 0.5
                if graceful:
                    sig = direct.halt_signal(self.path(name, "config"))
                    if sig is None:
                        return False
                    if direct.send_signal(init_fd, sig) and mon.wait_exit(timeout_s):
                        return True
                if not direct.kill_cgroup(payload):
                    if graceful:
                        return "kill"
                    direct.send_signal(init_fd, signal.SIGKILL)  # False: init is gone, the monitor tears down
                if mon.wait_exit(KILL_WAIT_SECONDS):
                    return True
            finally:
                os.close(init_fd)
        raise errors.LxcTimeout(f"container {name!r} was still up {KILL_WAIT_SECONDS:g} s after SIGKILL",
                                hint=f"see {self.path(name, 'lxc.log')}")

    def wait(self, name: str, state: str, timeout_s: float) -> bool:
        """``lxc-wait -s STATE -t T``: True once the container is in STATE."""
        done = self._call(self.tools.wait, name, ["-s", state, "-t", str(max(0, int(timeout_s)))],
                          timeout_s + 10)
        return done.returncode == 0

    def attach_argv(self, name: str, command: Sequence[str], env: Mapping[str, str] | None = None) -> list[str]:
        """The ``lxc-attach --clear-env`` argv running ``command`` in ``name``
        with ``env`` (default DEFAULT_EXEC_ENV)."""
        argv = [self.tools.attach, "-P", self.lxcpath, "-n", name, "--clear-env"]
        for key, value in (env or DEFAULT_EXEC_ENV).items():
            if not _ENV_KEY.match(key) or "\x00" in value:
                raise ValueError(f"bad environment variable {key!r}")
            argv += ["-v", f"{key}={value}"]
        return [*argv, "--", *command]

    def _spawn_attach(self, argv: list[str], **kw) -> spawn.Child:
        """Start the lxc-attach ``argv``: from its sealed copy when there is
        one (``sealed_attach``), else by its name on PATH.

        Raises: LxcToolMissing."""
        exe = spawn.sealed_exe(argv[0]) if self.sealed_attach else None
        try:
            if exe is not None:
                return self._spawn(argv, os.environ, executable=exe, **kw)
            return self._spawn(argv, os.environ, **kw)
        except FileNotFoundError as exc:
            raise errors.LxcToolMissing(f"{argv[0]} is not installed", argv=argv) from exc

    def attach_tty(self, name: str, command: Sequence[str], env: Mapping[str, str] | None,
                   tty_path: str) -> spawn.Child:
        """Start ``lxc-attach`` for an interactive session on the terminal at
        ``tty_path`` (a pty slave), in a new session whose controlling
        terminal it is; lxc-attach allocates the container-side pty.

        Returns: the running Child (wait/kill it).
        Raises: LxcToolMissing."""
        return self._spawn_attach(self.attach_argv(name, command, env), ctty=tty_path)

    def exec(self, name: str, command: Sequence[str], *, env: Mapping[str, str] | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_SECONDS, max_output_bytes: int = 16 << 20,
             input_bytes: bytes | None = None,
             on_output: Callable[[str, bytes], None] | None = None) -> dict:
        """Run ``command`` (argv list) in the running container and capture it.
        ``on_output(stream, chunk)`` sees the output as it comes (see
        spawn.communicate).

        Output beyond ``max_output_bytes`` per stream is read and dropped, so a
        chatty command never blocks on a full pipe nor fills our memory.  The
        call returns when the command exits, even if a process it started in
        the background (``sh -c 'sleep 1000 & echo started'``) keeps its
        stdout/stderr open: that process keeps running, the streams are read
        for ``spawn.DRAIN_AFTER_EXIT_SECONDS`` more and then left, and
        ``stdout_incomplete``/``stderr_incomplete`` say so.

        Returns:
            {"exit_code": int, "stdout": bytes, "stderr": bytes,
             "stdout_truncated": bool, "stderr_truncated": bool (over the cap),
             "stdout_incomplete": bool, "stderr_incomplete": bool (still held
             open by a background process when reading stopped),
             "duration_s": float, "timed_out": bool}

        Raises:
            LxcExecNotFound: the command does not exist in the container
                (lxc-attach exits 127 with "Failed to exec").
            LxcNotRunning, LxcNotFound, LxcToolMissing.
        """
        argv = self.attach_argv(name, command, env)
        started = gevent.get_hub().loop.now()
        child = self._spawn_attach(argv, stdin="pipe" if input_bytes is not None else "null", setsid=True)
        out = spawn.communicate(child, timeout_s, max_output_bytes, input_bytes, on_output=on_output)
        duration = gevent.get_hub().loop.now() - started
        err, code = out["stderr"], out["returncode"]
        if code in (127, 1) and b"Failed to exec" in err and b"lxc_attach_run_command" in err:
            raise errors.LxcExecNotFound(f"{command[0]!r}: no such command in container {name!r}",
                                         argv=argv, returncode=code, stderr=err.decode(errors="replace"))
        if code != 0 and (b"Failed to get init pid" in err or b"Connection refused - Failed to get" in err):
            raise errors.LxcNotRunning(f"container {name!r} is not running", argv=argv, returncode=code)
        return {"exit_code": code, "stdout": out["stdout"], "stderr": err,
                "stdout_truncated": out["stdout_truncated"], "stderr_truncated": out["stderr_truncated"],
                "stdout_incomplete": out["stdout_incomplete"], "stderr_incomplete": out["stderr_incomplete"],
                "duration_s": round(duration, 6), "timed_out": out["timed_out"]}


def parse_ls(text: str) -> list[dict]:
    """Parse ``lxc-ls -f -F NAME,STATE,PID`` output."""
    rows = []
    lines = [ln for ln in text.splitlines() if ln.strip()]
    for line in lines[1:]:  # the first line is the header
        parts = line.split()
        if len(parts) < 3:
            continue
        pid = int(parts[2]) if parts[2].isdigit() else None
        rows.append({"name": parts[0], "state": parts[1], "pid": pid})
    return rows


def parse_info(text: str) -> dict:
    """Parse ``lxc-info -s -p`` output ("State:   RUNNING", "PID:   123")."""
    out: dict = {"state": "UNKNOWN", "pid": None}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if key == "state":
            out["state"] = value
        elif key == "pid" and value.isdigit():
            out["pid"] = int(value)
    return out
