"""``dcctl build`` through the hub on a small local fleet (2 hosts): the
context is uploaded in chunks, built on one idle host with its output
streamed, and the image lands in the registry with only its new layer
shipped (the base is there already); another host that holds the base
pulls only that layer.  A failed build leaves no upload, no image, and
gives its host back to the worker queue; a host lost mid-build gives
Unreachable, and its restarted agent removes the build container."""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.agentproc import REPO
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def small_fleet():
    if os.geteuid() != 0:
        pytest.skip("needs root, LXC and network namespaces")
    prefix = "bld" + secrets.token_hex(2)
    state = fleetmod.up(prefix, 2, fleetmod.free_subnet(210), heartbeat_s=1.0)
    try:
        yield state
    finally:
        left = fleetmod.down(prefix)
        assert not left, left


@pytest.fixture
def hub(small_fleet):
    client = wire.connect(small_fleet["hub"]["ipc"], timeout_s=120)
    wait_for(lambda: (lambda rows: len(rows) == 2 and all(h["state"] == "alive" for h in rows))(client.call("hosts")),
             60, "both hosts alive")
    wait_for(lambda: len(client.call("hub_info")["queue"]["idle"]) == 2, 60, "both hosts idle in the queue")
    yield client
    client.close()


def dcctl(state, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": state["hub"]["ipc"]}
    return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)


def agent(state, host: str) -> wire.RpcClient:
    h = next(h for h in state["hosts"] if h["name"] == host)
    return wire.connect(h["ipc"], timeout_s=120)


def test_build_through_the_hub_ships_only_the_new_layer(small_fleet, hub, tmp_path):
    ctx = tmp_path / "app"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo building; mkdir -p /srv && echo v1 > /srv/index.html\n"
                                    "COPY page.txt /srv/\nCOPY . /ctx/\nRUN test ! -e /ctx/secret.key && test -e /ctx/page.txt\n"
                                    "CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/srv\"]\n")
    (ctx / "page.txt").write_text("page\n")
    (ctx / "secret.key").write_text("never sent\n")
    (ctx / ".dockerignore").write_text("*.key\n")
    done = dcctl(small_fleet, "build", str(ctx), "-t", "bldapp:v1", "--json")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    logs, result = [r["log"] for r in rows[:-1]], rows[-1]
    assert logs[0].startswith("Step 1/5 : RUN") and "building" in logs
    assert {"image", "id", "layer_bytes"} <= set(result) and result["image"] == f"bldapp@{result['id'][:12]}"
    # only the new layer moved into the registry: within 10% of its size
    assert result["layer_bytes"] <= result["pushed_bytes"] <= 1.1 * result["layer_bytes"], result
    assert result["pushed_bytes"] < result["size_bytes"] / 10
    (listed,) = [i for i in hub.call("image_ls") if i["name"] == "bldapp"]
    assert listed["tag"] == "v1" and listed["layers"][-1] == result["layer"]
    # the other host holds busybox: its pull of the built image moves the new layer only
    other = next(h["name"] for h in small_fleet["hosts"] if h["name"] != result["host"])
    with agent(small_fleet, other) as a:
        pulled = a.call("image_pull", f"bldapp@{result['id']}")
        assert pulled["pulled"] and pulled["bytes"] == result["layer_bytes"]
        layers = {d for i in a.call("image_ls") for d in i["layers"]}
        assert set(listed["layers"]) <= layers
    uploads = os.path.join(small_fleet["hub"]["state_dir"], "registry", "uploads")
    assert not os.path.isdir(uploads) or os.listdir(uploads) == []  # the context never stays on the hub
    kept = hub.call("build_log", f"bldapp@{result['id']}")
    assert kept["image"] == result["image"] and kept["log"].splitlines() == logs and not kept["truncated"]
    with pytest.raises(errors.ImageNotFound, match="no build log"):
        hub.call("build_log", "busybox")
    log_path = os.path.join(small_fleet["hub"]["state_dir"], "registry", "builds", result["id"] + ".log")
    assert os.path.isfile(log_path)
    text = dcctl(small_fleet, "build", str(ctx), "-t", "bldapp:v2")
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip().startswith("bldapp@") and "Step 2/5 : COPY" in text.stderr
    # a FROM image the builder lacks comes through the hub
    with agent(small_fleet, other) as a:
        for i in a.call("image_ls"):
            if i["name"] == "bldapp":
                a.call("image_rm", f"bldapp@{i['id']}")
    child = tmp_path / "child"
    child.mkdir()
    (child / "Dockerfile").write_text("FROM bldapp:v1\nRUN test -e /srv/page.txt\n")
    done = dcctl(small_fleet, "build", str(child), "-t", "bldchild", "--host", other)
    assert done.returncode == 0, done.stderr
    assert "pulling bldapp:v1 from the hub" in done.stderr


def test_failed_build_through_the_hub_leaves_nothing(small_fleet, hub, tmp_path):
    ctx = tmp_path / "bad"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo about to fail >&2; exit 7\n")
    done = dcctl(small_fleet, "build", str(ctx), "-t", "bldbad")
    assert done.returncode != 0
    assert "BuildFailed" in done.stderr and "exit code 7" in done.stderr and "about to fail" in done.stderr
    assert not [i for i in hub.call("image_ls") if i["name"] == "bldbad"]
    wait_for(lambda: len(hub.call("hub_info")["queue"]["idle"]) == 2, 30, "the host back in the queue")
    for h in small_fleet["hosts"]:
        with agent(small_fleet, h["name"]) as a:
            assert not [i for i in a.call("image_ls") if i["name"] == "bldbad"]
        assert os.listdir(os.path.join(h["state_dir"], "builds")) == []
    bad = tmp_path / "unsupported"
    bad.mkdir()
    (bad / "Dockerfile").write_text("FROM busybox\nHEALTHCHECK CMD true\n")
    done = dcctl(small_fleet, "build", str(bad), "-t", "bldbad")
    assert done.returncode != 0 and "InvalidImage" in done.stderr and "line 2" in done.stderr
    uploads = os.path.join(small_fleet["hub"]["state_dir"], "registry", "uploads")
    if os.path.isdir(uploads):
        assert os.listdir(uploads) == []


def test_host_lost_mid_build(small_fleet, hub, tmp_path):
    """The builder's agent is killed during a RUN: the caller gets Unreachable
    naming the host, the upload is gone, and the restarted agent removes the
    build container it left."""
    from dcctl import buildctx, upload
    host = small_fleet["hosts"][0]
    ctx = tmp_path / "hang"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo started; sleep 600\n")
    tar = str(tmp_path / "ctx.tar")
    buildctx.pack_context(str(ctx), tar)
    upload_id = upload.send_file(lambda m, *a: hub.call(m, *a, timeout_s=60), tar)
    items = hub.stream("build", upload_id, "bldlost", {"host": host["name"]})
    try:
        assert next(items)["log"].startswith("Step 1/1")
        assert next(items) == {"log": "started"}
        builds = os.path.join(host["state_dir"], "builds")
        assert len(os.listdir(builds)) == 1
        fleetmod.kill_host(small_fleet["prefix"], host["name"])
        with pytest.raises(errors.Unreachable) as exc:
            list(items)
        assert host["name"] in str(exc.value)
    finally:
        items.close()
    with pytest.raises(errors.NoSuchUpload):
        hub.call("image_upload_info", upload_id)
    fleetmod.start_host(small_fleet["prefix"], host["name"])
    assert os.listdir(builds) == []
    wait_for(lambda: all(h["state"] == "alive" for h in hub.call("hosts")), 60, "the host back")
    assert not [i for i in hub.call("image_ls") if i["name"] == "bldlost"]
