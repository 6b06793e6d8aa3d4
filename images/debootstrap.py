"""A Debian image built with debootstrap, from the mirror apt already uses.

The build runs ``debootstrap --variant=minbase --include=systemd-sysv,...``
into a staging dir under the store's tmp/, then makes the tree fit for an LXC
container with a static address set by LXC:

* /dev emptied (LXC populates it), apt caches and lists dropped, the host's
  resolv.conf replaced by a placeholder, /etc/machine-id emptied (systemd then
  gives each container its own);
* templates for /etc/hostname, /etc/hosts and /etc/network/interfaces (eth0
  documented, not ``auto``: LXC has configured it before init, no DHCP);
* the dcfleet command contract (images.rootfs) run by ``dcfleet-run.service``;

and commits it as a one-layer image with stop_signal SIGRTMIN+3 (systemd's
halt signal).  The staging dir is removed in every case.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Callable, Iterable

from images.errors import ImageError, InvalidImage, StoreError
from images.fsutil import safe_rmtree
from images.manifest import validate_name
from images.proc import blocking_run
from images.rootfs import COMMAND_PATH, ENV_PATH, NETWORK_TEMPLATES, RUN_PATH, RUN_SCRIPT, write_file

__all__ = ["build_debian", "default_mirror", "DEFAULT_INCLUDE"]

DEFAULT_MIRROR = "http://deb.debian.org/debian"
#: systemd-sysv gives /sbin/init; ifupdown reads /etc/network/interfaces;
#: iproute2 gives `ip` for operators.  Nothing else beyond minbase.
DEFAULT_INCLUDE = ("systemd-sysv", "ifupdown", "iproute2")
DEFAULT_TIMEOUT_SECONDS = 1800.0
STOP_SIGNAL = "SIGRTMIN+3"

_SUITE_RE = re.compile(r"^[a-z][a-z0-9.-]{0,31}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{0,63}$")
_MIRROR_RE = re.compile(r"^https?://[A-Za-z0-9._~:/@%+-]+$")
_VARIANTS = ("minbase", "buildd", "fakechroot")

TEMPLATES = dict(NETWORK_TEMPLATES)
_RUN_UNIT = """\
[Unit]
Description=dcfleet: the container's command (/etc/dcfleet/command)
After=network.target

[Service]
Type=simple
ExecStart=/etc/dcfleet/run

[Install]
WantedBy=multi-user.target
"""


def _deb822_stanzas(text: str) -> list[dict]:
    stanzas, current, key = [], {}, None
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and key:
            current[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            current[key] = value.strip()
    if current:
        stanzas.append(current)
    return stanzas


def _sources(apt_dir: str) -> list[tuple[str, list[str], list[str]]]:
    """(uri, suites, components) of every enabled `deb` source."""
    found = []
    lists = [os.path.join(apt_dir, "sources.list")]
    lists += sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.list")))
    for path in lists:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.split("#", 1)[0].strip()
            line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=... signed-by=...]
            fields = line.split()
            if len(fields) >= 3 and fields[0] == "deb":
                found.append((fields[1], [fields[2]], fields[3:]))
    for path in sorted(glob.glob(os.path.join(apt_dir, "sources.list.d", "*.sources"))):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                stanzas = _deb822_stanzas(f.read())
        except OSError:
            continue
        for st in stanzas:
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes") == "no":
                continue
            for uri in st.get("uris", "").split():
                found.append((uri, st.get("suites", "").split(), st.get("components", "").split()))
    return found


def default_mirror(suite: str = "bookworm", apt_dir: str = "/etc/apt") -> str:
    """The Debian main mirror apt uses on this machine.

    Prefers a `deb` source with component ``main`` listing ``suite`` itself;
    else any Debian-looking main source (not -security); else
    http://deb.debian.org/debian.

    Args:
        suite: the Debian suite, e.g. "bookworm".
        apt_dir: apt's configuration directory (tests pass their own).

    Returns:
        the mirror URL, without a trailing slash.
    """
    sources = [(u.rstrip("/"), s, c) for u, s, c in _sources(apt_dir)
               if _MIRROR_RE.match(u.rstrip("/")) and "main" in c]
    for uri, suites, _c in sources:
        if suite in suites:
            return uri
    for uri, _s, _c in sources:
        if uri.endswith("/debian") and "security" not in uri:
            return uri
    return DEFAULT_MIRROR


def _validate(name, suite, mirror, variant, include) -> list[str]:
    validate_name(name)
    if not isinstance(suite, str) or not _SUITE_RE.match(suite):
        raise InvalidImage(f"invalid Debian suite {suite!r}")
    if not isinstance(mirror, str) or not _MIRROR_RE.match(mirror):
        raise InvalidImage(f"invalid mirror URL {mirror!r}: want http(s)://host/path")
    if variant not in _VARIANTS:
        raise InvalidImage(f"invalid debootstrap variant {variant!r}: one of {', '.join(_VARIANTS)}")
    packages = list(include)
    for pkg in packages:
        if not isinstance(pkg, str) or not _PACKAGE_RE.match(pkg):
            raise InvalidImage(f"invalid package name {pkg!r}")
    return packages


def _finish_rootfs(rootfs: str) -> None:
    """Make a fresh debootstrap tree fit for an LXC container (module doc)."""
    for sub in ("dev", "var/cache/apt/archives", "var/lib/apt/lists"):
        top = os.path.join(rootfs, sub)
        for entry in os.listdir(top) if os.path.isdir(top) else ():
            path = os.path.join(top, entry)
            if sub != "dev" and entry in ("partial", "lock"):
                continue
            if os.path.isdir(path) and not os.path.islink(path):
                safe_rmtree(path)
            else:
                os.unlink(path)
    for path in ("var/lib/dbus/machine-id", "etc/resolv.conf"):
        if os.path.lexists(os.path.join(rootfs, path)):
            os.unlink(os.path.join(rootfs, path))
    write_file(rootfs, "/etc/machine-id", "", 0o444)
    write_file(rootfs, "/etc/resolv.conf", "# dcfleet: no resolver configured\n")
    for path, text in TEMPLATES.items():
        write_file(rootfs, path, text)
    write_file(rootfs, RUN_PATH, RUN_SCRIPT, 0o755)
    write_file(rootfs, COMMAND_PATH, "")
    write_file(rootfs, ENV_PATH, "")
    write_file(rootfs, "/etc/systemd/system/dcfleet-run.service", _RUN_UNIT)
    wants = os.path.join(rootfs, "etc/systemd/system/multi-user.target.wants")
    os.makedirs(wants, mode=0o755, exist_ok=True)
    link = os.path.join(wants, "dcfleet-run.service")
    if not os.path.lexists(link):
        os.symlink("/etc/systemd/system/dcfleet-run.service", link)
    if not os.path.lexists(os.path.join(rootfs, "sbin/init")):
        raise InvalidImage(f"debootstrap tree {rootfs} has no /sbin/init (is systemd-sysv included?)")


def build_debian(store, name: str = "debian", suite: str = "bookworm", mirror: str | None = None,
                 variant: str = "minbase", include: Iterable[str] = DEFAULT_INCLUDE,
                 run: Callable | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_SECONDS) -> dict:
    """Build a Debian image with debootstrap and commit it.

    Args:
        store: an ImageStore.
        name: image name.
        suite: Debian suite, e.g. "bookworm".
        mirror: Debian mirror URL; default: the one apt uses (default_mirror()).
        variant: debootstrap variant ("minbase", "buildd" or "fakechroot").
        include: extra packages.
        run: the process seam, ``run(argv, timeout_s)`` returning an object
            with returncode, stdout, stderr (bytes).  Default:
            images.proc.blocking_run, safe in the agent's thread pool (pass
            lxcwrap.run.run only when calling from the gevent hub thread).
        timeout_s: seconds allowed for debootstrap.

    Returns:
        the manifest dict (command [] - systemd runs the services; the agent
        may set one; stop_signal SIGRTMIN+3; init /sbin/init; templates
        /etc/hostname, /etc/hosts, /etc/network/interfaces).

    Raises:
        InvalidImage: a bad argument.
        ImageError: debootstrap failed or timed out (message: its last output).
        StoreError: I/O failure.  The staging dir is removed in every case.
    """
    mirror = mirror or default_mirror(suite)
    packages = _validate(name, suite, mirror, variant, include)
    run = run or blocking_run
    argv = ["debootstrap", f"--variant={variant}"]
    if packages:
        argv.append(f"--include={','.join(packages)}")
    with store.staging("debootstrap") as stage:
        rootfs = os.path.join(stage, "rootfs")
        try:
            done = run([*argv, suite, rootfs, mirror], timeout_s)
        except ImageError:
            raise
        except Exception as exc:  # the seam's own errors (e.g. lxcwrap ToolError)
            raise ImageError(f"debootstrap {suite} from {mirror}: {exc}") from exc
        if done.returncode != 0:
            tail = (done.stderr or done.stdout or b"").decode("utf-8", "replace").strip()
            log = os.path.join(rootfs, "debootstrap", "debootstrap.log")
            if os.path.exists(log):
                with open(log, encoding="utf-8", errors="replace") as f:
                    tail = f.read().strip()
            tail = " | ".join(tail.splitlines()[-3:])[-400:]
            raise ImageError(f"debootstrap {suite} from {mirror} exited {done.returncode}: {tail}")
        try:
            _finish_rootfs(rootfs)
        except OSError as exc:
            raise StoreError(f"preparing {rootfs}: {exc.strerror or exc}") from exc
        return store.commit_dir(name, rootfs, consume=True, exposed_ports=[], env={},
                                command=[], stop_signal=STOP_SIGNAL, init="/sbin/init",
                                templates=sorted(TEMPLATES))
