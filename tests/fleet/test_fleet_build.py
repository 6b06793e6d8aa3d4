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
import subprocess
import sys
import time

import pytest

from dcctl import errors, wire
from ops import fleet as fleetmod
from tests.agentproc import REPO
from tests.fleet.conftest import local_fleet
from tests.waiting import wait_for


@pytest.fixture(scope="module")
def small_fleet():
    with local_fleet("bld", 2, 210) as state:
        yield state


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
    result = json.loads(done.stdout)  # the one answer on stdout; the log as JSON lines on stderr
    logs = [json.loads(line)["log"] for line in done.stderr.splitlines() if line.startswith("{")]
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
    assert text.stdout.strip().startswith("bldapp:v2@") and "Step 2/5 : COPY page.txt /srv/" in text.stderr
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


def _hang_upload(hub, tmp_path) -> str:
    from dcctl import buildctx, upload
    ctx = tmp_path / "hang"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo started; sleep 3600\n")
    tar = str(tmp_path / "hang.tar")
    buildctx.pack_context(str(ctx), tar)
    return upload.send_file(lambda m, *a: hub.call(m, *a, timeout_s=60), tar)


def _build_procs(host: dict) -> list[str]:
    """Command lines of processes still running for a build container of ``host``."""
    builds = os.path.join(host["state_dir"], "builds")
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if builds in cmd:
            out.append(cmd)
    return out


def test_caller_gone_stops_the_build_on_its_host(small_fleet, hub, tmp_path):
    """A caller that stops reading a build through the hub (its client
    closed, as a Ctrl-C'd dcctl) stops it on the host within seconds:
    no build container, no lxc process left, the upload removed."""
    host = small_fleet["hosts"][1]
    upload_id = _hang_upload(hub, tmp_path)
    builds = os.path.join(host["state_dir"], "builds")
    caller = wire.connect(small_fleet["hub"]["ipc"], timeout_s=60)
    items = caller.stream("build", upload_id, "bldgone", {"host": host["name"], "timeout_s": 600})
    assert next(items)["log"].startswith("Step 1/1")
    assert next(items) == {"log": "started"}
    assert len(os.listdir(builds)) == 1
    caller.close()  # the caller is gone (no STREAM close: its heartbeat stops)
    wait_for(lambda: os.listdir(builds) == [] and not _build_procs(host), 30, "the abandoned build stopped")
    wait_for(lambda: not os.path.exists(os.path.join(small_fleet["hub"]["state_dir"], "registry", "uploads",
                                                     upload_id + ".tar")), 30, "the upload removed")


def test_hub_killed_mid_build_stops_it_and_restart_cleans(small_fleet, hub, tmp_path):
    """The hub is SIGKILLed during a build's RUN: the agent notices its
    stream's caller lost (heartbeat) and stops the build within seconds;
    the restarted hub removes the build's context upload at start and
    every host is idle in its queue."""
    host = small_fleet["hosts"][0]
    upload_id = _hang_upload(hub, tmp_path)
    builds = os.path.join(host["state_dir"], "builds")
    caller = wire.connect(small_fleet["hub"]["ipc"], timeout_s=60)
    uploads = os.path.join(small_fleet["hub"]["state_dir"], "registry", "uploads")
    try:
        items = caller.stream("build", upload_id, "bldorphan", {"timeout_s": 600})
        assert next(items)["log"].startswith("Step 1/1")
        assert next(items) == {"log": "started"}
        built_on = [h for h in small_fleet["hosts"] if os.listdir(os.path.join(h["state_dir"], "builds"))]
        assert len(built_on) == 1
        host = built_on[0]
        builds = os.path.join(host["state_dir"], "builds")
        hd = small_fleet["hub"]
        pid = int(open(hd["pid_file"]).read())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = [a.decode() for a in f.read().split(b"\0") if a]
        os.kill(pid, 9)
        wait_for(lambda: not os.path.exists(f"/proc/{pid}/cmdline") or
                 open(f"/proc/{pid}/stat").read().split()[2] == "Z", 30, "the hub gone")
        wait_for(lambda: os.listdir(builds) == [] and not _build_procs(host), 30, "the orphaned build stopped")
        assert os.path.exists(os.path.join(uploads, upload_id + ".tar"))  # left by the dead hub
    finally:
        caller.close()
    proc = fleetmod._spawn(argv, hd["log"], hd["pid_file"])
    hd["pid"] = small_fleet["hub"]["pid"] = proc.pid
    for h in small_fleet.get("hubs") or []:
        if h.get("pid_file") == hd["pid_file"]:
            h["pid"] = proc.pid
    fleetmod.save(small_fleet)
    with wire.connect(hd["ipc"], timeout_s=60) as again:
        # (a call before the new hub listens is refused at once: Unreachable, then asked again)
        wait_for(lambda: len(again.call("hub_info")["queue"]["idle"]) == 2, 60, "both hosts idle in the queue",
                 ignore=(errors.Unreachable,))
    assert not os.path.exists(os.path.join(uploads, upload_id + ".tar"))


def test_ctrl_c_of_dcctl_build_is_one_line_and_stops_the_build(small_fleet, hub, tmp_path):
    """SIGINT to ``dcctl build`` during a RUN: exit 130 with one line on
    stderr (no traceback, no KeyboardInterrupt), and the build stops on
    its host within seconds."""
    host = small_fleet["hosts"][1]
    ctx = tmp_path / "hangcli"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo started; sleep 3600\n")
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": small_fleet["hub"]["ipc"]}
    proc = subprocess.Popen([sys.executable, "-m", "dcctl.cli", "build", str(ctx), "-t", "bldint",
                             "--host", host["name"], "--timeout-s", "600"], stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    try:
        seen = []
        while "started" not in seen:
            line = proc.stderr.readline()
            assert line, seen
            seen.append(line.rstrip("\n"))
        proc.send_signal(2)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rest.splitlines() == ["dcctl: build interrupted; the hub stops it on its host"], rest
    builds = os.path.join(host["state_dir"], "builds")
    wait_for(lambda: os.listdir(builds) == [] and not _build_procs(host), 30, "the interrupted build stopped")
