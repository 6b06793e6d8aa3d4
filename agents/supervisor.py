"""Restart policies and exit detection on one host (Docker's names).

A container lives as long as its command: the image's run script records
``STATUS OOM_KILLS`` in /etc/dcfleet/exit (in the container's own upper
layer, readable from the host) and powers the container off.  Every
``interval_s`` the supervisor lists the containers (in process, lxcwrap.direct.listing) and, for
each one the agent started (desired "running") that has stopped, records the
exit and applies the policy:

* ``no``: it stays stopped (desired becomes "stopped");
* ``always``: restarted whatever the exit;
* ``on-failure[:N]``: restarted if it failed (non-zero status or OOM kill),
  at most N times (default 10).

Restarts back off exponentially (1 s, 2 s, 4 s ... at most 60 s); a run that
lasted ``RESET_AFTER_SECONDS`` resets the backoff.  An OOM kill (status 137
with the cgroup's oom_kill counter above zero, read inside the container by
the run script, or by the supervisor from the host while the container
powers off) is reported as ``oom_killed: true``.  Containers the operator stopped are never touched.
About once a minute it also runs the host cleanup (ops_cleanup: records
whose LXC definition vanished, destroys cut short, stale veths).  Best effort (failure class 1):
a failed pass is logged and retried.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import time

import gevent
import gevent.event

from agents.background import BackgroundLoop
from agents.errmap import translate
from dcctl import errors, validate
from lxcwrap import cgroup

log = logging.getLogger(__name__)

POLICIES = validate.RESTART_POLICIES
DEFAULT_MAX_RETRIES = 10
BACKOFF_MAX_SECONDS = 60.0
RESET_AFTER_SECONDS = 30.0
MAX_EVENTS = 50
CLEANUP_EVERY_PASSES = 60  # ops_cleanup's work, about once a minute


def parse_policy(value) -> dict:
    """``"no"``, ``"always"``, ``"on-failure"`` or ``"on-failure:N"`` ->
    {"policy", "max_retries"} (the grammar is dcctl.validate.restart_policy's).
    Raises InvalidArgument."""
    return validate.restart_policy(value, DEFAULT_MAX_RETRIES)


#: Where a container's run script records its command's exit, under its rootfs (upper dir).
EXIT_RECORD = ("etc", "dcfleet", "exit")
#: At most this many bytes of the exit record are read ("STATUS OOMS\n").
EXIT_RECORD_MAX_BYTES = 64


def _exit_record_dir(upper_dir: str) -> int:
    """An fd of the exit record's directory under ``upper_dir``, each
    component opened with O_NOFOLLOW: the container's root writes these
    paths, and a symlink there must not lead the agent (in the host's
    namespace) to a host file.  Raises: OSError."""
    fd = os.open(upper_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in EXIT_RECORD[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_exit(upper_dir: str) -> tuple[int | None, bool]:
    """(exit status, oom_killed) from the container's /etc/dcfleet/exit, or
    (None, False) when its command did not record one (killed with the
    container, or an image without the dcfleet run script) or the record
    is not one the run script writes.  The container's root can write that
    file: it is read only as a regular file reached without a symlink (no
    FIFO that blocks, no host file), at most EXIT_RECORD_MAX_BYTES, and a
    status outside 0..255 is None (an event with it would be refused)."""
    try:
        dir_fd = _exit_record_dir(upper_dir)
        try:
            fd = os.open(EXIT_RECORD[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None, False
            parts = os.read(fd, EXIT_RECORD_MAX_BYTES).split()
        finally:
            os.close(fd)
        status, ooms = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except (OSError, ValueError, IndexError):
        return None, False
    if not 0 <= status <= 255:
        return None, False
    return status, status == 137 and ooms > 0


def remove_exit(upper_dir: str) -> None:
    """Remove the container's exit record (before a start: the previous
    run's must not be taken for this run's), reached without a symlink
    (see _exit_record_dir); a missing one, or a path that is not the run
    script's, is left.  Raises: OSError (other than those)."""
    try:
        dir_fd = _exit_record_dir(upper_dir)
    except (FileNotFoundError, NotADirectoryError) as exc:
        del exc
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink where the run script keeps a directory: nothing of ours
            return
        raise
    try:
        os.unlink(EXIT_RECORD[-1], dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    finally:
        os.close(dir_fd)


def add_event(rec: dict, kind: str, **detail) -> dict:
    """Append an event {at, kind, ...} to the record (last MAX_EVENTS kept)."""
    event = {"at": time.time(), "kind": kind, **detail}
    rec.setdefault("events", []).append(event)
    del rec["events"][:-MAX_EVENTS]
    return event


class Supervisor(BackgroundLoop):
    """Watches ``manager``'s containers (see the module doc)."""

    def __init__(self, manager, interval_s: float = 1.0, hold_s: float = 0.0):
        self.m = manager
        self.interval_s = interval_s
        # With a hub, restarts wait until the hub has heard from this host
        # (``release()``) or ``hold_s`` has passed: if the host was lost, the
        # hub may have re-created its containers elsewhere and will remove
        # the stale copies instead.
        self.released = gevent.event.Event()
        if hold_s <= 0:
            self.released.set()
        else:
            gevent.spawn_later(hold_s, self.released.set)
        self._due: dict[str, float] = {}  # name -> monotonic time of its next restart
        self._ooms: dict[str, int] = {}  # name -> oom_kill count seen after its command ended

    def release(self) -> None:
        """The hub has our inventory: restarts may begin."""
        self.released.set()

    def _loop(self) -> None:
        self.released.wait()
        passes = 0
        while True:
            try:
                self.tick()
                passes += 1
                if passes % CLEANUP_EVERY_PASSES == 0:  # the seed's "OOM wrangler", periodically
                    found = self.m.cleanup()
                    if any(found.values()):
                        log.info("cleanup: %s", found)
            except Exception:
                log.exception("supervisor pass failed; retrying")
            gevent.sleep(self.interval_s)

    def tick(self) -> None:
        """One pass: write records whose last write failed (a full disk),
        record exits, apply policies, start restarts that are due."""
        self.m.flush_unsaved()
        self.m.events.flush()
        live = {c["name"]: c for c in self.m.lxc.ls()}
        now = time.monotonic()
        for name, rec in list(self.m.records.items()):
            if rec["phase"] != "ready" or rec["desired"] != "running":
                self._due.pop(name, None)
                continue
            if live.get(name, {}).get("state") == "RUNNING":
                self._watch_ending(rec, live[name].get("pid"))
                continue
            if name not in self._due:
                self._exited(rec)
            due = self._due.get(name)
            if due is not None and now >= due:
                self._restart(rec)

    def _watch_ending(self, rec: dict, pid: int | None) -> None:
        """A running container whose command has ended (its exit record
        exists) is about to power off: read its cgroup's OOM kill count now,
        while the cgroup still exists (the run script lingers after 137)."""
        if not pid or not os.path.exists(os.path.join(self.m.upper_dir(rec["name"]), "etc", "dcfleet", "exit")):
            return
        try:
            count = cgroup.oom_kills(self.m.layout, pid)
        except OSError:
            return
        if count:
            self._ooms[rec["name"]] = count

    def _exited(self, rec: dict) -> None:
        name = rec["name"]
        with self.m.locked(name):
            if rec["desired"] != "running" or self.m.live_state(name) == "RUNNING":
                return  # the operator stopped it, or it came back, meanwhile
            status, oom = read_exit(self.m.upper_dir(name))
            oom = oom or (status == 137 and self._ooms.pop(name, 0) > 0)
            started = rec.get("started_at") or time.time()
            ran_s = max(0.0, time.time() - started)
            rec["last_exit"] = {"status": status, "oom_killed": oom, "at": time.time(), "ran_s": round(ran_s, 3)}
            add_event(rec, "oom" if oom else "exited", status=status)
            if oom:
                self.m.events.record("oom", name, image=rec.get("image_name"))
            self.m.events.record("died", name, image=rec.get("image_name"), exit_code=status, oom_killed=oom)
            policy = rec.get("restart") or {"policy": "no", "max_retries": 0}
            failed = oom or status != 0
            if ran_s >= RESET_AFTER_SECONDS:
                rec["restart_count"] = 0
            count = rec.get("restart_count", 0)
            wanted = policy["policy"] == "always" or (policy["policy"] == "on-failure" and failed)
            if wanted and policy["policy"] == "on-failure" and count >= policy["max_retries"]:
                add_event(rec, "restart_gave_up", restarts=count)
                wanted = False
            if not wanted:
                rec["desired"] = "stopped"
                self.m.save_soon(rec)
                log.info("%s exited (status %s, oom %s); policy %s: stays stopped", name, status, oom,
                         policy["policy"])
                return
            delay = min(BACKOFF_MAX_SECONDS, 2.0 ** count)
            self._due[name] = time.monotonic() + delay
            self.m.save_soon(rec)
            log.info("%s exited (status %s, oom %s); restart %d in %.0f s", name, status, oom, count + 1, delay)

    def _restart(self, rec: dict) -> None:
        name = rec["name"]
        self._due.pop(name, None)
        try:
            with self.m.locked(name):
                if rec["desired"] != "running" or self.m.live_state(name) == "RUNNING":
                    return
                rec["restart_count"] = rec.get("restart_count", 0) + 1
                add_event(rec, "restarted", count=rec["restart_count"])
                self.m.events.record("restarted", name, image=rec.get("image_name"), count=rec["restart_count"])
                self.m.start_locked(rec)  # saves the record
        except Exception as exc:  # noqa: BLE001 - a failed restart is retried with backoff
            wire = exc if isinstance(exc, errors.DcError) else translate(exc)
            if wire is None:
                raise
            log.warning("restart of %s failed: %s", name, wire)
            add_event(rec, "restart_failed", error=f"{type(wire).__name__}: {wire}")
            self._due[name] = time.monotonic() + min(BACKOFF_MAX_SECONDS, 2.0 ** rec.get("restart_count", 1))
