"""Dockerfile builds on one host: a throwaway container, its upper dir the new layer.

``Builder.start(context, name, options)`` checks its arguments and returns a
generator of stream items for the agent's ``image_build_dockerfile``; the
build itself runs in a greenlet of its own, so that a caller who stops
reading (or disconnects) changes nothing about the clean-up:

1. the context (a directory or tar on this host, or a complete upload on
   the hub, fetched and sha256-checked) is unpacked into a staging dir
   (images.tarsafe: no member out of the root, size cap) and the Dockerfile
   parsed (images.dockerfile: unsupported instructions refused with their
   line);
2. the FROM image is resolved locally, else pulled through the hub;
3. a build container is made in the builder's own LXC path
   (``STATE/builds``, never listed as a container): an overlay over the
   base's layers mounted with ``redirect_dir=off,metacopy=off`` (so its
   upper dir is a plain diff, PITFALLS.md), no network (loopback only),
   init ``sleep`` so that nothing but the build writes to it;
4. each RUN runs through lxc-attach (the exec path), its output streamed
   line by line as it comes and kept as the build log; COPY/ADD stream a tar
   of the context files into ``tar -x`` inside the container (owners 0:0 or
   ``--chown``); ENV, ARG, WORKDIR, USER, EXPOSE, CMD, ENTRYPOINT, LABEL,
   VOLUME go into the image config;
5. the container is killed, its upper dir packed into one layer
   (images.layerdiff) and the image committed: the base's layers + this
   layer, the base's fields with the Dockerfile's config on top.

The build container is destroyed whatever happens (error, timeout, a
caller gone: a caller that closes the stream or is lost stops the build at
once, nothing is committed); a failed RUN raises BuildFailed with the tail of the log and
leaves no layer.  An agent that dies mid-build leaves a directory under
STATE/builds that ``recover()`` (at the next start) kills and removes.

Stream items: ``{"log": line}`` (one line of output or a "Step i/n" line),
then one ``{"result": {image, id, name, tag, layer, layer_bytes,
size_bytes, base, duration_s, log_bytes}}``.
"""
from __future__ import annotations

import glob
import io
import logging
import os
import secrets
import shlex
import shutil
import tarfile
import time

import gevent
import gevent.queue

from agents.errmap import translate
from dcctl import buildctx, errors, validate
from images import appinit, dockerfile, layerdiff
from images.errors import ImageNotFound as StoreImageNotFound
from images.errors import InvalidImage as StoreInvalidImage
from images.tarsafe import safe_extract
from lxcwrap import errors as lxcerr
from lxcwrap.config import ContainerConfig
from lxcwrap.lxc import DEFAULT_EXEC_ENV, Lxc

log = logging.getLogger(__name__)

__all__ = ["Builder", "DEFAULT_BUILD_TIMEOUT_SECONDS", "BUILD_OPTIONS"]

DEFAULT_BUILD_TIMEOUT_SECONDS = 1800.0
MAX_BUILD_TIMEOUT_SECONDS = 6 * 3600.0
#: The tail of the log a BuildFailed carries, in bytes.
LOG_TAIL_BYTES = 2000
#: The build log kept in memory (the stream carries all of it), bytes.
LOG_KEEP_BYTES = 4 << 20
#: Items queued for a slow reader before log lines are dropped (counted).
MAX_QUEUED_ITEMS = 10000
BUILD_OPTIONS = {"tag": "image tag", "build_args": "{NAME: value}", "timeout_s": "build timeout, seconds",
                 "dockerfile": "path of the Dockerfile in the context", "max_context_bytes": "context cap",
                 "upload_hubs": "the endpoints of the hub holding the context upload (set by the hub)"}
_OVERLAY_OPTIONS = "redirect_dir=off,metacopy=off"
#: Where the build container's init (sleep) may be, first found wins
#: (merged-/usr images have /bin as a symlink).
_SLEEP = ("/usr/bin/sleep", "/bin/sleep")
_END = object()


def _blocking(fn, *args, **kw):
    return gevent.get_hub().threadpool.apply(fn, args, kw)


def _wire(exc: BaseException) -> errors.DcError:
    if isinstance(exc, errors.DcError):
        return exc
    mapped = translate(exc)
    if mapped is None:
        ref = secrets.token_hex(4)
        log.error("build failed unexpectedly (ref %s)", ref, exc_info=exc)
        mapped = errors.InternalError(f"build failed unexpectedly (ref {ref}); the agent's log has details")
    mapped.__cause__ = exc
    return mapped


class _Log:
    """The build log: lines to the stream queue, the last LOG_KEEP_BYTES kept."""

    def __init__(self, queue: gevent.queue.Queue, secrets_: list[str] | None = None):
        self.queue = queue
        #: build-arg values: never written to the log (each shown as ***)
        self.secrets = sorted({v for v in secrets_ or [] if v}, key=len, reverse=True)
        self.buf = bytearray()
        self.total = 0
        self.dropped = 0
        self._partial = b""

    def line(self, text: str) -> None:
        self._emit(text.encode("utf-8", "replace") + b"\n")

    def output(self, _stream: str, chunk: bytes) -> None:
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        for ln in lines:
            self._emit(ln + b"\n")
        if len(self._partial) > 65536:
            self._emit(self._partial + b"\n")
            self._partial = b""

    def flush(self) -> None:
        if self._partial:
            self._emit(self._partial + b"\n")
            self._partial = b""

    def _emit(self, raw: bytes) -> None:
        for value in self.secrets:
            raw = raw.replace(value.encode("utf-8", "replace"), b"***")
        self.total += len(raw)
        self.buf += raw
        if len(self.buf) > LOG_KEEP_BYTES:
            del self.buf[:len(self.buf) - LOG_KEEP_BYTES]
        if self.queue.qsize() >= MAX_QUEUED_ITEMS:
            self.dropped += 1
            return
        self.queue.put({"log": raw[:-1].decode("utf-8", "replace")})

    def tail(self) -> str:
        return bytes(self.buf[-LOG_TAIL_BYTES:]).decode("utf-8", "replace")


class Builder:
    """Runs Dockerfile builds on this host.

    Args:
        manager: the agent's ContainerManager (its image store, store lock,
            LXC tools, cgroup layout and config).
        puller: the agent's Puller (a missing base comes through the hub).
        hub_keys: CURVE keys towards the hub, or None.
    """

    def __init__(self, manager, puller, hub_keys=None):
        self.m = manager
        self.puller = puller
        self.hub_keys = hub_keys
        self.root = os.path.join(manager.config.state_dir, "builds")
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.lxc = Lxc(self.root, tools=manager.lxc.tools)
        self.running: set[str] = set()
        #: () -> the hub endpoint the agent's link uses now, or None (the
        #: AgentService sets it; default the first of --hub)
        self.current_hub = lambda: (manager.config.hub_endpoints() or [None])[0]

    # ------------------------------------------------------------ recovery
    def recover(self) -> list[str]:
        """Kill and remove build containers no running build owns (an
        earlier agent died mid-build, or a clean-up failed). Returns their
        names. Raises: StoreError (a directory that cannot be removed)."""
        left = []
        for name in sorted(os.listdir(self.root)):
            if name in self.running:
                continue
            self.destroy(name)
            left.append(name)
        return left

    def destroy(self, name: str) -> None:
        """Kill build container ``name`` (if it runs) and remove its
        directory. Raises: StoreError (it cannot be removed)."""
        try:
            self.lxc.stop(name, kill=True)
        except lxcerr.LxcError:
            pass  # not running (or never started)
        self.lxc.wait(name, "STOPPED", 10)
        _blocking(shutil.rmtree, self.lxc.path(name), ignore_errors=True)
        if os.path.exists(self.lxc.path(name)):
            raise errors.StoreError(f"cannot remove build container dir {self.lxc.path(name)}")
        self.lxc.remove_lock(name)

    # ------------------------------------------------------------ entry
    def start(self, context: str, name: str, options: dict | None):
        """Check the arguments and start a build; see the module doc.

        Returns: a generator of stream items.
        Raises: InvalidArgument (bad context, name or option), before any work.
        """
        opts = validate.options(options, BUILD_OPTIONS, "image_build_dockerfile")
        if not isinstance(context, str) or not (os.path.isabs(context) or _is_sha(context)):
            raise errors.InvalidArgument("build context must be an absolute path on this host or an upload id "
                                         "(the sha256 of a context tar uploaded to the hub)")
        if os.path.isabs(context) and not os.path.exists(context):
            raise errors.InvalidArgument(f"build context {context!r} does not exist on this host")
        from images.manifest import validate_name, validate_tag  # noqa: PLC0415 - one grammar
        try:
            validate_name(name)
            if opts.get("tag") is not None:
                validate_tag(opts["tag"])
        except Exception as exc:  # InvalidImage
            raise errors.InvalidArgument(str(exc)) from exc
        timeout = validate.number(opts.get("timeout_s", DEFAULT_BUILD_TIMEOUT_SECONDS), "timeout_s",
                                  minimum=1, maximum=MAX_BUILD_TIMEOUT_SECONDS)
        args = opts.get("build_args") or {}
        if not isinstance(args, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in args.items()):
            raise errors.InvalidArgument("build_args must be {NAME: text}")
        dfile = opts.get("dockerfile", "Dockerfile")
        if not isinstance(dfile, str) or dfile.startswith("/") or ".." in dfile.split("/"):
            raise errors.InvalidArgument("dockerfile must be a relative path inside the context")
        cap = validate.number(opts.get("max_context_bytes", dockerfile.DEFAULT_MAX_CONTEXT_BYTES),
                              "max_context_bytes", minimum=1, maximum=64 << 30, integer=True)
        upload_from = None
        if _is_sha(context):  # the hub holding the upload, one of --hub (InvalidArgument before any work)
            from agents.transfer import upload_source  # noqa: PLC0415
            upload_from = upload_source(opts.get("upload_hubs"), self.m.config.hub_endpoints(), self.current_hub())
        queue: gevent.queue.Queue = gevent.queue.Queue()
        job = _Job(self, queue, context, name, opts.get("tag"), args, dfile, timeout, cap)
        job.upload_from = upload_from
        gevent.spawn(job.run)

        def items():
            try:
                while True:
                    item = queue.get()
                    if item is _END:
                        return
                    if isinstance(item, BaseException):
                        raise item
                    yield item
            finally:
                if not job.done:  # the caller went away (closed, lost): stop the build, clean up
                    job.cancel()

        return items()


def _is_sha(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class _Job:
    """One build (see the module doc); ``run`` always ends the queue."""

    def __init__(self, builder: Builder, queue, context, name, tag, build_args, dfile, timeout_s, cap):
        self.b, self.queue = builder, queue
        self.context, self.name, self.tag = context, name, tag
        self.build_args, self.dfile, self.timeout_s, self.cap = build_args, dfile, timeout_s, cap
        self.log = _Log(queue, list(build_args.values()))
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self.cname = f"bld-{secrets.token_hex(6)}"
        self.upload_from: str | None = None  # the hub endpoint an upload-id context comes from
        self.env: dict[str, str] = {}
        self.args_env: dict[str, str] = {}
        self.workdir = "/"
        self.user = ""
        self.config: dict = {}
        self.done = False
        self.cancelled = False
        self.started_container = False

    def cancel(self) -> None:
        """The caller is gone: no image is committed; a running step ends
        at once (the build container is killed), and the usual clean-up runs."""
        self.cancelled = True
        log.info("build %s abandoned by its caller; stopping it", self.cname)
        if self.started_container:
            gevent.spawn(self._kill_quietly)

    def _kill_quietly(self) -> None:
        try:
            self.b.lxc.stop(self.cname, kill=True)
        except lxcerr.LxcError:
            pass

    def _check_cancelled(self) -> None:
        if self.cancelled:
            raise errors.BuildFailed("the build was abandoned by its caller; nothing was kept")

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def run(self) -> None:
        store = self.b.m.images
        try:
            with store.staging("build-ctx") as stage:
                result = self._build(stage)
            self.queue.put({"result": result})
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the caller, typed
            self.queue.put(_wire(exc))
        finally:
            self.done = True
            self.queue.put(_END)

    # ------------------------------------------------------------ phases
    def _context(self, stage: str) -> str:
        """The context unpacked (or pointed at) as a directory."""
        src = self.context
        ctx = os.path.join(stage, "ctx")
        os.mkdir(ctx, 0o755)
        fetched = None
        if os.path.isdir(src):  # packed as dcctl build packs it: .dockerignore, symlinks out, size cap
            fetched = src = os.path.join(stage, "ctx.tar")
            _blocking(buildctx.pack_context, self.context, src, self.cap, self.dfile)
        if _is_sha(src):
            if not self.upload_from:
                raise errors.InvalidArgument("an upload id needs a hub, and this agent has none")
            from agents.transfer import fetch_upload  # noqa: PLC0415
            fetched = src = fetch_upload(self.upload_from, self.b.hub_keys, src, stage)
        try:
            _blocking(safe_extract, src, ctx, max_bytes=self.cap)
        finally:
            if fetched:
                os.unlink(fetched)
        _blocking(dockerfile.context_files, ctx, self.cap)  # a tree walk: off the loop
        return ctx

    def _base(self, ref: str) -> dict:
        store = self.b.m.images
        try:
            return store.resolve(ref)
        except StoreImageNotFound:
            pass
        hub = self.b.current_hub()  # one endpoint (--hub may list several); every hub serves the registry
        if not hub:
            raise errors.ImageNotFound(f"base image {ref!r} is not on this host and this agent has no hub")
        self.log.line(f"pulling {ref} from the hub")
        try:
            got = self.b.puller.pull(ref, hub, self.b.hub_keys)
        except errors.ImageNotFound as exc:
            raise errors.ImageNotFound(f"base image {ref!r} is neither on this host nor in the hub's registry") from exc
        return got["manifest"]

    def _build(self, stage: str) -> dict:
        ctx = self._context(stage)
        path = os.path.join(ctx, self.dfile)
        if not os.path.isfile(path):
            raise errors.InvalidArgument(f"no {self.dfile} in the build context")
        with open(path, "rb") as f:
            plan = dockerfile.parse(f.read(), self.build_args)
        base = self._base(plan.base)
        self.sleep = _find_sleep(self.b.m.images, base, plan.base)
        self.env = dict(base.get("env") or {})
        self.config = dict(base.get("config") or {})
        self.config.setdefault("labels", {})
        self.workdir = self.config.get("working_dir") or "/"  # a built base's WORKDIR and USER go on
        self.user = self.config.get("user") or ""
        ports = list(base.get("exposed_ports") or [])
        command = list(base.get("command") or [])
        entrypoint, cmd = None, None
        self.b.running.add(self.cname)
        try:
            self._make_container(base)
            total = len(plan.steps)
            for i, step in enumerate(plan.steps, 1):
                self._check_cancelled()
                if self.left_s() <= 0:
                    raise errors.BuildFailed(self._fail_text(f"the build ran past its timeout of {self.timeout_s:g} s"))
                self.log.line(f"Step {i}/{total} : {step.text or step.instruction + ' ' + _show(step.args)}")
                ins = step.instruction
                if ins == "RUN":
                    self._run(step)
                elif ins in ("COPY", "ADD"):
                    self._copy(step, ctx)
                elif ins == "ENV":
                    self.env.update(step.args)
                elif ins == "ARG":
                    self.args_env.update({k: v for k, v in step.args.items() if v is not None})
                elif ins == "WORKDIR":
                    self.workdir = os.path.normpath(os.path.join(self.workdir, step.args))
                    self._exec(["mkdir", "-p", self.workdir], step, what="WORKDIR")
                    self.config["working_dir"] = self.workdir
                elif ins == "USER":
                    self.user = step.args
                    self.config["user"] = step.args
                elif ins == "EXPOSE":
                    ports += [p for p in step.args if p not in ports]
                elif ins == "CMD":
                    cmd = step.args
                elif ins == "ENTRYPOINT":
                    entrypoint = step.args
                elif ins == "LABEL":
                    self.config["labels"].update(step.args)
                elif ins == "VOLUME":
                    self.config["volumes"] = sorted(set(self.config.get("volumes") or []) | set(step.args))
            self.log.flush()
            self._check_cancelled()
            self._stop()
            if entrypoint is not None or cmd is not None:
                ep = entrypoint if entrypoint is not None else list(self.config.get("entrypoint") or [])
                cm = cmd if cmd is not None else ([] if entrypoint is not None else list(self.config.get("cmd") or []))
                self.config["entrypoint"], self.config["cmd"] = ep, cm
            if self.config.get("entrypoint") or self.config.get("cmd"):
                command = list(self.config.get("entrypoint") or []) + list(self.config.get("cmd") or [])
            if (base.get("init") or "/sbin/init") != appinit.INIT_PATH:
                command = _runtime_command(command, self.config.get("working_dir") or "/",
                                           self.config.get("user") or "")
            return self._commit(base, ports, command)
        finally:
            self.b.running.discard(self.cname)
            try:
                self.b.destroy(self.cname)
            except Exception:  # noqa: BLE001 - logged; recover() at the next start finishes it
                log.exception("build container %s not removed", self.cname)

    def _make_container(self, base: dict) -> None:
        lxc, m = self.b.lxc, self.b.m
        if not layerdiff.overlay_features_off():
            log.info("overlay redirect_dir/metacopy default on: the build mounts with %s", _OVERLAY_OPTIONS)
        upper = _blocking(lxc.prepare, self.cname)
        cfg = ContainerConfig(
            name=self.cname, hostname=self.cname, lower_dirs=m.images.layer_dirs(base), upper_dir=upper,
            bridge="", veth_name="", address="127.0.0.1", prefixlen=32, gateway="",
            console_log=lxc.path(self.cname, "console.log"), lxc_log=lxc.path(self.cname, "lxc.log"),
            init_cmd=f"{self.sleep} 2147483647", halt_signal="SIGKILL", no_network=True,
            rootfs_options=_OVERLAY_OPTIONS,
            # a RUN step's fork loop must not use up the host's PIDs either
            pids_limit=m.config.default_pids_limit)
        lxc.write_config(self.cname, cfg, m.layout)
        self._check_cancelled()
        self.started_container = True
        lxc.start(self.cname)

    def _stop(self) -> None:
        try:
            self.b.lxc.stop(self.cname, kill=True)
        except lxcerr.LxcNotRunning:
            pass
        if not self.b.lxc.wait(self.cname, "STOPPED", 15):
            raise errors.LxcFailure(f"build container {self.cname} did not stop")

    def _fail_text(self, why: str) -> str:
        tail = self.log.tail()
        return f"{why}; last lines of the build log:\n{tail}" if tail else why

    def _exec(self, argv: list[str], step, *, what: str, stdin: bytes | None = None, stream: bool = False) -> None:
        self._check_cancelled()
        left = self.left_s()
        if left <= 0:
            raise errors.BuildFailed(self._fail_text(f"the build ran past its timeout of {self.timeout_s:g} s"))
        env = {**DEFAULT_EXEC_ENV, **self.args_env, **self.env}
        out = self.b.lxc.exec(self.cname, argv, env=env, timeout_s=left, max_output_bytes=LOG_KEEP_BYTES,
                              input_bytes=stdin, on_output=self.log.output if stream else None)
        if not stream:
            for chunk in (out["stdout"], out["stderr"]):
                if chunk:
                    self.log.output("stdout", chunk)
        self.log.flush()
        self._check_cancelled()
        if out["timed_out"]:
            raise errors.BuildFailed(self._fail_text(
                f"{what} (Dockerfile line {step.line}) ran past the build timeout of {self.timeout_s:g} s"))
        if out["exit_code"] != 0:
            raise errors.BuildFailed(self._fail_text(
                f"{what} (Dockerfile line {step.line}) failed with exit code {out['exit_code']}"))

    def _run(self, step) -> None:
        argv = list(step.args)
        if self.user and self.user.split(":")[0] not in ("root", "0"):
            argv = ["su", "-s", "/bin/sh", self.user.split(":")[0], "-c", shlex.join(argv)]
        argv = ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", self.workdir, *argv]
        try:
            self._exec(argv, step, what="RUN", stream=True)
        except lxcerr.LxcExecNotFound as exc:
            raise errors.BuildFailed(self._fail_text(f"RUN (Dockerfile line {step.line}): {exc}")) from exc

    def _copy(self, step, ctx: str) -> None:
        spec = step.args
        dest = spec["dest"]
        if not dest.startswith("/"):
            dest = os.path.join(self.workdir, dest)
        sources = []
        for src in spec["srcs"]:
            pattern = os.path.normpath(os.path.join(ctx, src.lstrip("/")))
            if pattern != ctx and not pattern.startswith(ctx + os.sep):
                raise errors.InvalidArgument(f"Dockerfile line {step.line}: {src!r} is outside the build context")
            found = sorted(glob.glob(pattern)) if glob.has_magic(src) else ([pattern] if os.path.lexists(pattern) else [])
            if not found:
                raise errors.BuildFailed(self._fail_text(
                    f"{step.instruction} (Dockerfile line {step.line}): {src!r} is not in the build context"))
            sources += found
        if step.instruction == "ADD":  # a local tar archive is unpacked into dest (as Docker's ADD)
            archives = [src for src in sources if _blocking(_is_archive, src)]
            for src in archives:
                data = _blocking(_rebase_archive, src, os.path.normpath(dest), step.line)
                self._exec(["mkdir", "-p", os.path.normpath(dest)], step, what="ADD")
                self._exec(["tar", "-xf", "-", "-C", "/"], step, what="ADD", stdin=data)
            sources = [src for src in sources if src not in archives]
            if not sources:
                return
        into_dir = dest.endswith("/") or len(sources) > 1 or any(os.path.isdir(s) and not os.path.islink(s)
                                                                  for s in sources)
        dest = os.path.normpath(dest)
        owner = spec["chown"] or (0, 0)
        data, dirs = _blocking(_copy_tar, sources, dest, into_dir, owner)
        self._exec(["mkdir", "-p", *dirs], step, what=step.instruction)
        self._exec(["tar", "-xf", "-", "-C", "/"], step, what=step.instruction, stdin=data)

    def _commit(self, base: dict, ports: list, command: list) -> dict:
        m = self.b.m
        store = m.images
        upper = self.b.lxc.upper_dir(self.cname)
        with m.images_lock:
            self._check_cancelled()
            try:
                layer_id, layer_bytes = _blocking(layerdiff.diff_layer, store, upper)
            except StoreInvalidImage as exc:  # naming a path: the image's, not this host's: the image's, not this host's
                text = str(exc).replace(f"upper dir {upper}: ", "").replace(upper.rstrip("/") + "/", "/")
                raise errors.InvalidImage(f"the built image's {text}") from exc
            try:
                fields = {"exposed_ports": ports, "env": self.env, "command": command,
                          "stop_signal": base.get("stop_signal") or "SIGPWR", "init": base.get("init") or "/sbin/init",
                          "templates": base.get("templates") or [], "parent": base["id"],
                          "config": _manifest_config(self.config)}
                if self.tag:
                    fields["tag"] = self.tag
                manifest = _blocking(store.commit, self.name, [*base["layers"], layer_id], **fields)
            except BaseException:
                store.drop_layer_if_unused(layer_id, {d for mm in store.ls() for d in mm["layers"]})
                raise
            store.unpin(layer_id)
        shown = manifest["name"] + (f":{self.tag}" if self.tag else "")
        self.log.line(f"built {shown}@{manifest['id'][:12]} (layer {layer_id[:12]}, {layer_bytes} bytes)")
        return {"image": f"{manifest['name']}@{manifest['id'][:12]}", "id": manifest["id"], "name": manifest["name"],
                "tag": manifest.get("tag") or "latest", "layer": layer_id, "layer_bytes": layer_bytes,
                "size_bytes": manifest["size_bytes"], "base": base["id"],
                "duration_s": round(time.monotonic() - self.started, 3), "log_bytes": self.log.total}


def _runtime_command(command: list[str], workdir: str, user: str) -> list[str]:
    """A system image's command (its init's run script starts it in / as
    root) made to start in WORKDIR as USER, as Docker runs it: wrapped in
    ``sh -c 'cd ...'`` and ``su`` only when they are not / and root."""
    if not command:
        return command
    name = user.split(":")[0]
    if name and name not in ("root", "0"):
        command = ["su", "-s", "/bin/sh", name, "-c", "exec " + shlex.join(command)]
    if workdir not in ("", "/"):
        command = ["/bin/sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", workdir, *command]
    return command


def _find_sleep(store, manifest: dict, ref: str) -> str:
    """The path of ``sleep`` in the image (the build container's init).
    Raises: InvalidImage (none: a build needs a shell image)."""
    for path in _SLEEP:
        try:
            if store.find_file(manifest, path) is not None:
                return path
        except Exception:  # noqa: BLE001 - a symlink on the way (merged /usr): try the next
            continue
    raise errors.InvalidImage(f"base image {ref!r} has no {' or '.join(_SLEEP)} (a build needs a shell image)")


def _manifest_config(cfg: dict) -> dict:
    out = {"entrypoint": list(cfg.get("entrypoint") or []), "cmd": list(cfg.get("cmd") or []),
           "working_dir": str(cfg.get("working_dir") or ""), "user": str(cfg.get("user") or ""),
           "volumes": list(cfg.get("volumes") or []), "labels": dict(cfg.get("labels") or {})}
    return out


def _show(args) -> str:
    if isinstance(args, list) and all(isinstance(a, str) for a in args):
        return args[2] if args[:2] == ["/bin/sh", "-c"] and len(args) == 3 else shlex.join(args)
    return str(args)


def _is_archive(path: str) -> bool:
    """Whether ``path`` is a regular file that is a tar archive (plain, gzip,
    bzip2 or xz)."""
    if os.path.islink(path) or not os.path.isfile(path):
        return False
    try:
        with tarfile.open(path, "r:*") as tar:
            return tar.next() is not None
    except (tarfile.TarError, OSError, EOFError):
        return False


def _rebase_archive(path: str, dest: str, line: int) -> bytes:
    """The archive's members as a plain tar (in memory) placed under
    ``dest``; owners and modes as the archive has them.

    Raises: InvalidImage (an absolute member, one climbing out with
    ``..``, a link pointing out of ``dest``, a device node)."""
    buf = io.BytesIO()
    with tarfile.open(path, "r:*") as src, tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as out:
        for m in src:
            name = os.path.normpath(m.name)
            if m.name.startswith("/") or name == ".." or name.startswith("../"):
                raise errors.InvalidImage(f"Dockerfile line {line}: ADD {os.path.basename(path)}: member "
                                          f"{m.name!r} is outside the archive")
            if m.isdev() or m.isfifo():
                raise errors.InvalidImage(f"Dockerfile line {line}: ADD {os.path.basename(path)}: member "
                                          f"{m.name!r} is a device node or fifo")
            if m.islnk():
                m.linkname = os.path.join(dest, os.path.normpath(m.linkname)).lstrip("/")
            if name == ".":
                continue
            m.name = os.path.join(dest, name).lstrip("/")
            out.addfile(m, src.extractfile(m) if m.isreg() else None)
    return buf.getvalue()


def _copy_tar(sources: list[str], dest: str, into_dir: bool, owner: tuple[int, int]) -> tuple[bytes, list[str]]:
    """A tar (in memory) of the COPY sources placed at ``dest``, owned by
    ``owner``, and the directories to create first."""
    buf = io.BytesIO()
    dirs = {dest} if into_dir else {os.path.dirname(dest) or "/"}
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        def add(path: str, arc: str) -> None:
            info = tar.gettarinfo(path, arcname=arc.lstrip("/"))
            info.uid, info.gid = owner
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)

        for src in sources:
            if os.path.isdir(src) and not os.path.islink(src):
                for top, subdirs, files in os.walk(src):
                    subdirs.sort()
                    rel = os.path.relpath(top, src)
                    here = dest if rel == "." else os.path.join(dest, rel)
                    if rel != ".":
                        add(top, here)
                    for f in sorted(files):
                        add(os.path.join(top, f), os.path.join(here, f))
                    for d in subdirs:
                        if os.path.islink(os.path.join(top, d)):
                            add(os.path.join(top, d), os.path.join(here, d))
            else:
                add(src, os.path.join(dest, os.path.basename(src)) if into_dir else dest)
    return buf.getvalue(), sorted(dirs)
