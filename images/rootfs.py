"""What every dcfleet image carries, and helpers to write a rootfs being built.

The contract between an image and the agent that creates a container from it:

* ``/etc/dcfleet/command`` holds the container's command as ONE shell-quoted
  line (``command_file_text(["httpd", "-f"])``); an empty file runs nothing;
* ``/etc/dcfleet/env`` holds ``export KEY='value'`` lines (``env_file_text``);
* ``/etc/dcfleet/run`` (``RUN_SCRIPT``) sources the env file, runs the
  command, writes ``/etc/dcfleet/exit`` ("STATUS OOM_KILLS") when it ends and
  powers the container off; the image's init runs it once at boot (busybox:
  an inittab ``once`` line; systemd: ``dcfleet-run.service``).

The agent writes the first two files into the container at create, beside the
rendered templates; each image ships defaults for both.
"""
from __future__ import annotations

import os
import shlex
from typing import Iterable, Mapping

from dcctl import validate
from images.errors import InvalidImage

__all__ = ["COMMAND_PATH", "ENV_PATH", "EXIT_PATH", "NETWORK_TEMPLATES", "RUN_PATH", "RUN_SCRIPT", "command_file_text",
           "env_file_text", "write_file", "set_tree_times"]

COMMAND_PATH = "/etc/dcfleet/command"
ENV_PATH = "/etc/dcfleet/env"
RUN_PATH = "/etc/dcfleet/run"
EXIT_PATH = "/etc/dcfleet/exit"

RUN_SCRIPT = """\
#!/bin/sh
# dcfleet: run the container's command once (written by the agent at create).
# /etc/dcfleet/env: "export KEY='value'" lines.
# /etc/dcfleet/command: one shell-quoted command line; empty means none.
# When the command ends, its exit status and the kernel's count of OOM kills
# in this container's cgroup go to /etc/dcfleet/exit ("STATUS OOM_KILLS"),
# and the container powers off: it lives as long as its command (the agent's
# restart policy decides what happens next).
if [ -r /etc/dcfleet/env ]; then
    . /etc/dcfleet/env
fi
cmd=$(cat /etc/dcfleet/command 2>/dev/null)
if [ -z "$cmd" ]; then
    exit 0
fi
cd /
rm -f /etc/dcfleet/exit
# the agent's log writer (agents.logger) reads these FIFOs: stdout, stderr
if [ -p /dev/dcfleet.stdout ] && [ -p /dev/dcfleet.stderr ]; then
    exec >/dev/dcfleet.stdout 2>/dev/dcfleet.stderr
fi
eval "$cmd"
status=$?
ooms=$(cat /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null \\
       | sed -n 's/^oom_kill //p' | head -n 1)
echo "$status ${ooms:-0}" > /etc/dcfleet/exit.tmp && mv /etc/dcfleet/exit.tmp /etc/dcfleet/exit
sync
# killed (137: maybe by the OOM killer): give the host's agent a moment to
# read the cgroup's oom_kill counter before the cgroup goes away
[ "$status" = 137 ] && sleep 3
poweroff 2>/dev/null || kill -USR2 1
"""

#: Jinja2 templates every dcfleet image carries for its network identity
#: (rendered by the agent at container create).
NETWORK_TEMPLATES = {
    "/etc/hostname": "{{ hostname }}\n",
    "/etc/hosts": ("127.0.0.1\tlocalhost\n"
                   "::1\tlocalhost ip6-localhost ip6-loopback\n"
                   "{{ address }}\t{{ hostname }}\n"),
    "/etc/network/interfaces": (
        "# dcfleet: LXC configures eth0 with its static address before init,\n"
        "# so eth0 is not 'auto' here (ifup would fail on the existing address).\n"
        "auto lo\n"
        "iface lo inet loopback\n\n"
        "iface eth0 inet static\n"
        "    address {{ address }}/{{ prefixlen }}\n"
        "    gateway {{ gateway }}\n"),
}


def command_file_text(command: Iterable[str]) -> str:
    """The content of /etc/dcfleet/command for an argv list (may be empty).

    Raises:
        InvalidImage: an argument is not a string or holds a NUL byte.
    """
    argv = list(command)
    for arg in argv:
        if not isinstance(arg, str) or "\x00" in arg:
            raise InvalidImage(f"invalid command argument {arg!r}")
    return shlex.join(argv) + "\n" if argv else ""


def env_file_text(env: Mapping[str, str]) -> str:
    """The content of /etc/dcfleet/env: sorted ``export KEY='value'`` lines.

    Raises:
        InvalidImage: a key is not a shell variable name, or a value is not a
            string without NUL.
    """
    lines = []
    for key in sorted(env):
        value = env[key]
        if not validate.is_env_key(key):
            raise InvalidImage(f"invalid env variable name {key!r}")
        if not isinstance(value, str) or "\x00" in value:
            raise InvalidImage(f"invalid value for env variable {key}")
        lines.append(f"export {key}={shlex.quote(value)}\n")
    return "".join(lines)


def write_file(root: str, path: str, content: str | bytes, mode: int = 0o644) -> str:
    """Write a file into a rootfs *we are building* (a trusted staging tree),
    creating parent directories (0755).

    Args:
        root: the rootfs directory.
        path: absolute path inside the rootfs, e.g. "/etc/hostname".
        content: text (UTF-8) or bytes.
        mode: permission bits.

    Returns:
        the host path written.
    """
    host_path = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(host_path), mode=0o755, exist_ok=True)
    if os.path.lexists(host_path):
        os.unlink(host_path)
    data = content.encode("utf-8") if isinstance(content, str) else content
    fd = os.open(host_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        os.fchmod(out.fileno(), mode)
    return host_path


def set_tree_times(root: str, mtime: int, uid: int = 0, gid: int = 0) -> None:
    """Give every entry under ``root`` the same mtime and owner (symlinks
    themselves, never their targets), so a rebuilt tree packs to the same
    layer id.  Directories are done after their contents."""
    for top, dirs, files in os.walk(root, topdown=False):
        for name in files + dirs:
            path = os.path.join(top, name)
            if os.geteuid() == 0:
                os.lchown(path, uid, gid)
            os.utime(path, (mtime, mtime), follow_symlinks=False)
