"""The host agent's RPC surface: the only methods a caller can reach.

Every method checks its arguments before any work (arity and types by the
wire layer from the annotations below, meaning here), and raises the
``dcctl.errors`` types named in its docstring.  Beside those, any method can
raise InvalidArgument (wrong arity or argument types, from the wire layer)
and PermissionDenied (the caller's role may not call it; read-only methods
are marked ``access="read"``).  Mutations are shielded: a caller that gives
up does not leave half-made work.  Sizes are bytes, durations seconds,
timestamps Unix seconds; results are maps with string keys.
"""
from __future__ import annotations

import logging
import os
import platform
import time

import gevent

from agents import hostinfo
from agents.build import Builder
from agents.containers import ContainerManager
from agents.errmap import translate
from agents.progress import ProgressMethods
from agents.enter import EnterRelay
from agents.events import EventMethods
from agents.transfer import Puller, fetch_upload, upload_source
from agents.volumes import VolumeMethods
from images import oci
from images.debootstrap import build_debian
from images.errors import InvalidImage
from images.manifest import normalize_fields, parse_full_ref
from dcctl import errors, validate
from dcctl.wire import expose, validate_endpoint
from lxcwrap.lxc import DEFAULT_EXEC_ENV
from lxcwrap.run import ToolTimeout
from lxcwrap.run import run as run_tool

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
LOG_MAX_BYTES = validate.LOG_MAX_BYTES


class AgentService(VolumeMethods, EventMethods, ProgressMethods):
    """The methods served by ``dc-agent`` (see the README's method reference;
    volumes: agents.volumes; container events: agents.events)."""

    #: the membership link (agents.hubclient.HubLink) once dc-agent runs one
    hub_link = None

    def current_hub(self) -> str | None:
        """The hub endpoint this agent uses now: its link's, else the first
        of --hub (None without a hub)."""
        if self.hub_link is not None:
            return self.hub_link.endpoint
        hubs = self.m.config.hub_endpoints()
        return hubs[0] if hubs else None

    def __init__(self, manager: ContainerManager, relay: EnterRelay, hub_keys=None):
        self.m = manager
        self.relay = relay
        self.started = time.time()
        self.puller = Puller(manager.images, manager.images_lock)
        self.hub_keys = hub_keys  # CURVE keys towards the hub (image pulls)
        self.builder = Builder(manager, self.puller, hub_keys)  # Dockerfile builds (agents/build.py)
        self.builder.current_hub = self.current_hub  # uploads and base images come from the hubs
        left = self.builder.recover()
        if left:
            log.warning("removed build containers an earlier run left: %s", ", ".join(left))
        self.metrics_url: str | None = None  # the Prometheus endpoint's URL (agents/metrics.py), once served

    # ------------------------------------------------------------ images
    @expose(access="read")
    def image_ls(self) -> list:
        """List local images.

        Returns: [{name, tag ("latest" if the image has none), id (64 hex),
        created (Unix s), size_bytes, layers (sha256 digests, bottom first),
        exposed_ports [{proto, port}], command (argv list)}].
        """
        return [{**{k: m.get(k) for k in ("name", "id", "created", "size_bytes", "layers",
                                          "exposed_ports", "command")}, "tag": m.get("tag") or "latest"}
                for m in self.m.images.ls()]

    @expose(shielded=True)
    def image_import(self, path: str, name: str, options: dict | None = None) -> dict:
        """Import an image file on this host: an OCI image layout
        (directory), an OCI archive, a ``docker save`` archive (legacy or the
        OCI form of Docker 25+), or a rootfs tarball (plain, gzip, xz, bzip2;
        one layer).  Digests, sizes and diff_ids are checked, whiteouts
        applied; see images.oci.

        Args:
            path: absolute path on the agent's host; ``PATH:TAG`` picks one
                image of a layout or archive holding several.
            name: ``NAME`` or ``NAME:TAG`` (default tag: PATH's, else the
                archive's own, else "latest").
            options: {format: "oci"|"oci-archive"|"docker-archive"|"rootfs"
                (default: detected)}; for a rootfs tarball also
                {exposed_ports: a port or a list of ports, each 80 (tcp),
                "80/tcp", "53/udp" or {proto, port} (stored as [{proto,
                port}]), env: {K: V}, command: [argv],
                stop_signal: "SIGPWR", init: "/sbin/init", templates:
                [absolute paths in the rootfs]}.

        Returns: the image manifest {id, name, tag, created, layers,
        size_bytes, exposed_ports, env, command, stop_signal, init,
        templates, config (OCI/docker formats)}.

        Raises: InvalidArgument (bad path, name or option, before any
        work), InvalidImage (hostile or
        broken archive; nothing is kept), AmbiguousImageRef (several images
        and no :TAG), ImageNotFound (no such :TAG), StoreError (I/O, disk full).
        """
        return self.prepare_import(path, name, options)(None)

    def prepare_import(self, path: str, name: str, options: dict | None = None):
        """image_import's arguments checked (InvalidArgument before any
        work); its work as import_work's ``work(progress)``."""
        if not isinstance(path, str) or not os.path.isabs(path):
            raise errors.InvalidArgument(f"image path {path!r} must be an absolute path")
        real, select = oci.split_source(path)
        if not (os.path.isfile(real) or os.path.isdir(real)):
            raise errors.InvalidArgument(f"image path {real!r} is not a file or directory on this host")
        base, tag, prefix = parse_full_ref(name)
        if prefix:
            raise errors.InvalidArgument(f"image name {name!r}: want NAME or NAME:TAG, no @id")
        allowed = {"exposed_ports": "", "env": "", "command": "", "stop_signal": "", "init": "", "templates": "",
                   "format": "oci, oci-archive, docker-archive or rootfs"}
        opts = validate.options(options, allowed, "image_import")
        fmt = opts.pop("format", None)
        if fmt is not None and fmt not in ("oci", "oci-archive", "docker-archive", "rootfs"):
            raise errors.InvalidArgument(f"invalid image_import format {fmt!r}: want oci, oci-archive, "
                                         "docker-archive or rootfs")
        try:  # every manifest field checked (and normalized) before any work
            fields = normalize_fields(opts)
        except InvalidImage as exc:
            raise errors.InvalidArgument(f"image_import option: {exc}") from exc
        opts = {k: fields[k] for k in opts}
        return self.import_work(real, base, tag, select=select, fmt=fmt, rootfs_options=opts)

    def import_work(self, path: str, name: str, tag: str | None, **kwargs):
        """The work of an import whose arguments are checked: a function
        ``work(progress)`` that takes the image lock and runs
        images.oci.import_image in the thread pool (the loop and its
        heartbeats go on), ``progress(step, done_bytes, total_bytes)`` being
        import_image's callback (called from the pool's thread) or None.
        Returns (of work): the manifest.  Raises: as image_import."""
        def work(progress=None):
            with self.m.images_lock:
                return gevent.get_hub().threadpool.apply(
                    lambda: oci.import_image(self.m.images, path, name, tag, progress=progress, **kwargs))
        return work

    @expose(shielded=True)
    def image_import_upload(self, upload_id: str, name: str, options: dict | None = None) -> dict:
        """Called by the hub for ``dcctl image_push FILE NAME``: copy a
        complete upload from the hub (chunked, sha256-checked), import it as
        image_import does, and remove the copy.

        Args: upload_id: the file's sha256; name: ``NAME[:TAG]``; options:
        {select: the tag of one image in a layout holding several, format,
        upload_hubs: the calling hub's endpoints (several hubs: the upload
        is fetched from the first of them in this agent's --hub list, see
        agents.transfer.upload_source; default the hub the link uses)}.
        Returns: the manifest.
        Raises: InvalidArgument (no hub), NoSuchUpload, and image_import's errors.
        """
        return self.import_upload_work(upload_id, name, options)(None)

    def import_upload_work(self, upload_id: str, name: str, options: dict | None):
        """image_import_upload's arguments checked (InvalidArgument before
        any work); its work as ``work(progress)``, ``progress(step,
        done_bytes, total_bytes)`` being called with step "copy" as the
        upload is copied from the hub, then as import_work's.  Returns (of
        work): the manifest."""
        opts = validate.options(options, {"select": "tag in a layout", "format": "image format",
                                          "upload_hubs": "the endpoints of the hub holding the upload"},
                                "image_import_upload")
        base, tag, prefix = parse_full_ref(name)
        if prefix:
            raise errors.InvalidArgument(f"image name {name!r}: want NAME or NAME:TAG, no @id")
        source = upload_source(opts.get("upload_hubs"), self.m.config.hub_endpoints(), self.current_hub())

        def work(progress=None):
            copied = None if progress is None else (lambda done, total: progress("copy", done, total))
            path = fetch_upload(source, self.hub_keys, upload_id, self.m.images.tmp_dir, progress=copied)
            try:
                return self.import_work(path, base, tag, select=opts.get("select"),
                                        fmt=opts.get("format"))(progress)
            finally:
                os.unlink(path)
        return work

    @expose(shielded=True)
    def image_export(self, ref: str, path: str, options: dict | None = None) -> dict:
        """Write an image to a file or directory on this host, readable by
        skopeo, umoci and ``docker load``.

        Args:
            ref: ``name``, ``name:tag`` or ``name@idprefix``.
            path: absolute path to create (must not exist).
            options: {format: "oci" (default: an OCI image layout
                directory), "oci-archive" (the layout as a tar) or
                "docker-archive" (``docker save``'s legacy form)}.

        Returns: {path, format, id, name, tag, bytes (written)}.

        Raises: InvalidArgument (bad path), InvalidImage (bad format, path
        exists), ImageNotFound, AmbiguousImageRef, StoreError (I/O; nothing
        is left at path).
        """
        if not isinstance(path, str) or not os.path.isabs(path):
            raise errors.InvalidArgument(f"export path {path!r} must be an absolute path")
        opts = validate.options(options, {"format": "oci, oci-archive or docker-archive"}, "image_export")
        return gevent.get_hub().threadpool.apply(oci.export_image,
                                                 (self.m.images, ref, path, opts.get("format", "oci")))

    @expose(shielded=True)
    def image_rm(self, ref: str) -> dict:
        """Remove an image and the layers no other image uses.

        Args: ref: ``name`` or ``name@idprefix`` (4+ hex digits).
        Returns: {id, name, removed_layers [digests no other image used],
        freed_bytes}.
        Raises: ImageNotFound, AmbiguousImageRef, ImageInUse (names the
        containers using it), StoreError (I/O).
        """
        with self.m.images_lock:
            manifest = self.m.images.resolve(ref)
            return self.m.images.remove(ref, in_use_by=self.m.images_in_use(manifest["id"]),
                                        offload=lambda fn, *a: gevent.get_hub().threadpool.apply(fn, a))

    @expose(access="read", redact_env=False)
    def image_manifest(self, ref: str) -> dict:
        """An image's manifest and its layer sizes, for a peer pulling it.

        Args: ref: ``name`` or ``name@idprefix``.
        Returns: {manifest (as image_import returns it), layer_sizes
        {digest: size in bytes of its tar}}.
        Raises: ImageNotFound, AmbiguousImageRef.
        """
        return self.puller.manifest(ref)

    @expose(access="read")
    def image_layer_read(self, digest: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes (at most 4 MiB) of a layer tar from
        ``offset`` (bytes); b"" past the end.

        Args: digest: the layer's sha256 (64 hex); offset, length: bytes,
        integers from 0 to 2**63-1.
        Returns: bytes (b"" at or past the end, however far: agents/
        transfer.py, dcctl.files.read_range).
        Raises: ImageNotFound (no such layer), InvalidArgument (an offset
        or length outside 0 to 2**63-1).
        """
        return self.puller.read_layer(digest, offset, length)

    @expose(shielded=True)
    def image_pull(self, ref: str, source: str | None = None) -> dict:
        """Pull an image from ``source`` (an endpoint serving image_manifest
        and image_layer_read; default: this agent's hub) unless present.
        Layers move in 4 MiB chunks, each layer is checked against its
        sha256, and a failed pull leaves nothing; concurrent pulls of one
        image download it once.

        Args: ref: ``name`` or ``name@idprefix``; source: ``tcp://host:port``
        or ``ipc:///path``, or None for the hub.

        Returns: {manifest, pulled (False when it was already here), bytes
        (transferred)}.
        Raises: InvalidArgument (no source, bad endpoint), ImageNotFound,
        AmbiguousImageRef, StoreError (digest mismatch, I/O, disk full),
        Unreachable, CallTimeout.
        """
        if source is None and len(self.m.config.hub_endpoints()) > 1:
            return self._pull_from_hubs(ref)
        source = source or self.current_hub()
        if not source:
            raise errors.InvalidArgument("no source given and this agent has no hub")
        validate_endpoint(source)
        keys = self.hub_keys if source in self.m.config.hub_endpoints() else None
        return self.puller.pull(ref, source, keys)

    def _pull_from_hubs(self, ref: str) -> dict:
        """image_pull from this agent's hubs, the current one first
        (Puller.pull_from_any)."""
        hubs = self.m.config.hub_endpoints()
        current = self.current_hub()
        order = [current] + [h for h in hubs if h != current] if current in hubs else hubs
        return self.puller.pull_from_any(ref, order, self.hub_keys)

    @expose(shielded=True)
    def image_build(self, kind: str, name: str | None = None, options: dict | None = None) -> dict:
        """Build a full-distribution image with debootstrap (minbase) from the
        Debian mirror apt on this host already uses (about a minute and
        150-200 MB).

        Args:
            kind: "debian" (the only kind so far).
            name: image name (default: the kind).
            options: {suite: "bookworm", mirror: URL}.

        Returns: the manifest (as image_import returns it).
        Raises: InvalidArgument (unknown kind or option), StoreError (the
        build failed; nothing is kept).
        """
        if kind != "debian":
            raise errors.InvalidArgument(f"unknown image kind {kind!r}; known: debian")
        opts = validate.options(options, {"suite": "Debian suite", "mirror": "mirror URL"}, "image_build")
        with self.m.images_lock:
            return gevent.get_hub().threadpool.apply(
                build_debian, (self.m.images,), {"name": name or kind, **opts})

    @expose(stream=True)
    def image_build_dockerfile(self, context: str, name: str, options: dict | None = None):
        """Build an image from a Dockerfile in a throwaway container on this
        host (see agents/build.py): its overlay upper dir becomes one new
        layer on top of the FROM image's layers.  A stream.

        Args:
            context: the build context: an absolute path on this host (a
                directory, or a tar: plain, gzip, xz, bzip2), or the
                sha256 of a context tar uploaded to the hub
                (image_upload_begin/chunk; fetched and digest-checked).
            name: the new image's name.
            options: {tag, build_args {NAME: value}, timeout_s (default
                1800, the whole build), dockerfile (path in the context,
                default "Dockerfile"), max_context_bytes (default 256 MiB),
                upload_hubs (the hub's endpoints: an upload-id context is
                fetched from the first of them in --hub; see
                agents.transfer.upload_source)}.

        Returns: a stream of {"log": line} items as the build runs (RUN output as it
        comes), then one {"result": {image ("name@id12"), id, name, tag,
        layer (the new layer's digest), layer_bytes (its tar's size),
        size_bytes (the image's), base (image id), duration_s,
        log_bytes}}.

        Raises: InvalidArgument (bad context, name or option, before any
        work), InvalidImage (an unsupported or malformed Dockerfile
        instruction, named by line; a hostile context: a symlink out of it,
        over its size cap), ImageNotFound (the FROM image is neither here
        nor in the hub's registry), BuildFailed (a RUN exited non-zero or
        the build ran past timeout_s: the message ends with the log's
        tail), StoreError (disk full during the commit), NoSuchUpload.  In
        every error case no build container, layer or image is left.
        """
        return self.builder.start(context, name, options)

    @expose(shielded=True)
    def image_gc(self) -> dict:
        """Remove layers no image uses and staging leftovers.

        Returns: {removed_layers [digests], freed_bytes}.
        Raises: StoreError (I/O)."""
        with self.m.images_lock:
            return gevent.get_hub().threadpool.apply(self.m.images.gc)

    # ------------------------------------------------------------ containers
    @expose(shielded=True)
    def container_create(self, image: str, name: str, options: dict | None = None) -> dict:
        """Create a container from an image (not started).

        Args:
            image: image ref, ``name`` or ``name@idprefix``.
            name: fleet-unique name, 1-64 chars of [A-Za-z0-9_.-], dotted
                like ``jerome.awesome.web``; also its hostname.
            options: {memory_bytes: int (LXC cgroup memory limit; v1
                memory.limit_in_bytes or v2 memory.max, as the host runs),
                cpus: float (CPU quota), cpu_shares: int, pids_limit: int
                (most processes and threads, 16-4194304: the pids cgroup's
                pids.max; default the agent's default_pids_limit, 4096),
                env: {K: V}, command: [argv] or "shell string", restart:
                "no" (default) | "always" | "on-failure" | "on-failure:N"
                (Docker's names; the container lives as long as its
                command, see agents.supervisor)}.

        A system image's container (init /sbin/init) gets tmpfs /tmp, /run,
        /run/lock and /dev/shm, each as large as its memory_bytes when it
        has one, else the agent's tmpfs_tmp_size_bytes (/tmp, 256 MiB) and
        tmpfs_size_bytes (the others, 64 MiB each).

        The rootfs is an overlay of the image's layers with a per-container
        upper dir; the image's templates are rendered into it (Jinja2) with
        name, hostname, address, prefixlen, gateway, host, exposed_ports, env.
        /etc/hostname, /etc/hosts and /etc/network/interfaces come from
        dcfleet's own templates when the image has none for them (an
        imported rootfs), wherever the image has their directory.
        A static address on the agent's bridge is allocated and kept.

        Returns: the container's container_ls row (name, state "stopped",
        image, image_id, address, created, desired, pid None, ports [],
        memory_limit_bytes, cpus, restart, restart_count, last_exit,
        oom_killed); container_inspect gives more.

        Raises: InvalidArgument, ImageNotFound, AmbiguousImageRef,
        ContainerExists, NoCapacity (the host's max_containers),
        AddressPoolExhausted, StoreError, LxcFailure. On any error nothing
        is left: no record, directory, address or rule.
        """
        return self.m.create(image, name, options)

    @expose(shielded=True)
    def container_start(self, name: str) -> dict:
        """Start a container (``lxc-start -d``; its monitor outlives the agent);
        its port mappings are put (back) in the kernel.

        ``desired: running`` is written before LXC is asked, and put back
        if the start fails, so the record always tells what LXC does.

        Returns: the container's container_ls row, with state "running"
        and pid (its init's pid on the host, or None if LXC did not say).
        Raises: NoSuchContainer, ContainerRunning, LxcFailure (with the LXC
        log's errors), Busy (another call holds it, or it is being created
        or destroyed), StoreError (the disk is full even for the state
        store's reserve: nothing was started).
        """
        return self.m.start(name)

    @expose(shielded=True)
    def container_stop(self, name: str, timeout_s: float | None = None) -> dict:
        """Stop a container: its image's halt signal (lxc.signal.halt), then
        SIGKILL after ``timeout_s`` seconds (default: the agent's
        stop_timeout_s, 10 s).

        Its desired state becomes "stopped" (written before the stop): the
        supervisor does not restart it, across agent restarts too.

        Returns: the container's container_ls row, with state "stopped" and
        pid None.
        Raises: NoSuchContainer, ContainerNotRunning, Busy, InvalidArgument
        (timeout_s outside 0..3600), StoreError (the disk is full even for
        the state store's reserve: nothing was stopped; container_destroy
        still works).
        """
        return self.m.stop(name, timeout_s)

    @expose(shielded=True)
    def container_destroy(self, name: str, force: bool = False) -> dict:
        """Destroy a container: its rootfs upper layer, address, port
        mappings (kernel rules) and record.

        Args: force: stop (kill) it first if running.
        Returns: {name, destroyed: True}.

        A destroy needs no disk space (its "destroying" mark is written if
        the disk takes it), so a container that filled the disk can always
        be destroyed.  One cut short (the record stays ``destroying``) is
        finished by the next container_destroy, ops_cleanup or agent start.

        Raises: NoSuchContainer, ContainerRunning (unless force), Busy,
        NetworkError, LxcFailure, StoreError (a file could not be removed;
        the record stays ``destroying``).
        """
        return self.m.destroy(name, force)

    @expose(access="read")
    def container_ls(self) -> list:
        """List this host's containers (never waits for a busy container).

        Returns: [{name, state ("running", "stopped", "creating",
        "destroying", ...), image, image_id, address, created, desired, pid,
        ports [{proto, host_port, container_port}], memory_limit_bytes, cpus,
        restart, restart_count, last_exit {status, oom_killed, at, ran_s} |
        None, oom_killed (stopped by the kernel's OOM killer)}], sorted by
        name; created and at are Unix s, ran_s seconds.
        Raises: LxcFailure (lxc-ls failed).
        """
        return self.m.ls()

    @expose(access="read")
    def container_inspect(self, name: str) -> dict:
        """Everything about one container.

        Returns: container_ls's keys plus events [{at, kind
        (exited|oom|restarted|restart_gave_up|restart_failed), ...}], env,
        command, cpu_shares, pids_limit (None for a container made before
        PID limits, or on a host without a pids controller), veth, gateway, prefixlen, host, rootfs_upper and
        usage {memory_bytes, memory_limit_bytes, cpu_seconds} read from its
        cgroup (whole subtree; None when it does not run).

        Raises: NoSuchContainer, LxcFailure.
        """
        return self.m.inspect(name)

    @expose
    def container_exec(self, name: str, command: list | str, options: dict | None = None) -> dict:
        """Run a command in a running container (``lxc-attach --clear-env``).

        Args:
            command: argv list, or a string run with ``/bin/sh -c``.
            options: {timeout_s: float (default 300), env: {K: V},
                max_output_bytes: int per stream (default and cap 16 MiB),
                stdin: bytes}.

        Returns: {exit_code, stdout (bytes), stderr (bytes),
        stdout_truncated, stderr_truncated (output over max_output_bytes was
        dropped), stdout_incomplete, stderr_incomplete (a process the command
        left running in the background still held the stream open when the
        command exited: the bytes are those read by then, and that process
        keeps running), duration_s, timed_out}.  The call returns when the
        command exits, not when its background children do (as LXD's exec).

        Raises: NoSuchContainer, ContainerNotRunning, CommandNotFound,
        InvalidArgument (empty command, unknown option, caps exceeded),
        Busy.
        """
        return self.m.exec(name, command, options)

    @expose
    def container_enter(self, name: str, command: list | str | None = None, options: dict | None = None) -> dict:
        """Open an interactive session (a TTY, like ``docker exec -it``).

        Args:
            command: argv list or shell string (default: /bin/sh -l).
            options: {via: "tcp"|"ipc"} which relay to use (default: the
                one matching how the caller reached the agent; dcctl sets it).

        Returns: {token, transport ("tcp"|"ipc"), port | path, expires_s}.
        Connect a ZeroMQ PAIR socket there within expires_s seconds and send
        ["hello", token, rows, cols]; see agents.enter for the protocol.
        ``dcctl container_enter NAME`` does all this.

        Raises: NoSuchContainer, ContainerNotRunning, InvalidArgument
        (bad command or option).
        """
        opts = validate.enter_options(options)
        argv = validate.command(command) if command is not None else ["/bin/sh", "-l"]
        rec = self.m.record(name)
        if self.m.live_state(name) != "RUNNING":
            raise errors.ContainerNotRunning(f"container {name!r} is not running")
        env = {**DEFAULT_EXEC_ENV, **rec["env"]}
        return self.relay.open(lambda tty: self.m.lxc.attach_tty(name, argv, env, tty),
                               via_tcp=opts.get("via") == "tcp")

    @expose(access="read")
    def container_logs(self, name: str, options: dict | None = None) -> dict:
        """The container's log: its command's stdout and stderr, one record
        per line, as its log writer (agents.logger, a process that outlives
        the agent) wrote them, oldest first.

        Args: options: {since: Unix s or an age "90s"/"10m"/"2h"/"1d" (only
        records from then on), tail: 0..100000 (only the last N),
        timestamps: bool (for dcctl's display), follow: bool (refused here:
        use container_logs_follow, which dcctl calls for --follow)}.
        Returns: {name, lines: [{at (Unix s), stream ("stdout"|"stderr"),
        text}], truncated (more than 10000 matched: the newest are given),
        dropped_records, dropped_bytes (lost by the writer: a full disk)}.
        Raises: NoSuchContainer, InvalidArgument (an unknown option, a since
        in the future, a tail out of range, follow).
        """
        if (options or {}).get("follow"):
            raise errors.InvalidArgument("container_logs does not follow; call container_logs_follow (a stream)",
                                         hint="dcctl container_logs NAME --follow does")
        return self.m.logs(name, options)

    @expose(access="read", stream=True)
    def container_logs_follow(self, name: str, options: dict | None = None):
        """A stream of the container's log: the records on disk (as
        container_logs selects them, in items of at most 500), then each
        record as it is written, across rotations; it ends when the
        container no longer runs, or is destroyed.

        Args: options: as container_logs' (follow is implied).
        Returns: a stream; each item {name, lines: [{at, stream, text}]}; the first at once
        (maybe with no lines).
        Raises: NoSuchContainer, InvalidArgument (before the first item).
        """
        return self.m.logs_follow(name, {k: v for k, v in (options or {}).items() if k != "follow"})

    @expose(shielded=True)
    def container_connection_add(self, name: str, proto: str, container_port: int,
                                 host_port: int | None = None) -> dict:
        """Map a host port to a container port (iptables DNAT in the kernel,
        so it forwards while the agent is down; reachable on the host's
        addresses and on 127.0.0.1).

        Args:
            proto: "tcp" or "udp".
            container_port: 1-65535.
            host_port: explicit host port, or None for a free one from the
                agent's port range (kept across stop/start and agent restarts).

        Returns: {container, proto, host_port, container_address,
        container_port, dynamic (the host port came from the range),
        host_address (this host's advertise_address, "" if none)}.

        Raises: NoSuchContainer, InvalidArgument, PortInUse,
        PortRangeExhausted, Busy, NetworkError (iptables failed).
        """
        return self.m.connection_add(name, proto, container_port, host_port)

    @expose(shielded=True)
    def container_connection_rm(self, name: str, proto: str, container_port: int) -> dict:
        """Remove a port mapping and its kernel rules.

        Args: proto: "tcp" or "udp"; container_port: 1-65535.
        Returns: the removed mapping {container, proto, host_port,
        container_address, container_port}.
        Raises: NoSuchContainer, NoSuchPortMapping, InvalidArgument, Busy,
        NetworkError.
        """
        return self.m.connection_rm(name, proto, container_port)

    # ------------------------------------------------------------ host
    @expose(access="read")
    def network_ls(self) -> dict:
        """This host's container network.

        Returns: {bridge, subnet (CIDR), gateway, port_range [low, high]
        (inclusive), mappings [{container, proto, host_port,
        container_address, container_port}] sorted by container and port,
        addresses {container: address}}.
        """
        net = self.m.network
        return {"bridge": net.bridge, "subnet": str(self.m.config.subnet), "gateway": net.gateway,
                "port_range": list(self.m.config.port_range),
                "mappings": sorted(self.m.all_mappings(), key=lambda m: (m["container"], m["host_port"])),
                "addresses": {n: r["address"] for n, r in sorted(self.m.records.items())}}

    @expose(access="read")
    def hostinfo(self) -> dict:
        """Host metrics, containers and free capacity (best effort: a figure
        that cannot be read is None).

        Returns: {host, agent_version, agent_uptime_s, metrics {cpu_count,
        cpu_percent, load_avg, memory_total_bytes, memory_available_bytes,
        memory_used_bytes, disk_total_bytes, disk_free_bytes, net_bytes_sent,
        net_bytes_recv, uptime_s, boot_time}, containers [{name, state,
        address, memory_bytes, memory_limit_bytes, cpu_seconds, net_rx_bytes,
        net_tx_bytes (received and sent by the container)}], capacity
        {memory_reservable_bytes, memory_reserved_bytes,
        memory_unreserved_bytes, container_slots, containers,
        container_slots_free}, metrics_url (the Prometheus endpoint, or
        None)}.  Sizes are bytes, cpu_percent a percentage
        of all CPUs, load_avg [1, 5, 15 min], uptime_s and agent_uptime_s
        seconds, boot_time Unix s, cpu_seconds CPU time used.
        """
        cfg = self.m.config
        metrics = hostinfo.host_metrics(cfg.state_dir)
        containers = []
        for view in self.m.ls():
            rec = self.m.records.get(view["name"]) or {}
            rx, tx = hostinfo.veth_bytes(rec["veth"]) if rec.get("veth") and view["pid"] else (None, None)
            containers.append({"name": view["name"], "state": view["state"], "address": view["address"],
                               **self.m.usage(view), "net_rx_bytes": rx, "net_tx_bytes": tx})
        limits = [r.get("memory_bytes") for r in self.m.records.values()]
        return {"host": cfg.host_name, "agent_version": AGENT_VERSION,
                "agent_uptime_s": round(time.time() - self.started, 3), "metrics": metrics,
                "containers": containers,
                "capacity": hostinfo.capacity(metrics["memory_total_bytes"], cfg.reservable_memory_bytes,
                                              limits, cfg.max_containers),
                "metrics_url": self.metrics_url}

    @expose
    def ops_run(self, command: str, timeout_s: float = 30.0, max_output_bytes: int = 1 << 20) -> dict:
        """Run a shell command on the host (``/bin/sh -c``, with PATH, LANG=C
        and DC_HOST_NAME, this host's fleet name), for fleet ops by broadcast
        or queue.

        Args: timeout_s: kill after this many seconds (max 3600);
        max_output_bytes: cap on each of stdout/stderr (max 16 MiB).

        Returns: {host, exit_code (-9 when killed at its timeout), stdout
        (str), stderr (str; undecodable bytes replaced), timed_out,
        duration_s}.
        Raises: InvalidArgument (empty command, NUL, limits exceeded).
        """
        validate.number(timeout_s, "timeout_s", minimum=0.1, maximum=3600)
        validate.number(max_output_bytes, "max_output_bytes", minimum=0, maximum=16 << 20, integer=True)
        if not command.strip() or "\x00" in command:
            raise errors.InvalidArgument("command must be a non-empty string without NUL")
        started = time.monotonic()
        try:
            env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C",
                   "DC_HOST_NAME": self.m.config.host_name}
            done = run_tool(["/bin/sh", "-c", command], timeout_s, env=env)
            code, out, err, timed_out = done.returncode, done.stdout, done.stderr, False
        except ToolTimeout as exc:
            c = exc.completed
            code, out, err, timed_out = -9, c.stdout if c else b"", c.stderr if c else b"", True
        return {"host": self.m.config.host_name, "exit_code": code,
                "stdout": out[:max_output_bytes].decode(errors="replace"),
                "stderr": err[:max_output_bytes].decode(errors="replace"),
                "timed_out": timed_out, "duration_s": round(time.monotonic() - started, 6)}

    @expose(shielded=True)
    def ops_cleanup(self) -> dict:
        """Clean containers stuck in a broken state (the seed's "OOM
        wrangler"): records whose LXC definition vanished are dropped with
        their rules; destroys cut short (records left ``destroying``, say by
        a file that could not be removed) are finished; containers whose
        desired state is running but are stopped are reported; stale veths
        of stopped containers are removed.

        Cgroups that LXC monitors which died without their teardown (``kill
        -9``, the OOM killer) left behind are removed: ``lxc.monitor.*`` and
        ``lxc.payload.*`` in every hierarchy holding no process and older
        than the agent's ``stale_cgroup_age_s`` (60 s); each one left would
        slow every later start (lxcwrap.cgroup.remove_stale_lxc_cgroups).

        Build containers no running build owns (a clean-up that failed) are
        killed and removed.

        Returns: {host, dropped [names], destroy_finished [names],
        destroy_failed {name: "Error: message"} (still stuck; tried again
        next time), stopped_unexpectedly [names], veths_removed [names],
        cgroups_removed [cgroup names such as "lxc.monitor.web-1"],
        builds_removed [build container names]}.
        Raises: NetworkError, LxcFailure, StoreError (a build container dir
        that cannot be removed).
        """
        return {"host": self.m.config.host_name, **self.m.cleanup(), "builds_removed": self.builder.recover()}

    @expose(access="read")
    def ops_facts(self) -> dict:
        """Facts about this host.

        Returns: {host, os (PRETTY_NAME of /etc/os-release, "" if unknown),
        kernel, python, agent_version, lxc_version (``lxc-start --version``,
        None if it cannot be run), lxc_path, bridge, subnet}.
        """
        cfg = self.m.config
        osr = {}
        try:
            with open("/etc/os-release") as f:
                osr = dict(line.rstrip().split("=", 1) for line in f if "=" in line)
        except OSError:
            pass
        return {"host": cfg.host_name, "os": osr.get("PRETTY_NAME", "").strip('"'),
                "kernel": platform.release(), "python": platform.python_version(),
                "agent_version": AGENT_VERSION, "lxc_version": self.m.lxc.version(),
                "lxc_path": cfg.lxc_path, "bridge": cfg.bridge, "subnet": cfg.subnet}


__all__ = ["AgentService", "translate"]
