"""image_import's options on a real agent: exposed ports in every shape a
caller (dcctl's flags, --options-json, Docker's ExposedPorts keys) sends,
and a typed InvalidArgument for every bad option before any work."""
from __future__ import annotations

import os
import subprocess
import tarfile

import pytest

from dcctl import errors

pytestmark = pytest.mark.lxc

PREFIX = "impopt"


@pytest.fixture
def rootfs_tgz(tmp_path):
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    path = tmp_path / "rootfs.tgz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root / "bin", arcname="bin")
    return str(path)


@pytest.fixture
def agent(shared_agent):
    yield shared_agent
    for img in shared_agent.call("image_ls"):
        if img["name"].startswith(PREFIX):
            shared_agent.call("image_rm", f"{img['name']}@{img['id'][:12]}")


@pytest.mark.parametrize("given, stored", [
    (80, [{"proto": "tcp", "port": 80}]),
    ("80", [{"proto": "tcp", "port": 80}]),
    ("53/udp", [{"proto": "udp", "port": 53}]),
    ([80, "443/tcp", "53/udp", {"proto": "tcp", "port": 8080}, "80/tcp"],
     [{"proto": "tcp", "port": 80}, {"proto": "tcp", "port": 443}, {"proto": "udp", "port": 53},
      {"proto": "tcp", "port": 8080}]),
])
def test_exposed_ports_in_every_shape(agent, rootfs_tgz, given, stored):
    m = agent.call("image_import", rootfs_tgz, f"{PREFIX}:v1", {"exposed_ports": given})
    assert m["exposed_ports"] == stored


@pytest.mark.parametrize("options", [
    {"exposed_ports": "abc"}, {"exposed_ports": 0}, {"exposed_ports": 70000},
    {"exposed_ports": "80/sctp"}, {"exposed_ports": [80, "x"]}, {"exposed_ports": 1.5},
    {"exposed_ports": {"80/tcp": {}}}, {"exposed_ports": True},
    {"env": ["A=1"]}, {"env": {"1A": "x"}}, {"env": {"A": 1}},
    {"command": 5}, {"command": [1, 2]},
    {"stop_signal": "KILL"}, {"stop_signal": 9},
    {"init": "sbin/init"}, {"init": 5},
    {"templates": "/etc/hostname"}, {"templates": ["rel/path"]}, {"templates": 3},
    {"format": "zip"}, {"format": 1},
])
def test_bad_options_are_invalid_argument_before_any_work(agent, rootfs_tgz, options):
    layers_dir = os.path.join(agent.state_dir, "images", "layers")
    before = sorted(os.listdir(layers_dir)), agent.call("image_ls")
    with pytest.raises(errors.InvalidArgument):
        agent.call("image_import", rootfs_tgz, f"{PREFIX}:bad", options)
    assert (sorted(os.listdir(layers_dir)), agent.call("image_ls")) == before


def test_dcctl_exposed_ports_flag(agent, rootfs_tgz):
    env = {**os.environ, "DCCTL_HOST": agent.endpoint}
    out = subprocess.run(["python3", "-m", "dcctl.cli", "--json", "image_import", rootfs_tgz, f"{PREFIX}:v2",
                          "--exposed-ports", "80"], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert '"port": 80' in out.stdout
