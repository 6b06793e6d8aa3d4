"""dcctl.files: the one atomic write and the one pid lock, on real files."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from dcctl import files


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = str(tmp_path / "state.json")
    files.atomic_write(path, "old")
    files.atomic_write(path, b"new", mode=0o644)
    assert open(path).read() == "new" and stat.S_IMODE(os.stat(path).st_mode) == 0o644
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = str(tmp_path / "state.json")
    files.atomic_write(path, "old")
    os.mkdir(tmp_path / "dir")
    with pytest.raises(OSError):  # the rename onto a directory fails after the temp file was written
        files.atomic_write(str(tmp_path / "dir"), "x")
    with pytest.raises(TypeError):
        files.atomic_write(path, 42)
    assert open(path).read() == "old" and sorted(os.listdir(tmp_path)) == ["dir", "state.json"]


def test_lock_is_exclusive_names_its_holder_and_dies_with_the_process(tmp_path):
    path = str(tmp_path / "locks" / "agent.lock")
    fd = files.take_lock(path)
    assert fd is not None and files.lock_holder(path) == os.getpid()
    assert files.take_lock(path, write_pid=False) is None  # another open file: refused, not waited for
    os.close(fd)
    child = subprocess.Popen([sys.executable, "-c", "import sys; from dcctl import files; "
                              "fd = files.take_lock(sys.argv[1]); print(fd is not None, flush=True); "
                              "sys.stdin.read()", path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    try:
        assert child.stdout.readline().strip() == "True"
        assert files.take_lock(path) is None and files.lock_holder(path) == child.pid
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
        child.stdin.close()
    fd = files.take_lock(path)  # a killed holder leaves the lock free
    assert fd is not None
    os.close(fd)
    assert files.lock_holder(str(tmp_path / "none.lock")) is None
