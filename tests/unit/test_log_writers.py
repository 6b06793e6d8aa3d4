"""The two forms of a container's log writer, the compiled one
(agents/logwriter.py) and the Python one (agents/logger.py), on real FIFOs:
the same records from the same output (stdout and stderr apart, invalid
UTF-8 replaced, a long line cut at 16 KiB, a partial line written at
SIGTERM), rotation under the cap, counters kept in logger.status."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from agents import logger, logwriter
from dcctl import procs
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["compiled", "python"])
def writer_argv(request, tmp_path):
    if request.param == "python":
        return [sys.executable, "-m", "agents.logger"]
    if not shutil.which("gcc"):
        pytest.skip("no gcc")
    binary = logwriter.build_writer(str(tmp_path / "tools"))
    assert binary, "the compiled writer did not build"
    return [binary]


def start(argv, d, *args) -> int:
    done = subprocess.run([*argv, str(d), *args], capture_output=True, text=True, timeout=30, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO})
    assert done.returncode == 0, done.stderr
    pid = int((d / logger.PID_NAME).read_text())
    assert procs.alive(pid)
    return pid


def records(d) -> list[dict]:
    """The records of every log file, oldest first.  While the writer runs,
    a file listed may be rotated away before it is opened: it is skipped
    (a wait_for predicate then looks again)."""
    out = []
    for path in logger.log_files(str(d)):
        try:
            with open(path, "rb") as f:
                out += [json.loads(line) for line in f]
        except FileNotFoundError:
            continue
    return out


def stop(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not procs.alive(pid), 10, "the writer to exit")


def test_records_of_both_streams(writer_argv, tmp_path):
    d = tmp_path / "logs"
    pid = start(writer_argv, d)
    try:
        with open(d / "stdout.fifo", "wb") as out, open(d / "stderr.fifo", "wb") as err:
            out.write(b'one "quoted" \\ tab\there\n')
            out.flush()
            err.write(b"bad \xff utf-8 \xc3\xa9\n")
            err.flush()
            out.write(b"x" * 20000 + b"\n")
            out.flush()
            err.write(b"no newline yet")
        wait_for(lambda: len(records(d)) >= 4, 10, "the records")
    finally:
        stop(pid)
    recs = records(d)
    assert all(set(r) == {"at", "stream", "text"} and isinstance(r["at"], float) for r in recs)
    out = [r["text"] for r in recs if r["stream"] == "stdout"]
    err = [r["text"] for r in recs if r["stream"] == "stderr"]
    assert out == ['one "quoted" \\ tab\there', "x" * logger.MAX_RECORD_BYTES, "x" * (20000 - logger.MAX_RECORD_BYTES)]
    assert err == ["bad \ufffd utf-8 \u00e9", "no newline yet"]  # the partial line, written at SIGTERM
    st = logger.read_status(str(d))
    assert st["records"] == 5 and st["dropped_records"] == 0 and st["bytes"] == sum(
        os.path.getsize(p) for p in logger.log_files(str(d)))


def test_rotation_keeps_the_cap_and_the_counters_survive_a_restart(writer_argv, tmp_path):
    d = tmp_path / "logs"
    size, files = 4096, 3
    pid = start(writer_argv, d, "--max-size-bytes", str(size), "--max-files", str(files))
    try:
        with open(d / "stdout.fifo", "wb") as out:
            for i in range(1000):
                out.write(b"line %d of the rotation\n" % i)
        wait_for(lambda: records(d) and records(d)[-1]["text"] == "line 999 of the rotation", 20, "the last line")
    finally:
        stop(pid)
    paths = glob.glob(str(d / "container.log*"))
    assert len(paths) == files and all(os.path.getsize(p) <= size for p in paths)
    texts = [r["text"] for r in records(d)]
    first = int(texts[0].split()[1])
    assert first > 0 and texts == [f"line {i} of the rotation" for i in range(first, 1000)]
    assert logger.read_status(str(d))["records"] == 1000
    pid = start(writer_argv, d, "--max-size-bytes", str(size), "--max-files", str(files))  # again: counts go on
    try:
        with open(d / "stdout.fifo", "wb") as out:
            out.write(b"after\n")
        wait_for(lambda: logger.read_status(str(d)).get("records") == 1001, 10, "the counter to go on")
    finally:
        stop(pid)


def test_the_writer_ends_when_its_dir_is_removed(writer_argv, tmp_path):
    d = tmp_path / "logs"
    pid = start(writer_argv, d)
    shutil.rmtree(d)
    wait_for(lambda: not procs.alive(pid), 20, "the writer to notice its dir is gone")
