"""lxcwrap.spawn.sealed_exe: one sealed in-memory copy of a program per
process, executed by Child through ``executable`` (what lets lxc-attach
skip its own copy and re-exec; the lxc-attach case on real LXC is in
tests/integration/test_lxc_direct.py)."""
import fcntl
import os
import shutil

import pytest

from lxcwrap import spawn


def test_the_copy_is_sealed_the_same_bytes_and_made_once():
    path = spawn.sealed_exe("sh")
    assert path is not None and path.startswith("/proc/self/fd/")
    assert spawn.sealed_exe("sh") == path, "made once, then kept"
    fd = int(path.rsplit("/", 1)[1])
    assert fcntl.fcntl(fd, fcntl.F_GET_SEALS) == spawn.SEALS
    assert not os.get_inheritable(fd), "close-on-exec: no child inherits it"
    with open(path, "rb") as f, open(shutil.which("sh"), "rb") as orig:
        assert f.read() == orig.read()
    with pytest.raises(OSError):
        os.write(fd, b"x")
    try:
        wfd = os.open(path, os.O_WRONLY)
    except OSError:
        return  # cannot even be opened for writing
    try:
        with pytest.raises(OSError):
            os.write(wfd, b"#!")
    finally:
        os.close(wfd)


def test_child_runs_the_copy_with_its_own_argv0():
    child = spawn.Child(["not-a-tool-name", "-c", 'echo "$0 ran"', "zero"], {"PATH": "/usr/bin:/bin"},
                        executable=spawn.sealed_exe("sh"))
    out = spawn.communicate(child, 10)
    assert out["returncode"] == 0 and out["stdout"] == b"zero ran\n"
    assert os.readlink(f"/proc/self/fd/{spawn.sealed_exe('sh').rsplit('/', 1)[1]}").startswith("/memfd:sh")


def test_a_closed_copy_is_never_executed_through_its_reused_number(tmp_path):
    path = spawn.sealed_exe("sh")
    fd = int(path.rsplit("/", 1)[1])
    other = tmp_path / "not-sh"
    other.write_text("#!/bin/sh\necho wrong file\n")
    opened = os.open(other, os.O_RDONLY)
    reused = os.dup2(opened, fd)  # the copy closed, its number now names another file
    os.close(opened)
    try:
        again = spawn.sealed_exe("sh")
        assert again is not None
        new_fd = int(again.rsplit("/", 1)[1])
        assert new_fd != reused and fcntl.fcntl(new_fd, fcntl.F_GET_SEALS) == spawn.SEALS
    finally:
        os.close(reused)


def test_a_program_not_on_path_has_no_copy():
    assert spawn.sealed_exe("no-such-tool-lfc") is None
