"""A build whose commit fills the disk (the agent's state dir, where the
build container's upper dir and the image store live): a typed StoreError,
and nothing half made: no build container, no layer, no staging leftovers,
no image, the space given back."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from dcctl import errors
from tests.agentproc import AgentProcess
from tests.conftest import _need_lxc
from tests.waiting import wait_for

pytestmark = pytest.mark.lxc


@pytest.fixture
def small_agent():
    """A real agent whose state dir is a 48 MiB tmpfs."""
    _need_lxc()
    agent = AgentProcess()
    os.makedirs(agent.state_dir)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", agent.state_dir], check=True)
    try:
        yield agent.start()
    finally:
        agent.cleanup()
        subprocess.run(["umount", "-l", agent.state_dir], capture_output=True)
        shutil.rmtree(agent.root, ignore_errors=True)


def free_bytes(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def test_disk_full_during_the_commit_is_typed_and_leaves_nothing(small_agent, tmp_path):
    a = small_agent
    images = os.path.join(a.state_dir, "images")
    layers_before = sorted(os.listdir(os.path.join(images, "layers")))
    free = free_bytes(a.state_dir)
    mib = int(free * 0.45) >> 20  # the RUN fits; the layer's tar and unpacked copy do not
    (tmp_path / "Dockerfile").write_text(f"FROM busybox\nRUN dd if=/dev/zero of=/big bs=1M count={mib}\n")
    with pytest.raises(errors.StoreError) as exc:
        with a.client(timeout_s=300) as c:
            for _item in c.call("image_build_dockerfile", str(tmp_path), "bldfull", {}):
                pass
    assert "space" in str(exc.value).lower() or "disk full" in str(exc.value).lower(), exc.value
    assert sorted(os.listdir(os.path.join(images, "layers"))) == layers_before
    assert os.listdir(os.path.join(images, "tmp")) == []
    assert os.listdir(os.path.join(a.state_dir, "builds")) == []
    assert [i["name"] for i in a.call("image_ls")] == ["busybox"]
    wait_for(lambda: free_bytes(a.state_dir) > free - (1 << 20), 30, "the space given back")
    # and the agent builds again once there is room
    (tmp_path / "Dockerfile").write_text("FROM busybox\nRUN echo fits > /small\n")
    with a.client(timeout_s=300) as c:
        items = list(c.call("image_build_dockerfile", str(tmp_path), "bldfull", {}))
    assert items[-1]["result"]["name"] == "bldfull"
