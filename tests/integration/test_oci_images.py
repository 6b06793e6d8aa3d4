"""Application images from the ecosystem on real LXC: an image made by
Debian's umoci (busybox rootfs, a Cmd, an Env, an exposed port, a WorkingDir
and a second layer that deletes a file), imported by a real agent, run
under dcfleet's init; skopeo's docker-archive of it gives the same image id;
exports are read back by skopeo and umoci."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from dcctl import errors
from tests.agentproc import REPO
from tests.ocikit import make_umoci_image, need_tools, run, tree_sum


def wait_for(fn, what: str, timeout_s: float = 60.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def out_file(agent, name: str):
    done = agent.call("container_exec", name, ["cat", "/tmp/out"])
    return done["stdout"] if done["exit_code"] == 0 else None


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    need_tools()
    return str(tmp_path_factory.mktemp("oci"))


@pytest.fixture(scope="module")
def layout(work):
    lay = make_umoci_image(work, tag="v1")
    make_umoci_image(work, tag="nobody", user="nobody")
    return lay


@pytest.fixture
def clean(shared_agent):
    made: list[str] = []
    yield made
    for name in made:
        try:
            shared_agent.call("container_destroy", name, True)
        except errors.NoSuchContainer:
            pass
    for image in shared_agent.call("image_ls"):
        if image["name"].startswith("oci"):
            shared_agent.call("image_rm", f"{image['name']}@{image['id']}")


def test_umoci_image_runs_its_cmd_in_its_workdir_with_its_env(shared_agent, layout, clean):
    agent = shared_agent
    with pytest.raises(errors.AmbiguousImageRef):  # two tags in the layout, none named
        agent.call("image_import", layout, "ociapp")
    m = agent.call("image_import", f"{layout}:v1", "ociapp:v1")
    assert m["tag"] == "v1" and m["exposed_ports"] == [{"proto": "tcp", "port": 8080}]
    listed = [i for i in agent.call("image_ls") if i["name"] == "ociapp"]
    assert [(i["name"], i["tag"], i["id"]) for i in listed] == [("ociapp", "v1", m["id"])]
    clean.append("oci.app")
    agent.call("container_create", "ociapp:v1", "oci.app")
    agent.call("container_start", "oci.app")
    assert wait_for(lambda: out_file(agent, "oci.app"), "the Cmd's output") == b"hello /srv 0\n"
    gone = agent.call("container_exec", "oci.app", ["ls", "/etc/shells"])
    assert gone["exit_code"] != 0 and b"No such file" in gone["stderr"]
    assert agent.call("container_exec", "oci.app", ["cat", "/etc/added"])["stdout"] == b"hi\n"
    files = agent.call("container_exec", "oci.app", ["cat", "/etc/hostname", "/etc/resolv.conf"])["stdout"]
    assert files.startswith(b"oci.app\n") and b"oci.app has no resolver" in files
    hosts = agent.call("container_exec", "oci.app", ["cat", "/etc/hosts"])["stdout"]
    address = agent.call("container_inspect", "oci.app")["address"]
    assert f"{address}\toci.app".encode() in hosts
    ps = agent.call("container_exec", "oci.app", ["ps", "-o", "pid,comm"])["stdout"].decode()
    assert "1 init" in ps and "sleep" in ps  # dcfleet's init is PID 1, the Cmd its child


def test_init_reaps_orphans_and_forwards_the_stop_signal(shared_agent, layout, clean):
    agent = shared_agent
    agent.call("image_import", f"{layout}:v1", "ocireap:v1")
    clean.append("oci.reap")
    agent.call("container_create", "ocireap:v1", "oci.reap")
    agent.call("container_start", "oci.reap")
    wait_for(lambda: out_file(agent, "oci.reap"), "the Cmd")
    # an exec'd shell leaves a child behind; it is re-parented to PID 1 and,
    # when it ends, must be reaped there (no zombie)
    agent.call("container_exec", "oci.reap", ["sh", "-c", "sleep 0.3 & exit 0"])

    def no_zombies():
        states = agent.call("container_exec", "oci.reap", ["sh", "-c", "cat /proc/[0-9]*/stat"])["stdout"]
        rows = [line.split() for line in states.decode().splitlines()]
        return not any(r[2] == "Z" for r in rows) and not any(r[1] == "(sleep)" and r[3] == "1" and r[0] != "2"
                                                               for r in rows)
    wait_for(no_zombies, "the orphan to be reaped")
    view = agent.call("container_stop", "oci.reap", 60.0)
    assert view["state"] == "stopped"
    # SIGTERM (the image's stop signal) reached the Cmd, which ended, so init
    # recorded its status: killed by signal 15
    with open(os.path.join(agent.call("container_inspect", "oci.reap")["rootfs_upper"], "etc/dcfleet/exit")) as f:
        assert f.read().split()[0] == "143"


def test_exit_status_user_and_restart_policy(shared_agent, layout, clean):
    agent = shared_agent
    agent.call("image_import", f"{layout}:nobody", "ociuser:nobody")
    clean.extend(["oci.user", "oci.exit"])
    agent.call("container_create", "ociuser:nobody", "oci.user")
    agent.call("container_start", "oci.user")
    assert wait_for(lambda: out_file(agent, "oci.user"), "the Cmd as nobody") == b"hello /srv 65534\n"
    agent.call("container_create", "ociuser:nobody", "oci.exit",
               {"command": ["sh", "-c", "echo ran >> /tmp/runs; exit 3"], "restart": "on-failure:2"})
    agent.call("container_start", "oci.exit")

    def gave_up():
        info = agent.call("container_inspect", "oci.exit")
        kinds = [e["kind"] for e in info["events"]]
        return info if "restart_gave_up" in kinds and info["state"] == "stopped" else None
    info = wait_for(gave_up, "on-failure:2 to give up", timeout_s=120)
    assert info["last_exit"]["status"] == 3 and info["restart_count"] == 2


def test_an_oom_kill_of_the_command_is_reported(shared_agent, layout, clean):
    agent = shared_agent
    agent.call("image_import", f"{layout}:v1", "ocioom:v1")
    clean.append("oci.oom")
    agent.call("container_create", "ocioom:v1", "oci.oom",
               {"memory_bytes": 32 << 20,
                "command": ["sh", "-c", "sleep 0.5; dd if=/dev/zero of=/dev/null bs=200M count=1"]})
    agent.call("container_start", "oci.oom")

    def oomed():
        info = agent.call("container_inspect", "oci.oom")
        return info if any(e["kind"] == "oom" for e in info["events"]) and info["state"] == "stopped" else None
    info = wait_for(oomed, "an oom event", timeout_s=60)
    assert info["last_exit"]["status"] == 137 and info["oom_killed"] is True


def test_skopeo_docker_archive_gives_the_same_image_id(shared_agent, layout, work, clean):
    agent = shared_agent
    first = agent.call("image_import", f"{layout}:v1", "ociskopeo:v1")
    archive = os.path.join(work, "skopeo-docker.tar")
    if not os.path.exists(archive):
        run("skopeo", "copy", "-q", f"oci:{layout}:v1", f"docker-archive:{archive}:ociskopeo:v1")
    agent.call("image_rm", "ociskopeo:v1")
    again = agent.call("image_import", archive, "ociskopeo:v1")
    assert again["id"] == first["id"] and again["layers"] == first["layers"]
    oci_archive = os.path.join(work, "skopeo-oci.tar")
    if not os.path.exists(oci_archive):
        run("skopeo", "copy", "-q", f"oci:{layout}:v1", f"oci-archive:{oci_archive}:v1")
    agent.call("image_rm", "ociskopeo:v1")
    assert agent.call("image_import", oci_archive, "ociskopeo:v1")["id"] == first["id"]


@pytest.mark.parametrize("fmt", ["oci", "oci-archive", "docker-archive"])
def test_export_is_read_back_by_skopeo_and_umoci(shared_agent, layout, work, clean, fmt):
    agent = shared_agent
    m = agent.call("image_import", f"{layout}:v1", "ociexport:v1")
    dest = os.path.join(work, f"export-{fmt}")
    shutil.rmtree(dest, ignore_errors=True)
    if os.path.isfile(dest):
        os.unlink(dest)
    out = agent.call("image_export", "ociexport:v1", dest, {"format": fmt})
    assert out["id"] == m["id"] and os.path.exists(dest)
    with pytest.raises(errors.InvalidImage, match="exists"):
        agent.call("image_export", "ociexport:v1", dest, {"format": fmt})
    # skopeo copies it back into an OCI layout, umoci unpacks that
    again = os.path.join(work, f"again-{fmt}")
    shutil.rmtree(again, ignore_errors=True)
    source = {"oci": f"oci:{dest}:v1", "oci-archive": f"oci-archive:{dest}", "docker-archive": f"docker-archive:{dest}"}
    run("skopeo", "copy", "-q", source[fmt], f"oci:{again}:v1")
    bundle = os.path.join(work, f"bundle-{fmt}")
    shutil.rmtree(bundle, ignore_errors=True)
    run("umoci", "unpack", "--image", f"{again}:v1", bundle)
    assert not os.path.exists(os.path.join(bundle, "rootfs", "etc", "shells"))
    with open(os.path.join(bundle, "config.json")) as f:
        assert '"GREETING=hello"' in f.read()
    shutil.rmtree(bundle)


def test_dcctl_image_import_and_export(shared_agent, layout, work, clean):
    """Relative paths work against a local agent (dcctl makes them absolute)."""
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": shared_agent.endpoint}

    def dcctl(*args):
        return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True,
                              env=env, timeout=300, cwd=work)
    done = dcctl("image_import", f"{os.path.basename(layout)}:v1", "ocicli:v1")
    assert done.returncode == 0, done.stderr
    dest = os.path.join(work, "cli-export.tar")
    if os.path.exists(dest):
        os.unlink(dest)
    done = dcctl("image_export", "ocicli:v1", "cli-export.tar", "--format", "docker-archive")
    assert done.returncode == 0, done.stderr
    assert "sha256:" in run("skopeo", "inspect", f"docker-archive:{dest}", "--format", "{{.Digest}}")
    listed = json.loads(dcctl("--json", "image_ls").stdout)
    assert {"name": "ocicli", "tag": "v1"}.items() <= next(i for i in listed if i["name"] == "ocicli").items()
    bad = dcctl("image_import", layout, "ocicli")
    assert bad.returncode == 1 and "AmbiguousImageRef" in bad.stderr


def check_debian_export(agent, ref: str, work: str) -> None:
    """Export ``ref`` as an OCI layout on the agent's host, unpack it with
    umoci, and compare the tree with the store's (paths, modes, owners,
    contents)."""
    need_tools()
    manifest = next(i for i in agent.call("image_ls") if i["name"] == ref)
    dest = os.path.join(work, "debian.oci")
    agent.call("image_export", ref, dest, {"format": "oci"}, timeout_s=600)
    bundle = os.path.join(work, "debian-bundle")
    run("umoci", "unpack", "--image", f"{dest}:latest", bundle)
    store_root = os.path.join(agent.state_dir, "images", "layers", manifest["layers"][0])
    assert len(manifest["layers"]) == 1
    assert tree_sum(os.path.join(bundle, "rootfs")) == tree_sum(store_root)
    shutil.rmtree(bundle)
    shutil.rmtree(dest)
