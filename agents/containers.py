"""Container lifecycle on one host: the agent's model of its containers.

The agent is the single writer of container state.  Each container has one
lock; slow work (image import) holds none.  A container's record is saved
before any side effect and carries a ``phase`` ("creating", "ready",
"destroying"), so a crash mid-create is rolled back and a crash mid-destroy is
finished by ``recover()`` at the next start.  Containers run under their own
``lxc-start`` monitor and outlive the agent.

A record never lies about LXC, even when its write fails (a full disk: a
container's rootfs lives in the state dir by default).  Start and stop write
their intent (``desired``) before they act and act only once it is written
(writes that must not fail go through the state store's reserve, see
agents.state); a write after the act that fails is retried by the
supervisor (``flush_unsaved``).  Destroy needs no space: its "destroying"
mark is best effort and the rest only frees; a destroy cut short is finished
by the next destroy, ``ops_cleanup`` or the next agent start.

Record keys (JSON, persisted by agents.state):
    name, image (id), image_name, created (Unix s), address, memory_bytes,
    cpus, cpu_shares, pids_limit (the create's or the agent's
    default_pids_limit; absent from records written before PID limits, whose
    LXC config has none), env, command, ports [{proto, host_port,
    container_port, dynamic}], desired ("running"|"stopped"), phase, veth.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import gevent
import gevent.lock

from agents import network as netmod
from agents import supervisor
from agents import volumes as volmod
from agents.config import AgentConfig
from agents.events import EventJournal
from agents import logwriter
from agents.logs import ContainerLogs
from agents.state import StateStore
from dcctl import errors, validate
from images import appinit, busybox, rootfs, templates
from images.store import ImageStore
from lxcwrap import cgroup
from lxcwrap import errors as lxcerr
from lxcwrap.config import ContainerConfig
from lxcwrap.lxc import DEFAULT_EXEC_ENV, Lxc

log = logging.getLogger(__name__)

CREATE_OPTIONS = validate.CREATE_OPTIONS
EXEC_OPTIONS = validate.EXEC_OPTIONS
MIN_MEMORY_BYTES = validate.MIN_MEMORY_BYTES


def _policy_text(policy: dict | None) -> str:
    if not policy or policy["policy"] == "no":
        return "no"
    if policy["policy"] == "on-failure":
        return f"on-failure:{policy['max_retries']}"
    return policy["policy"]


def mac_for(address: str) -> str:
    """A container's MAC from its IPv4 address: ``02:dc:`` (locally
    administered, unicast) and the address's four bytes."""
    return "02:dc:" + ":".join(f"{int(octet):02x}" for octet in address.split("."))


def _blocking(fn, *args):
    """Run blocking file work in gevent's thread pool (heartbeats go on)."""
    return gevent.get_hub().threadpool.apply(fn, args)


class ContainerManager:
    """Owns the containers, their records, addresses and port mappings.

    Args:
        config: the agent's settings.
        network: the agent's Network (bridge, addresses, netfilter rules).
        images: the image store.
        lxc: the LXC tools bound to config.lxc_path.
    """

    def __init__(self, config: AgentConfig, network: netmod.Network, images: ImageStore, lxc: Lxc):
        self.config = config
        self.network = network
        self.images = images
        self.lxc = lxc
        self.layout = cgroup.detect()
        if not self.layout.has("pids") and not config.hollow:
            log.warning("this host has no pids cgroup controller: containers get no PID limit "
                        "(pids_limit and default_pids_limit are not applied)")
        self.state = StateStore(config.state_dir)
        self.events = EventJournal(config.state_dir, config.host_name)  # container events (agents.events)
        self.records: dict[str, dict] = {}
        self._unsaved: set[str] = set()  # names whose record in memory is newer than on disk
        self._disk_desired: dict[str, str] = {}  # name -> "desired" as last written
        self._locks: dict[str, gevent.lock.BoundedSemaphore] = {}
        self._alloc_lock = gevent.lock.BoundedSemaphore(1)  # addresses, host ports, names
        self.images_lock = gevent.lock.BoundedSemaphore(1)  # image store mutations
        self.volumes = volmod.Volumes(os.path.join(config.state_dir, "volumes"))
        self.log_store = ContainerLogs(config.log_dir, config.log_max_size_bytes, config.log_max_files,
                                  hollow=config.hollow)

    # ------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def locked(self, name: str):
        """Hold ``name``'s lock; Busy after config.lock_timeout_s seconds."""
        lock = self._locks.setdefault(name, gevent.lock.BoundedSemaphore(1))
        if not lock.acquire(timeout=self.config.lock_timeout_s):
            raise errors.Busy(f"container {name!r} is busy with another call; try again")
        try:
            yield
        finally:
            lock.release()

    def record(self, name: str, *, ready: bool = True) -> dict:
        """The record of container ``name`` (the live dict: change it under
        ``locked(name)`` only).

        Args: ready: refuse a container being created or destroyed.
        Raises: InvalidArgument (bad name), NoSuchContainer, Busy (not
        ready, when ``ready``)."""
        validate.container_name(name)
        rec = self.records.get(name)
        if rec is None:
            raise errors.NoSuchContainer(f"no container {name!r} on this host")
        if ready and rec["phase"] != "ready":
            hint = "container_destroy or ops_cleanup finishes it" if rec["phase"] == "destroying" else None
            raise errors.Busy(f"container {name!r} is {rec['phase']}", hint=hint)
        return rec

    def _save(self, rec: dict, critical: bool = True) -> None:
        """Write ``rec`` (and keep it as the record in memory).

        Raises: OSError; the name is then left for flush_unsaved()."""
        name = rec["name"]
        self.records[name] = rec
        try:
            self.state.save(rec, critical=critical)
        except BaseException:
            self._unsaved.add(name)
            raise
        self._unsaved.discard(name)
        self._disk_desired[name] = rec["desired"]

    def save_soon(self, rec: dict, critical: bool = False) -> bool:
        """Write ``rec`` now if the disk takes it, else leave it to
        flush_unsaved() (for writes after an act, when the record on disk
        already tells the truth that matters: a record saying ``desired:
        running`` of a stopped container is what the supervisor handles as
        an exit).  ``critical`` lets it use the state store's reserve.
        Returns whether it was written."""
        try:
            self._save(rec, critical=critical)
            return True
        except Exception as exc:  # noqa: BLE001 - retried by flush_unsaved
            log.warning("record of %s not written (%s); retrying later", rec["name"], exc)
            return False

    def _set_desired(self, rec: dict, desired: str) -> None:
        """Write the intent before acting on it (unless the disk already
        holds it); the record is unchanged if the write fails (OSError)."""
        old, unsaved = rec["desired"], rec["name"] in self._unsaved
        if old == desired and self._disk_desired.get(rec["name"]) == desired:
            return
        rec["desired"] = desired
        try:
            self._save(rec)
        except BaseException:
            rec["desired"] = old
            if not unsaved:
                self._unsaved.discard(rec["name"])
            raise

    def flush_unsaved(self) -> list[str]:
        """Write the records whose last write failed (the supervisor calls
        this every pass); a record whose lock is held is left for the next
        call.  Returns the names written."""
        done = []
        for name in sorted(self._unsaved):
            lock = self._locks.setdefault(name, gevent.lock.BoundedSemaphore(1))
            if not lock.acquire(blocking=False):
                continue
            try:
                rec = self.records.get(name)
                if rec is None:
                    self._unsaved.discard(name)
                    continue
                try:
                    self._save(rec, critical=False)
                    done.append(name)
                except Exception as exc:  # noqa: BLE001 - still no room: next pass
                    log.debug("record of %s still not written: %s", name, exc)
            finally:
                lock.release()
        return done

    def upper_dir(self, name: str) -> str:
        """The container's own layer (the overlay's upper dir) on the host."""
        return self.lxc.upper_dir(name)

    def _mappings(self, rec: dict) -> list[dict]:
        return [{"container": rec["name"], "proto": p["proto"], "host_port": p["host_port"],
                 "container_address": rec["address"], "container_port": p["container_port"]}
                for p in rec.get("ports", [])]

    def all_mappings(self) -> list[dict]:
        return [m for rec in self.records.values() if rec["phase"] != "destroying" for m in self._mappings(rec)]

    def _taken_ports(self) -> set[tuple[str, int]]:
        return {(p["proto"], p["host_port"]) for r in self.records.values() for p in r.get("ports", [])}

    # ------------------------------------------------------------ startup
    def recover(self) -> dict:
        """Re-adopt containers after an agent (re)start.

        Loads records, rolls back creates and finishes destroys that a crash
        interrupted, puts every port mapping back in the kernel (rules that
        survived are kept, not flushed), and restarts containers whose
        hands containers whose desired state is running but that are stopped
        (host reboot, an exit while the agent was down) to the supervisor,
        whose restart policy decides ("restarted" lists them).

        A container whose record says desired "stopped" but that runs (the
        agent died during its stop) is stopped in the background
        ("stopping" lists them).

        Returns: {"adopted": n, "rolled_back": [...], "destroyed": [...],
                  "restarted": [...], "stopping": [...],
                  "rules": {"added": n, "removed": n}}
        """
        self.records = self.state.load_all()
        self._disk_desired = {name: rec["desired"] for name, rec in self.records.items()}
        rolled, finished = [], []
        for name, rec in list(self.records.items()):
            if rec["phase"] == "creating":
                self._remove_files(name)
                self.state.delete(name)
                del self.records[name]
                rolled.append(name)
            elif rec["phase"] == "destroying":
                try:
                    self._finish_destroy(rec)
                    finished.append(name)
                except Exception:  # noqa: BLE001 - left for destroy or ops_cleanup
                    log.exception("finishing the destroy of %s failed; left destroying", name)
        rules = self.network.reconcile(self.all_mappings())
        # containers that stopped while the agent was away (or a host reboot)
        # are left to the supervisor: their restart policy decides
        live = {c["name"]: c for c in self.lxc.ls()}
        for n in self.records:  # a running container's log writer died with the host, or was killed
            if live.get(n, {}).get("state") == "RUNNING" and not self.log_store.writer_pid(n):
                try:
                    self.log_store.ensure_writer(n)
                except errors.DcError as exc:
                    log.warning("container %s: %s", n, exc)
        restarted = [n for n, r in self.records.items()
                     if r["desired"] == "running" and live.get(n, {}).get("state") != "RUNNING"]
        # a stop the agent's death cut short (its intent on disk, the container still up; the stop ran in
        # the agent's own process, so nothing else finishes it): finished in the background, each under
        # its container's lock, so serving starts now
        stopping = [n for n, r in self.records.items()
                    if r["phase"] == "ready" and r["desired"] == "stopped" and live.get(n, {}).get("state") == "RUNNING"]
        for n in stopping:
            gevent.spawn(self._finish_stop, n)
        log.info("recovered %d containers (rolled back %s, finished destroy of %s, restarted %s, stopping %s)",
                 len(self.records), rolled, finished, restarted, stopping)
        return {"adopted": len(self.records), "rolled_back": rolled, "destroyed": finished,
                "restarted": restarted, "stopping": stopping, "rules": rules}

    def _finish_stop(self, name: str) -> None:
        """recover's background stop of ``name`` (desired "stopped" but
        running): a stop with the configured timeout, unless its intent
        changed meanwhile (a start or a destroy came first)."""
        try:
            with self.locked(name):
                rec = self.records.get(name)
                if rec is None or rec["phase"] != "ready" or rec["desired"] != "stopped":
                    return
                self.lxc.stop(name, timeout_s=self.config.stop_timeout_s)
                self.events.record("stopped", name, image=rec.get("image_name"))
                log.info("finished the stop of %s that the agent's restart cut short", name)
        except lxcerr.LxcNotRunning:
            pass
        except Exception:  # noqa: BLE001 - logged; a container_stop can still stop it
            log.exception("finishing the stop of %s failed", name)

    # ------------------------------------------------------------ create
    def create(self, image_ref: str, name: str, options: dict | None) -> dict:
        """See AgentService.container_create."""
        validate.container_name(name)
        opts = self._create_options(options)
        manifest = self._resolve(image_ref)
        with self._alloc_lock:
            if name in self.records:
                raise errors.ContainerExists(f"container {name!r} already exists on this host")
            if len(self.records) >= self.config.max_containers:
                raise errors.NoCapacity(f"host holds its maximum of {self.config.max_containers} containers")
            made = []  # volumes this create made: a failed create removes them again
            try:
                for v in opts.get("volumes") or []:  # a missing volume is made (as docker run -v does)
                    if _blocking(self.volumes.create, v["name"])["created_now"]:
                        made.append(v["name"])
                used = {r["address"] for r in self.records.values() if r.get("address")}
                address = self.network.allocate_address(used)
            except BaseException:
                self._drop_made_volumes(made, name, holding_alloc=True)
                raise
            rec = {"name": name, "image": manifest["id"], "image_name": manifest["name"],
                   "created": time.time(), "address": address, "ports": [], "desired": "stopped",
                   "phase": "creating", "veth": self.network.veth_name(name),
                   "memory_bytes": opts.get("memory_bytes"), "cpus": opts.get("cpus"),
                   "cpu_shares": opts.get("cpu_shares"),
                   "pids_limit": opts.get("pids_limit") or self.config.default_pids_limit, "env": {**manifest.get("env", {}), **opts["env"]},
                   "command": opts.get("command") or manifest.get("command") or [],
                   "restart": supervisor.parse_policy(opts.get("restart")), "restart_count": 0,
                   "events": [], "volumes": opts.get("volumes") or [],
                   # until its first start: a destroy then removes them (see _drop_made_volumes)
                   "volumes_made": made}
            self.records[name] = rec
        with self.locked(name):
            try:
                self.state.save(rec, critical=False)  # a full disk fails the create, keeps the reserve
                self._write_container(rec, manifest)
                rec["phase"] = "ready"
                self._save(rec, critical=False)
            except BaseException:
                self._rollback_create(name)
                raise
            self.events.record("created", name, image=rec["image_name"])
            return self._view(rec, {"state": "STOPPED", "pid": None})

    def _create_options(self, options: dict | None) -> dict:
        return validate.create_options(options, max_cpus=os.cpu_count() or 1)

    def _resolve(self, image_ref: str) -> dict:
        if not isinstance(image_ref, str) or not image_ref:
            raise errors.InvalidArgument("image ref must be a non-empty string like 'busybox' or 'busybox@1a2b'")
        return self.images.resolve(image_ref)

    def _write_container(self, rec: dict, manifest: dict) -> None:
        name = rec["name"]
        upper = self.lxc.prepare(name)
        context = {"name": name, "hostname": name, "address": rec["address"],
                   "prefixlen": self.network.prefixlen, "gateway": self.network.gateway,
                   "host": self.config.host_name, "exposed_ports": manifest.get("exposed_ports", []),
                   "env": rec["env"]}
        # dcfleet's network templates stand in for those an image lacks (an
        # imported rootfs lists none): every container's /etc/hostname and
        # /etc/hosts name it, as for built images
        _blocking(templates.render_templates, self.images, manifest, upper, context, rootfs.NETWORK_TEMPLATES)
        rootfs.write_file(upper, rootfs.ENV_PATH, rootfs.env_file_text(rec["env"]))
        rootfs.write_file(upper, rootfs.COMMAND_PATH, rootfs.command_file_text(rec["command"]))
        if manifest.get("init") == appinit.INIT_PATH:  # an application image: dcfleet's init runs its command
            _blocking(appinit.install, upper, os.path.join(self.images.root, "tools"))
        tmpfs_dirs = (("/tmp", "/run", "/run/lock", "/dev/shm")
                      if (manifest.get("init") or "/sbin/init") == "/sbin/init" else ())
        cfg = ContainerConfig(
            name=name, hostname=name, lower_dirs=self.images.layer_dirs(manifest), upper_dir=upper,
            bridge=self.network.bridge, veth_name=rec["veth"], address=rec["address"],
            prefixlen=self.network.prefixlen, gateway=self.network.gateway,
            console_log=self.lxc.path(name, "console.log"), lxc_log=self.lxc.path(name, "lxc.log"),
            log_fifos=self.log_store.prepare(name),
            init_cmd=manifest.get("init") or "/sbin/init", halt_signal=manifest.get("stop_signal") or "SIGPWR",
            memory_bytes=rec["memory_bytes"], cpus=rec["cpus"], cpu_shares=rec["cpu_shares"],
            pids_limit=rec["pids_limit"],
            # a system image's init (busybox's rcS, systemd) expects tmpfs /tmp,
            # /run, /run/lock and /dev/shm, and cannot mount them itself (no
            # CAP_SYS_ADMIN; systemd refuses to boot without /run/lock)
            tmpfs_dirs=tmpfs_dirs, tmpfs_size_bytes=self.tmpfs_sizes(tmpfs_dirs, rec["memory_bytes"]),
            bind_mounts=tuple((self.volumes.data_dir(v["name"]), v["path"]) for v in rec.get("volumes") or []),
            # the MAC follows the address: a container that gets the address of
            # one just destroyed (a deploy's churn) is reached at once, not
            # after the host's neighbour entry for the old MAC goes stale
            hwaddr=mac_for(rec["address"]))
        self.lxc.write_config(name, cfg, self.layout)

    def tmpfs_sizes(self, dirs: tuple[str, ...], memory_bytes: int | None) -> dict[str, int]:
        """The size of each of a container's tmpfs ``dirs``, bytes: its
        memory limit when it has one (the tmpfs pages it writes are charged
        to its memory cgroup, so the limit bounds them anyway), else the
        agent's ``tmpfs_tmp_size_bytes`` for /tmp and ``tmpfs_size_bytes``
        for every other (/run, /run/lock, /dev/shm).  Without a size a
        tmpfs may hold half the host's RAM, and without a memory limit
        nothing else bounds what a container writes there."""
        if memory_bytes:
            return {d: memory_bytes for d in dirs}
        return {d: self.config.tmpfs_tmp_size_bytes if d == "/tmp" else self.config.tmpfs_size_bytes
                for d in dirs}

    def _rollback_create(self, name: str) -> None:
        try:
            self._remove_files(name)
        finally:
            self.state.delete(name)
            made = (self.records.pop(name, None) or {}).get("volumes_made") or []
            self._unsaved.discard(name)
            self._disk_desired.pop(name, None)
            self._drop_made_volumes(made, name)

    def _drop_made_volumes(self, names: list[str], container: str, holding_alloc: bool = False) -> None:
        """Remove the volumes a container's create made, once that create
        failed or the container goes without ever having started (a hub
        undoing a create whose start failed destroys it): only a volume no
        other container is configured with and whose data dir is empty, so
        a volume that existed before, or holds data, is never removed.
        Best effort (logged): the create's own error is what the caller
        sees.  Takes the allocation lock (creates hold it) unless the
        caller holds it (``holding_alloc``)."""
        if not names:
            return
        with contextlib.nullcontext() if holding_alloc else self._alloc_lock:
            for vol in names:
                try:
                    if volmod.users(self.records, vol) or not self.volumes.exists(vol) \
                            or _blocking(os.listdir, self.volumes.data_dir(vol)):
                        continue
                    _blocking(self.volumes.remove, vol)
                    log.info("removed volume %s, made by the failed create of %s", vol, container)
                except (OSError, errors.DcError) as exc:
                    log.warning("could not remove volume %s made by %s: %s", vol, container, exc)

    def _remove_files(self, name: str) -> None:
        """Remove the container's directory (lxcwrap's ``destroy``, in the
        thread pool), and its log dir (its log writer stopped first).
        Raises StoreError naming the file that stayed."""
        _blocking(self.log_store.remove, name)
        try:
            _blocking(self.lxc.destroy, name)
        except OSError as exc:
            raise errors.StoreError(f"cannot remove {exc.filename or self.lxc.path(name)}: {exc.strerror or exc}",
                                        hint="something holds it (a mount under it?); "
                                             "container_destroy or ops_cleanup finishes it later") from exc

    # ------------------------------------------------------------ start / stop
    def start(self, name: str) -> dict:
        """See AgentService.container_start."""
        with self.locked(name):
            rec = self.record(name)
            pid = self.start_locked(rec)
            return self._view(rec, {"state": "RUNNING", "pid": pid})

    def start_locked(self, rec: dict) -> int | None:
        """Start the container of ``rec`` (a ready record; the caller holds
        its lock, as the supervisor's restarts do): ``desired: running`` is
        written first (a write that fails starts nothing), and put back if
        LXC fails; its port mappings go (back) into the kernel.

        Returns: its init's pid, or None if LXC did not say.
        Raises: OSError (the intent could not be written), lxcwrap errors
        (LxcAlreadyRunning, LxcStartFailed, ...), agents.network errors;
        the agent's service boundary maps them (agents.errmap)."""
        name = rec["name"]
        was = rec["desired"]
        self._set_desired(rec, "running")
        try:
            supervisor.remove_exit(self.upper_dir(name))  # the previous run's must not be taken for this run's
            self.log_store.ensure_writer(name)  # the command's output needs its reader first
            try:
                pid = self.lxc.start(name)
            except lxcerr.LxcStartFailed as exc:
                # A veth left behind by an interrupted stop makes the start
                # fail with "File exists" (PITFALLS); the name is this
                # container's alone and it is not running: remove it, retry.
                text = f"{getattr(exc, 'log_errors', '')} {exc.stderr}"
                if "File exists" not in text or not self.network.remove_stale_veth(rec["veth"]):
                    raise
                pid = self.lxc.start(name)
        except BaseException:
            if was != "running" and self.live_state(name) != "RUNNING":
                rec["desired"] = was
                self.save_soon(rec, critical=True)
            raise
        rec["started_at"] = time.time()
        rec["volumes_made"] = []  # it has run: its volumes are the operator's now
        self.events.record("started", name, image=rec.get("image_name"))
        self.network.enable_hairpin(rec["veth"])
        for m in self._mappings(rec):
            self.network.add_mapping(m)
        self.save_soon(rec)  # started_at; the intent on disk is already true
        return pid

    def stop(self, name: str, timeout_s: float | None) -> dict:
        """See AgentService.container_stop."""
        timeout = self.config.stop_timeout_s if timeout_s is None else validate.stop_timeout(timeout_s)
        with self.locked(name):
            rec = self.record(name)
            self._set_desired(rec, "stopped")  # written before the stop: a failed write stops nothing
            self.lxc.stop(name, timeout_s=timeout)  # LxcNotRunning: ContainerNotRunning at the boundary
            self.events.record("stopped", name, image=rec.get("image_name"))
            return self._view(rec, {"state": "STOPPED", "pid": None})

    # ------------------------------------------------------------ destroy
    def destroy(self, name: str, force: bool) -> dict:
        """See AgentService.container_destroy."""
        with self.locked(name):
            rec = self.record(name, ready=False)
            if rec["phase"] == "creating":
                raise errors.Busy(f"container {name!r} is creating")
            # a destroy cut short (phase destroying) is finished whatever force says
            if rec["phase"] == "ready" and not force and self._maybe_running(rec):
                raise errors.ContainerRunning(
                    f"container {name!r} is running", hint="stop it first, or destroy with force")
            self._destroy(rec)
            self.events.record("destroyed", name, image=rec.get("image_name"))
        self._locks.pop(name, None)
        return {"name": name, "destroyed": True}

    def _destroy(self, rec: dict) -> None:
        """Mark the record destroying (best effort: a destroy needs no space,
        it frees some) and finish the destroy.  The caller holds the lock."""
        if rec["phase"] != "destroying":
            rec["phase"] = "destroying"
            self.save_soon(rec, critical=True)
        self._finish_destroy(rec)

    def _maybe_running(self, rec: dict) -> bool:
        """Whether the container runs: a running container always has its
        host-side veth, so only when the veth exists is LXC asked."""
        if not self.network.link_present(rec["veth"]):
            return False
        return self.live_state(rec["name"]) == "RUNNING"

    def _finish_destroy(self, rec: dict) -> None:
        """Kill it if running, remove its rules, rootfs layer, config, veth
        and record (the agent owns its LXC path: no lxc-destroy needed)."""
        name = rec["name"]
        if self._maybe_running(rec):
            self._kill(name)
        for m in self._mappings(rec):
            self.network.remove_mapping(m)
        self._remove_files(name)
        if self.network.link_present(rec["veth"]):
            self.network.remove_stale_veth(rec["veth"])
        self.state.delete(name)
        self.records.pop(name, None)
        self._unsaved.discard(name)
        self._disk_desired.pop(name, None)
        self._drop_made_volumes(rec.get("volumes_made") or [], name)  # never started: a create undone

    def _kill(self, name: str) -> None:
        """Stop a container at once: ``Lxc.stop(kill=True)`` (its cgroup's
        ``cgroup.kill``, or ``lxc-stop -k``), or if that fails, SIGKILL to
        its init (its monitor then tears it down)."""
        try:
            self.lxc.stop(name, kill=True)
            return
        except lxcerr.LxcNotRunning:
            return
        except lxcerr.LxcError as exc:
            log.warning("the kill of %s failed (%s); killing its init", name, exc)
        try:
            pid = self.lxc.info(name)["pid"]
        except lxcerr.LxcError:
            pid = None
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if not self.lxc.wait(name, "STOPPED", 10):
            raise errors.LxcFailure(f"container {name!r} did not stop when killed")

    # ------------------------------------------------------------ volumes
    def create_volume(self, name: str) -> dict:
        """See agents.volumes.VolumeMethods.volume_create."""
        validate.volume_name(name)
        with self._alloc_lock:
            return _blocking(self.volumes.create, name)

    def remove_volume(self, name: str) -> dict:
        """See agents.volumes.VolumeMethods.volume_rm (refused while a
        container record names the volume; creates hold the same lock)."""
        validate.volume_name(name)
        with self._alloc_lock:
            using = volmod.users(self.records, name)
            if using:
                raise errors.VolumeInUse(f"volume {name!r} is used by {', '.join(using)}",
                                         hint="destroy those containers first")
            return _blocking(self.volumes.remove, name)

    # ------------------------------------------------------------ exec
    def exec(self, name: str, command, options: dict | None) -> dict:
        """See AgentService.container_exec."""
        argv = validate.command(command)
        opts = validate.exec_options(options, max_output_bytes=self.config.exec_max_output_bytes)
        rec = self.record(name)
        env = {**DEFAULT_EXEC_ENV, **rec["env"], **opts["env"]}
        # LxcExecNotFound and LxcNotRunning become CommandNotFound and
        # ContainerNotRunning at the service boundary (agents.errmap)
        self.events.record("exec_started", name, command=argv[:16])
        result = None
        try:
            result = self.lxc.exec(name, argv, env=env, timeout_s=opts["timeout_s"],
                                   max_output_bytes=opts["max_output_bytes"], input_bytes=opts["stdin"])
            return result
        finally:
            self.events.record("exec_ended", name, exit_code=result.get("exit_code") if isinstance(result, dict)
                               else None)

    # ------------------------------------------------------------ port mappings
    def connection_add(self, name: str, proto: str, container_port: int, host_port: int | None) -> dict:
        """See AgentService.container_connection_add."""
        validate.protocol(proto)
        validate.port(container_port, "container port")
        if host_port is not None:
            validate.port(host_port, "host port")
        with self.locked(name):
            rec = self.record(name)
            for p in rec["ports"]:
                if p["proto"] == proto and p["container_port"] == container_port:
                    raise errors.PortInUse(
                        f"{proto}/{container_port} of {name!r} is already mapped to host port {p['host_port']}")
            with self._alloc_lock:
                taken = self._taken_ports()
                if host_port is None:
                    port, dynamic = self.network.allocate_port(proto, taken), True
                else:
                    self.network.check_port_available(proto, host_port, taken)
                    port, dynamic = host_port, False
                entry = {"proto": proto, "host_port": port, "container_port": container_port, "dynamic": dynamic}
                rec["ports"].append(entry)
                try:
                    self._save(rec, critical=False)  # a full disk fails the add, keeps the reserve
                except BaseException:
                    rec["ports"].remove(entry)
                    self._unsaved.discard(name)
                    raise
            mapping = next(m for m in self._mappings(rec) if m["host_port"] == port and m["proto"] == proto)
            try:
                self.network.add_mapping(mapping)
            except BaseException:
                rec["ports"].remove(entry)
                self._save(rec)
                raise
        return {**mapping, "dynamic": dynamic, "host_address": self.config.advertise_address}

    def connection_rm(self, name: str, proto: str, container_port: int) -> dict:
        """See AgentService.container_connection_rm."""
        validate.protocol(proto)
        validate.port(container_port, "container port")
        with self.locked(name):
            rec = self.record(name)
            entry = next((p for p in rec["ports"]
                          if p["proto"] == proto and p["container_port"] == container_port), None)
            if entry is None:
                raise errors.NoSuchPortMapping(f"{name!r} has no mapping for {proto}/{container_port}")
            mapping = next(m for m in self._mappings(rec)
                           if m["host_port"] == entry["host_port"] and m["proto"] == proto)
            rec["ports"].remove(entry)  # written before the rule goes: a failed write changes nothing
            try:
                self._save(rec)
            except BaseException:
                rec["ports"].append(entry)
                self._unsaved.discard(name)
                raise
            try:
                self.network.remove_mapping(mapping)
            except BaseException:
                rec["ports"].append(entry)
                self.save_soon(rec, critical=True)
                raise
        return mapping

    # ------------------------------------------------------------ views
    def live_state(self, name: str) -> str:
        """What LXC says of the container now: "RUNNING", "STOPPED", ...,
        or "MISSING" when LXC does not know it.  Raises LxcError (the tool
        failed)."""
        try:
            return self.lxc.info(name)["state"]
        except lxcerr.LxcNotFound:
            return "MISSING"

    def _view(self, rec: dict, live: dict | None) -> dict:
        if rec["phase"] != "ready":
            state = rec["phase"]
        elif live is None:
            state = "missing"
        else:
            state = live["state"].lower()
        return {"name": rec["name"], "state": state, "image": rec["image_name"], "image_id": rec["image"],
                "address": rec["address"], "created": rec["created"], "desired": rec["desired"],
                "pid": live.get("pid") if live else None,
                "ports": [{"proto": p["proto"], "host_port": p["host_port"],
                           "container_port": p["container_port"]} for p in rec["ports"]],
                "memory_limit_bytes": rec["memory_bytes"], "cpus": rec["cpus"],
                "restart": _policy_text(rec.get("restart")), "restart_count": rec.get("restart_count", 0),
                "last_exit": rec.get("last_exit"),
                "oom_killed": bool((rec.get("last_exit") or {}).get("oom_killed")) and state != "running"}

    def ls(self) -> list[dict]:
        """See AgentService.container_ls."""
        snapshot = list(self.records.values())  # listing never waits on a lock
        live = {c["name"]: c for c in self.lxc.ls()}
        return [self._view(rec, live.get(rec["name"])) for rec in sorted(snapshot, key=lambda r: r["name"])]

    def usage(self, view: dict) -> dict:
        """Cgroup figures of a running container's view (best effort)."""
        if view["pid"]:
            try:
                return cgroup.usage(self.layout, view["pid"])
            except OSError:
                pass
        return {"memory_bytes": None, "memory_limit_bytes": None, "cpu_seconds": None}

    def inspect(self, name: str) -> dict:
        """See AgentService.container_inspect."""
        rec = self.record(name, ready=False)
        try:
            live = self.lxc.info(name)
        except lxcerr.LxcNotFound:
            live = None
        view = self._view(rec, live)
        view.update({"events": rec.get("events", []),
                     "env": rec["env"], "command": rec["command"], "cpu_shares": rec["cpu_shares"],
                     # None: a container made before PID limits (its config has none), or a host
                     # without a pids controller (none is applied)
                     "pids_limit": rec.get("pids_limit") if self.layout.has("pids") else None,
                     "veth": rec["veth"], "gateway": self.network.gateway,
                     "prefixlen": self.network.prefixlen, "host": self.config.host_name,
                     "rootfs_upper": self.upper_dir(name), "volumes": rec.get("volumes") or [],
                     "usage": self.usage(view)})
        return view

    def logs(self, name: str, options: dict | None) -> dict:
        """See AgentService.container_logs (not following)."""
        opts = validate.log_options(options, time.time())
        self.record(name, ready=False)
        return _blocking(self.log_store.read, name, opts["since"], opts["tail"])

    def logs_follow(self, name: str, options: dict | None):
        """See AgentService.container_logs_follow: the stream's iterator
        (arguments checked before the first item)."""
        opts = validate.log_options(options, time.time())
        self.record(name, ready=False)
        return self.log_store.follow(name, opts["since"], opts["tail"],
                                lambda: name in self.records and self.live_state(name) == "RUNNING", _blocking)

    def cleanup(self) -> dict:
        """See AgentService.ops_cleanup."""
        live = {c["name"]: c for c in self.lxc.ls()}
        dropped, stopped, veths, finished, failed = [], [], [], [], {}
        for name, rec in list(self.records.items()):
            if rec["phase"] == "destroying":  # a destroy cut short; one under way holds the lock
                lock = self._locks.setdefault(name, gevent.lock.BoundedSemaphore(1))
                if not lock.acquire(blocking=False):
                    continue
                try:
                    if self.records.get(name) is rec:
                        self._finish_destroy(rec)
                        finished.append(name)
                except Exception as exc:  # noqa: BLE001 - reported, tried again next time
                    log.warning("finishing the destroy of %s failed: %s", name, exc)
                    failed[name] = f"{type(exc).__name__}: {exc}"
                finally:
                    lock.release()
                if name not in self.records:
                    self._locks.pop(name, None)
                continue
            if rec["phase"] != "ready":
                continue
            if not self.lxc.has_config(name):
                with self.locked(name):
                    self._destroy(rec)
                dropped.append(name)
                continue
            state = live.get(name, {}).get("state")
            if state != "RUNNING":
                if rec["desired"] == "running":
                    stopped.append(name)
                if self.network.remove_stale_veth(rec["veth"]):
                    veths.append(rec["veth"])
        cgroups = []
        if not self.config.hollow:
            try:
                cgroups = _blocking(cgroup.remove_stale_lxc_cgroups, None, self.config.stale_cgroup_age_s)
            except Exception as exc:  # noqa: BLE001 - the rest of the clean-up stands; tried again next pass
                log.warning("could not sweep stale LXC cgroups: %s", exc)
        if cgroups:
            log.info("removed %d cgroups left by dead LXC monitors: %s", len(cgroups), cgroups)
        return {"dropped": dropped, "stopped_unexpectedly": stopped, "veths_removed": veths,
                "destroy_finished": finished, "destroy_failed": failed, "cgroups_removed": cgroups}

    def images_in_use(self, image_id: str) -> list[str]:
        return sorted(r["name"] for r in self.records.values() if r["image"] == image_id)

    def ensure_base_images(self) -> None:
        """Build the busybox base image on first use (offline), and the
        compiled log writer (agents/logwriter.py; without a compiler the
        containers' logs are written by agents/logger.py)."""
        with self.images_lock:
            _blocking(busybox.ensure_busybox, self.images)
        self.log_store.writer_binary = _blocking(logwriter.build_writer, os.path.join(self.images.root, "tools"))
        if self.log_store.writer_binary is None:
            log.warning("no compiled log writer (gcc failed?): containers' logs go through agents/logger.py")
