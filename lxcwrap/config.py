"""Render the LXC config file of a dcfleet container (lxc.container.conf(5))."""
from __future__ import annotations

import dataclasses
import ipaddress
import re

from lxcwrap import cgroup

_SAFE_VALUE = re.compile(r"^[^\n\r\x00]*$")

#: The capabilities a container keeps (``lxc.cap.keep``): Docker's default
#: set, plus SYS_BOOT.  Every other one (SYS_ADMIN, SYS_MODULE, SYS_RAWIO,
#: NET_ADMIN, SYS_PTRACE, ...) is dropped from the bounding set of init and of
#: every attached process.  SYS_BOOT is kept because the system images' inits
#: (busybox init, systemd) end the container with reboot(2); in a child PID
#: namespace that call only ends the namespace's init (pid_namespaces(7)).
DEFAULT_CAPS = ("chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
                "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write", "sys_boot")

#: Device rules (devices cgroup, as Docker's): creating any node is allowed
#: (``m``), but opening one is allowed only for these character devices:
#: null, zero, full, random, urandom, tty, console, ptmx, the pty slaves and
#: /dev/net/tun.  A block device made with mknod cannot be read or written.
DEVICE_ALLOW = ("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm",
                "c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm")

#: Where a container sees its log FIFOs (the run scripts of images/rootfs.py
#: and images/appinit.py redirect the command's stdout and stderr there).
LOG_FIFO_TARGETS = ("/dev/dcfleet.stdout", "/dev/dcfleet.stderr")


@dataclasses.dataclass
class ContainerConfig:
    """Everything dcfleet puts in a container's LXC config.

    Fields (units in names): ``lower_dirs`` are the image's unpacked layers,
    topmost first; ``upper_dir`` is the container's own read-write layer (its
    work dir is the sibling ``olwork``, as LXC's overlay driver expects).
    """

    name: str
    hostname: str
    lower_dirs: list[str]
    upper_dir: str
    bridge: str
    veth_name: str
    address: str
    prefixlen: int
    gateway: str
    console_log: str
    lxc_log: str
    init_cmd: str = "/sbin/init"
    halt_signal: str = "SIGPWR"
    memory_bytes: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None
    #: most tasks (processes and threads) in the container: the pids
    #: cgroup's pids.max (see lxcwrap.cgroup.limit_config); None: no limit
    pids_limit: int | None = None
    hwaddr: str | None = None
    #: directories LXC mounts a fresh tmpfs on, in order (mode 1777 for /tmp,
    #: /run/lock and /dev/shm, else
    #: 0755) before init starts: init cannot mount without CAP_SYS_ADMIN
    tmpfs_dirs: tuple[str, ...] = ()
    #: each tmpfs dir's size, bytes (the mount's ``size=``; the kernel
    #: rounds it up to whole pages): a tmpfs without one may fill half the
    #: host's RAM, charged to the writer's memory cgroup only.  Every dir
    #: of ``tmpfs_dirs`` must have one (render raises ValueError).
    tmpfs_size_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    #: no network at all (``lxc.net.0.type = empty``: loopback only); the
    #: address, bridge and veth fields are then ignored (a build container)
    no_network: bool = False
    #: overlay mount options (``lxc.rootfs.options``), e.g.
    #: "redirect_dir=off,metacopy=off" so that the upper dir is a plain diff
    rootfs_options: str | None = None
    #: (host directory, absolute container path) pairs bind-mounted by LXC
    #: before init starts (named volumes); the container path is made if
    #: missing.  Neither may hold whitespace (lxc.mount.entry is fstab-like).
    bind_mounts: tuple[tuple[str, str], ...] = ()
    #: host paths of the FIFOs that the container's stdout and stderr go
    #: into (agents.logger reads them), bind-mounted one file each at
    #: LOG_FIFO_TARGETS (a file mount point cannot be removed from inside)
    log_fifos: tuple[str, str] | None = None

    def items(self, layout: cgroup.Layout) -> list[tuple[str, str]]:
        """The config as ordered (key, value) pairs.

        Raises: ValueError (an unsafe bind mount, a tmpfs dir without a size)."""
        rootfs = "overlay:" + ":".join([*self.lower_dirs, self.upper_dir])
        items = [
            ("lxc.uts.name", self.hostname),
            ("lxc.rootfs.path", rootfs),
            *([("lxc.rootfs.options", self.rootfs_options)] if self.rootfs_options else []),
            ("lxc.apparmor.profile", "unconfined"),
            ("lxc.init.cmd", self.init_cmd),
            ("lxc.signal.halt", self.halt_signal),
            ("lxc.mount.auto", "proc:mixed sys:mixed cgroup:mixed"),
            ("lxc.autodev", "1"),
            ("lxc.tty.max", "0"),
            ("lxc.pty.max", "64"),
            ("lxc.console.path", "none"),
            ("lxc.console.logfile", self.console_log),
            ("lxc.log.file", self.lxc_log),
            ("lxc.log.level", "WARN"),
        ]
        if self.no_network:
            items.append(("lxc.net.0.type", "empty"))
        else:
            items += [
                ("lxc.net.0.type", "veth"),
                ("lxc.net.0.link", self.bridge),
                ("lxc.net.0.flags", "up"),
                ("lxc.net.0.veth.pair", self.veth_name),
                ("lxc.net.0.name", "eth0"),
                ("lxc.net.0.ipv4.address", self.ipv4_address_value()),
                ("lxc.net.0.ipv4.gateway", self.gateway),
            ]
        if self.hwaddr and not self.no_network:
            items.append(("lxc.net.0.hwaddr", self.hwaddr))
        items.append(("lxc.cap.keep", " ".join(DEFAULT_CAPS)))
        prefix = "lxc.cgroup2" if layout.version("devices") == 2 else "lxc.cgroup"
        items.append((f"{prefix}.devices.deny", "a"))
        items.extend((f"{prefix}.devices.allow", rule) for rule in DEVICE_ALLOW)
        for d in self.tmpfs_dirs:
            mode = "1777" if d in ("/tmp", "/run/lock", "/dev/shm") else "0755"
            size = self.tmpfs_size_bytes.get(d)
            if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
                raise ValueError(f"tmpfs {d} needs a size in bytes, got {size!r}")
            items.append(("lxc.mount.entry",
                          f"tmpfs {d.lstrip('/')} tmpfs mode={mode},nosuid,nodev,size={size},create=dir 0 0"))
        for source, dest in self.bind_mounts:
            if not source.startswith("/") or not dest.startswith("/") or any(
                    c.isspace() for c in source + dest):
                raise ValueError(f"unsafe bind mount {source!r} -> {dest!r}")
            items.append(("lxc.mount.entry", f"{source} {dest.lstrip('/')} none bind,create=dir 0 0"))
        for src, target in zip(self.log_fifos or (), LOG_FIFO_TARGETS):
            items.append(("lxc.mount.entry", f"{src} {target.lstrip('/')} none bind,create=file 0 0"))
        items.extend(cgroup.limit_config(layout, self.memory_bytes, self.cpus, self.cpu_shares, self.pids_limit))
        return items

    def ipv4_address_value(self) -> str:
        """``lxc.net.0.ipv4.address``: "ADDR/PREFIX BCAST".  The broadcast
        address is always given: LXC 5.0 computes it from the prefix alone
        when it is left out (``brd 0.0.0.255`` for a /24).  Point-to-point
        prefixes (/31, /32) have none."""
        if self.prefixlen >= 31:
            return f"{self.address}/{self.prefixlen}"
        net = ipaddress.IPv4Network(f"{self.address}/{self.prefixlen}", strict=False)
        return f"{self.address}/{self.prefixlen} {net.broadcast_address}"

    def render(self, layout: cgroup.Layout) -> str:
        """The config file text.

        Raises:
            ValueError: a value contains a newline or NUL (config injection),
                or as ``items``.
        """
        lines = ["# Written by dcfleet's agent; edits are overwritten."]
        for key, value in self.items(layout):
            if not _SAFE_VALUE.match(value):
                raise ValueError(f"unsafe LXC config value for {key}: {value!r}")
            lines.append(f"{key} = {value}")
        return "\n".join(lines) + "\n"
