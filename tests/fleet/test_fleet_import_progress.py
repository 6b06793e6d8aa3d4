"""``dcctl image_push FILE NAME`` through a real local fleet (a hub and a
host in its network namespace, CURVE between them): the finish runs as the
hub's image_upload_finish_progress, which relays the host's import progress
(copy, unpack, pack) and adds its own steps (verify, registry), with
progress items before the end; dcctl shows them as lines on stderr (off a
terminal) with the answer as before, and as JSON lines with --json.  The
hub's plain image_upload_finish keeps its answer."""
from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import subprocess
import sys
import tarfile

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.agentproc import REPO
from tests.waiting import wait_for

FILES = 8_000


@pytest.fixture(scope="module")
def one_host():
    if os.geteuid() != 0:
        pytest.skip("needs root, LXC and network namespaces")
    prefix = "evt" + secrets.token_hex(2)
    state = fleetmod.up(prefix, 1, fleetmod.free_subnet(212), heartbeat_s=1.0)
    try:
        with wire.connect(state["hub"]["ipc"], timeout_s=60) as hub:
            wait_for(lambda: [h["state"] for h in hub.call("hosts")] == ["alive"], 60, "the host alive",
                     ignore=(errors.Unreachable, errors.CallTimeout))
        yield state
    finally:
        left = fleetmod.down(prefix)
        assert not left, left


def _rootfs(path: str, seed: int) -> str:
    """A gzipped rootfs tarball of FILES small files and 24 MiB of random data."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for i in range(FILES):
            data = (f"{seed} file {i}\n" * 30).encode()
            info = tarfile.TarInfo(f"srv/d{i // 400}/f{i}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        data = os.urandom(24 << 20)
        info = tarfile.TarInfo("opt/blob")
        info.size, info.mode = len(data), 0o644
        tar.addfile(info, io.BytesIO(data))
    return path


def _dcctl(state, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": state["hub"]["ipc"]}
    return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=900, cwd=REPO)


def test_image_push_file_shows_the_import_on_the_host_as_it_goes(one_host, tmp_path):
    state = one_host
    archive = _rootfs(str(tmp_path / "evtroot.tgz"), 1)
    shown = _dcctl(state, "image_push", archive, "evtpushed:v1")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stderr.splitlines()
    assert "pushing evtroot.tgz" in shown.stderr and "100.0%" in shown.stderr  # the upload, as before
    host = state["hosts"][0]["name"]
    for step in ("verify", "copy", "unpack", "pack", "registry"):
        assert any(line.startswith(f"{host}: {step} ") for line in lines), (step, shown.stderr)
    assert "evtpushed" in shown.stdout and host in shown.stdout  # the answer {manifest, host, bytes}
    with wire.connect(state["hub"]["ipc"], timeout_s=60) as hub:
        assert ("evtpushed", "v1") in [(i["name"], i["tag"]) for i in hub.call("image_ls")]
    assert os.listdir(os.path.join(state["hub"]["state_dir"], "registry", "uploads")) == []

    again = _rootfs(str(tmp_path / "evtroot2.tgz"), 2)
    as_json = _dcctl(state, "--json", "image_push", again, "evtpushed:v2")
    assert as_json.returncode == 0, as_json.stderr
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert all(d["phase"] == "running" for d in docs[:-1]) and docs[-1]["phase"] == "done"
    result = docs[-1]["result"]
    assert result["host"] == host and result["manifest"]["tag"] == "v2"
    assert result["bytes"] == os.path.getsize(again)
    unpack = [d for d in docs if d.get("step") == "unpack"]
    assert any(0 < d["bytes_done"] < d["bytes_total"] for d in unpack), docs  # before the end


def test_the_stream_and_the_plain_finish_over_the_wire(one_host, tmp_path):
    state = one_host
    with wire.connect(state["hub"]["ipc"], timeout_s=120) as hub:
        for tag, method in (("s", "image_upload_finish_progress"), ("p", "image_upload_finish")):
            data = open(_rootfs(str(tmp_path / f"{tag}.tgz"), 10 + len(tag) + ord(tag)), "rb").read()
            sha = hashlib.sha256(data).hexdigest()
            hub.call("image_upload_begin", len(data), sha)
            for off in range(0, len(data), 4 << 20):
                hub.call("image_upload_chunk", sha, off, data[off:off + (4 << 20)])
            if method == "image_upload_finish":
                answer = hub.call(method, sha, f"evtwire:{tag}", timeout_s=600)
            else:
                items = list(hub.stream(method, sha, f"evtwire:{tag}"))
                assert len(items) > 2 and items[-1]["phase"] == "done"
                answer = items[-1]["result"]
            assert set(answer) == {"manifest", "host", "bytes"} and answer["bytes"] == len(data)
            assert answer["manifest"]["tag"] == tag
        with pytest.raises(errors.NoSuchUpload):
            list(hub.stream("image_upload_finish_progress", "0" * 64, "evtwire:none"))
        with pytest.raises(errors.InvalidArgument):
            list(hub.stream("image_upload_finish_progress", "0" * 64, "evtwire:none", {"nosuch": 1}))
