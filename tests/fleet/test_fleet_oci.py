"""``dcctl image_push FILE NAME:TAG`` from the operator's machine into the
hub's registry, then ``create_container`` on a host that never saw it: the
image's Cmd runs there.  A small fleet of its own (2 hosts)."""
from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import time

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.agentproc import REPO
from tests.ocikit import make_umoci_image, need_tools, run


@pytest.fixture(scope="module")
def small_fleet():
    if os.geteuid() != 0:
        pytest.skip("needs root, LXC and network namespaces")
    need_tools()
    prefix = "dfo" + secrets.token_hex(2)
    state = fleetmod.up(prefix, 2, fleetmod.free_subnet(209), heartbeat_s=1.0)
    try:
        yield state
    finally:
        left = fleetmod.down(prefix)
        assert not left, left


def _hub(state) -> wire.RpcClient:
    client = wire.connect(state["hub"]["ipc"], timeout_s=120)
    deadline = time.monotonic() + 30
    while not (len(rows := client.call("hosts")) == 2 and all(h["state"] == "alive" for h in rows)):
        assert time.monotonic() < deadline, "fleet not whole"
        time.sleep(0.1)
    return client


def dcctl(state, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": state["hub"]["ipc"]}
    return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600)


def test_image_push_of_a_local_archive_then_create_on_a_host_that_never_saw_it(small_fleet, tmp_path):
    state = small_fleet
    layout = make_umoci_image(str(tmp_path), tag="v1")
    archive = str(tmp_path / "app-docker.tar")
    run("skopeo", "copy", "-q", f"oci:{layout}:v1", f"docker-archive:{archive}:app:v1")
    hub = _hub(state)
    try:
        done = dcctl(state, "image_push", archive, "ociapp:v1")
        assert done.returncode == 0, done.stderr
        assert "pushing app-docker.tar" in done.stderr and "100.0%" in done.stderr
        listed = [(i["name"], i["tag"]) for i in hub.call("image_ls")]
        assert ("ociapp", "v1") in listed
        importer = "host-1"  # the first live host imports the upload
        other = next(h for h in state["hosts"] if h["name"] != importer)
        with wire.connect(other["ipc"], timeout_s=60) as agent:
            assert "ociapp" not in [i["name"] for i in agent.call("image_ls")]
        placed = hub.call("create_container", "ociapp:v1", "oci.pushed", {"host": other["name"]})
        assert placed["host"] == other["name"]
        deadline = time.monotonic() + 60
        while True:
            out = hub.call("container_exec", "oci.pushed", ["cat", "/tmp/out"])
            if out["exit_code"] == 0:
                break
            assert time.monotonic() < deadline, out
            time.sleep(0.2)
        assert out["stdout"] == b"hello /srv 0\n"
        # the upload is gone from the hub once the image is in the registry
        assert os.listdir(os.path.join(state["hub"]["state_dir"], "registry", "uploads")) == []
        # the hub's own image_push HOST REF keeps working beside it
        assert hub.call("image_push", importer, "ociapp:v1")["id"] == placed_image_id(hub)
    finally:
        try:
            hub.call("container_destroy", "oci.pushed", True)
        except errors.DcError:
            pass
        hub.close()


def placed_image_id(hub) -> str:
    return next(i["id"] for i in hub.call("image_ls") if i["name"] == "ociapp")


def test_an_interrupted_upload_resumes_and_a_corrupt_one_is_refused(small_fleet, tmp_path):
    hub = _hub(small_fleet)
    try:
        data = os.urandom(5 << 20)
        sha = hashlib.sha256(data).hexdigest()
        begin = hub.call("image_upload_begin", len(data), sha)
        assert begin == {"upload_id": sha, "offset": 0, "complete": False}
        hub.call("image_upload_chunk", sha, 0, data[:1 << 20])
        with pytest.raises(errors.InvalidArgument, match="offset"):
            hub.call("image_upload_chunk", sha, 3 << 20, data[3 << 20:4 << 20])
        assert hub.call("image_upload_begin", len(data), sha)["offset"] == 1 << 20  # resume point
        with pytest.raises(errors.InvalidArgument, match="of 5242880 bytes"):
            hub.call("image_upload_finish", sha, "junk")
        hub.call("image_upload_chunk", sha, 1 << 20, data[1 << 20:])
        with pytest.raises(errors.InvalidImage):  # random bytes are no image: dropped
            hub.call("image_upload_finish", sha, "junk")
        with pytest.raises(errors.NoSuchUpload):
            hub.call("image_upload_read", sha, 0, 10)
        lie = hashlib.sha256(b"other").hexdigest()
        hub.call("image_upload_begin", 4, lie)
        hub.call("image_upload_chunk", lie, 0, b"abcd")
        with pytest.raises(errors.StoreError, match="sha256"):
            hub.call("image_upload_finish", lie, "junk")
        assert "junk" not in [i["name"] for i in hub.call("image_ls")]
    finally:
        hub.close()
