"""Helpers for the OCI tests: images made with Debian's umoci and skopeo
(offline), hostile layouts made by hand, and a tree checksum."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile

import pytest

from images.busybox import build_busybox_rootfs

CMD = ["sh", "-c", 'echo "$GREETING $(pwd) $(id -u)" > /tmp/out; exec sleep 1000']


def need_tools() -> None:
    for tool in ("umoci", "skopeo"):
        if not shutil.which(tool):
            pytest.skip(f"needs {tool} (ops/setup installs it)")


def run(*argv: str, cwd: str | None = None) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, cwd=cwd, timeout=300)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def whiteout_layer(path: str) -> str:
    """A layer tar that deletes /etc/shells and adds /etc/added."""
    with tarfile.open(path, "w") as tar:
        tar.addfile(tarfile.TarInfo("etc/.wh.shells"))
        info = tarfile.TarInfo("etc/added")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    return path


def make_umoci_image(work: str, layout: str = "layout", user: str | None = None, tag: str = "v1") -> str:
    """An OCI layout made by umoci from the busybox rootfs: Cmd CMD, Env
    GREETING=hello, port 8080/tcp, WorkingDir /srv (and User if given), and
    a second layer (umoci raw add-layer) that deletes /etc/shells.

    Returns: the layout directory."""
    os.makedirs(work, exist_ok=True)
    lay = os.path.join(work, layout)
    bundle = os.path.join(work, f"bundle-{tag}")
    if not os.path.isdir(lay):
        run("umoci", "init", "--layout", lay)
    run("umoci", "new", "--image", f"{lay}:{tag}")
    run("umoci", "unpack", "--image", f"{lay}:{tag}", bundle)
    shutil.rmtree(os.path.join(bundle, "rootfs"))
    os.mkdir(os.path.join(bundle, "rootfs"))
    build_busybox_rootfs(os.path.join(bundle, "rootfs"))
    run("umoci", "repack", "--image", f"{lay}:{tag}", bundle)
    args = ["umoci", "config", "--image", f"{lay}:{tag}", "--config.env", "GREETING=hello",
            "--config.exposedports", "8080/tcp", "--config.workingdir", "/srv"]
    for word in CMD:
        args += ["--config.cmd", word]
    if user:
        args += ["--config.user", user]
    run(*args)
    run("umoci", "raw", "add-layer", "--image", f"{lay}:{tag}", whiteout_layer(os.path.join(work, "del.tar")))
    shutil.rmtree(bundle)
    return lay


def tree_sum(root: str, skip: tuple[str, ...] = ()) -> tuple[str, int]:
    """sha256 over every path below root with its type, mode, owner, size,
    symlink target and content (hard links as equal contents); and a count."""
    sha, count = hashlib.sha256(), 0
    for top, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(top, name)
            rel = os.path.relpath(path, root)
            if rel.split("/")[0] in skip:
                continue
            st = os.lstat(path)
            count += 1
            sha.update(f"{rel}\0{st.st_mode:o}\0{st.st_uid}\0{st.st_gid}\0".encode("utf-8", "surrogateescape"))
            if stat.S_ISLNK(st.st_mode):
                sha.update(os.readlink(path).encode("utf-8", "surrogateescape"))
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        sha.update(chunk)
            sha.update(b"\n")
    return sha.hexdigest(), count


def blob_json(layout: str, digest: str) -> dict:
    with open(os.path.join(layout, "blobs", "sha256", digest.split(":")[1])) as f:
        return json.load(f)
