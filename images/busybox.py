"""The busybox base image, built offline from the host's static busybox.

Rootfs: /bin/busybox (a real copy of the binary), one symlink ``/bin/<applet>
-> busybox`` per applet (never for ``busybox`` itself), ``/sbin/init ->
/bin/busybox``, the usual empty directories, root in /etc/passwd and
/etc/group, and busybox init wired to dcfleet::

    /etc/inittab        ::sysinit:/etc/init.d/rcS     mount tmpfs on /tmp, /run
                        ::once:/etc/dcfleet/run       the container's command,
                                                      once, never respawned
                        ::ctrlaltdel:/bin/reboot      lxc-stop -r sends SIGINT
                        ::shutdown:/bin/sync

No DHCP client runs: LXC configures the static address before init starts.
The container halts on SIGUSR1 (busybox init), its manifest's stop_signal.
Every file gets the busybox binary's mtime, so a rebuild from the same binary
gives the same layer id.
"""
from __future__ import annotations

import os
import re
import shutil

from images.errors import ImageError, ImageNotFound, InvalidImage, StoreError
from images.proc import blocking_run
from images.rootfs import (COMMAND_PATH, ENV_PATH, NETWORK_TEMPLATES, RUN_PATH, RUN_SCRIPT, command_file_text,
                           set_tree_times, write_file)

__all__ = ["ensure_busybox", "busybox_applets", "build_busybox_rootfs", "DEFAULT_COMMAND"]

DEFAULT_COMMAND = ["httpd", "-f", "-p", "80", "-h", "/var/www"]
EXPOSED_PORTS = [{"proto": "tcp", "port": 80}]
STOP_SIGNAL = "SIGUSR1"

_APPLET_RE = re.compile(rb"^[a-z0-9_.\[\]-]{1,32}$")

_DIRS = {"bin": 0o755, "sbin": 0o755, "usr": 0o755, "usr/bin": 0o755, "usr/sbin": 0o755,
         "etc": 0o755, "etc/init.d": 0o755, "etc/dcfleet": 0o755, "etc/network": 0o755,
         "proc": 0o555, "sys": 0o555, "dev": 0o755, "tmp": 0o1777, "run": 0o755,
         "var": 0o755, "var/www": 0o755, "var/log": 0o755, "root": 0o700, "home": 0o755,
         "mnt": 0o755}

_FILES = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/shells": "/bin/sh\n/bin/ash\n",
    "/etc/inittab": (
        "# dcfleet busybox init: no getty, no respawn loop.\n"
        "::sysinit:/etc/init.d/rcS\n"
        f"::once:{RUN_PATH}\n"
        "::ctrlaltdel:/bin/reboot\n"
        "::shutdown:/bin/sync\n"),
    "/etc/resolv.conf": "# dcfleet: no resolver configured for this container\n",
    COMMAND_PATH: command_file_text(DEFAULT_COMMAND),
    ENV_PATH: "",
}
_SCRIPTS = {
    "/etc/init.d/rcS": (
        "#!/bin/sh\n"
        "# dcfleet: early boot.  LXC has mounted /proc and /sys and configured\n"
        "# eth0 with its static address: no DHCP here.\n"
        "# LXC mounts tmpfs on /tmp and /run (init has no CAP_SYS_ADMIN).\n"
        "mountpoint -q /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp\n"
        "mountpoint -q /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run\n"
        "ip link set lo up 2>/dev/null\n"
        "exit 0\n"),
    RUN_PATH: RUN_SCRIPT,
}
#: Jinja2 templates, rendered by the agent at container create.
TEMPLATES = {
    **NETWORK_TEMPLATES,
    "/var/www/index.html": (
        "<!doctype html>\n"
        "<title>{{ name }}</title>\n"
        "<h1>Hello from {{ name }} on host {{ host }}</h1>\n"
        "<p>{{ hostname }} at {{ address }}"
        "{% for p in exposed_ports %} {{ p.proto }}/{{ p.port }}{% endfor %}</p>\n"),
}


def busybox_applets(busybox_path: str = "/bin/busybox") -> list[str]:
    """The applet names of a busybox binary, without ``busybox`` itself.

    Reads busybox's sorted, NUL-separated applet name table from the binary
    (no process started); falls back to ``busybox --list`` if none is found.

    Raises:
        InvalidImage: no applet list could be found or names look wrong.
    """
    try:
        with open(busybox_path, "rb") as f:
            tokens = f.read().split(b"\x00")
    except OSError as exc:
        raise InvalidImage(f"busybox {busybox_path}: cannot read ({exc.strerror})") from exc
    best: list[bytes] = []
    run: list[bytes] = []
    for tok in tokens:
        if _APPLET_RE.match(tok) and (not run or tok > run[-1]):
            run.append(tok)
        else:
            if len(run) > len(best):
                best = run
            run = [tok] if _APPLET_RE.match(tok) else []
    if len(run) > len(best):
        best = run
    names = [t.decode() for t in best]
    if len(names) < 20 or "sh" not in names:
        try:
            done = blocking_run([busybox_path, "--list"], 30)
        except ImageError as exc:
            raise InvalidImage(f"busybox {busybox_path}: cannot list applets ({exc})") from exc
        names = sorted(set(done.stdout.decode("ascii", "replace").split()))
        if done.returncode != 0:
            names = []
    bad = [n for n in names if not _APPLET_RE.match(n.encode())]
    if bad or "sh" not in names:
        raise InvalidImage(f"busybox {busybox_path}: unexpected applet list ({bad[:3]})")
    return [n for n in names if n != "busybox"]


def build_busybox_rootfs(dest: str, busybox_path: str = "/bin/busybox") -> None:
    """Lay out the busybox rootfs (see the module docstring) in ``dest``, an
    existing empty directory; everything is owned by root (when run as root).

    Raises:
        InvalidImage: the binary cannot be read or listed.
        OSError: writing under dest failed.
    """
    applets = busybox_applets(busybox_path)
    for rel, mode in _DIRS.items():
        os.makedirs(os.path.join(dest, rel), exist_ok=True)
        os.chmod(os.path.join(dest, rel), mode)
    binary = os.path.join(dest, "bin", "busybox")
    shutil.copyfile(busybox_path, binary, follow_symlinks=True)
    os.chmod(binary, 0o755)
    for applet in applets:
        os.symlink("busybox", os.path.join(dest, "bin", applet))
    os.symlink("/bin/busybox", os.path.join(dest, "sbin", "init"))
    for path, text in {**_FILES, **TEMPLATES}.items():
        write_file(dest, path, text, 0o644)
    for path, text in _SCRIPTS.items():
        write_file(dest, path, text, 0o755)
    set_tree_times(dest, int(os.stat(busybox_path).st_mtime))


def ensure_busybox(store, busybox_path: str = "/bin/busybox", name: str = "busybox") -> dict:
    """Return the newest image called ``name``, building it offline first if
    the store has none.

    Args:
        store: an ImageStore.
        busybox_path: a statically linked busybox binary on this host.
        name: the image name.

    Returns:
        the manifest dict (command: httpd on port 80 serving /var/www;
        stop_signal SIGUSR1; init /sbin/init; templates: /etc/hostname,
        /etc/hosts, /etc/network/interfaces, /var/www/index.html).

    Raises:
        InvalidImage: the binary is missing or not a busybox.
        StoreError: I/O failure; nothing is left in the store.
    """
    try:
        return store.resolve(name)
    except ImageNotFound:
        pass
    if not os.path.isfile(busybox_path):
        raise InvalidImage(f"busybox {busybox_path}: not a file")
    with store.staging("busybox") as stage:
        rootfs = os.path.join(stage, "rootfs")
        try:
            os.mkdir(rootfs, 0o755)
            build_busybox_rootfs(rootfs, busybox_path)
        except OSError as exc:
            raise StoreError(f"building the busybox rootfs in {rootfs}: {exc.strerror or exc}") from exc
        # created = the binary's mtime: every host with the same busybox
        # builds the same image id, so fleets share it without transfers
        created = float(int(os.stat(busybox_path).st_mtime))
        return store.commit_dir(name, rootfs, consume=True, created=created, exposed_ports=EXPOSED_PORTS, env={},
                                command=DEFAULT_COMMAND, stop_signal=STOP_SIGNAL,
                                init="/sbin/init", templates=sorted(TEMPLATES))
