"""Named volumes on a real agent and real LXC: bind-mounted into containers,
kept across container destroy and agent restart, refused removal while a
container is configured with them, bad names and paths refused first."""
from __future__ import annotations

import os

import pytest

from dcctl import errors

pytestmark = pytest.mark.lxc


def _sh(agent, name: str, script: str) -> str:
    out = agent.call("container_exec", name, ["/bin/sh", "-c", script])
    assert out["exit_code"] == 0, out
    return out["stdout"].decode()


def test_a_volume_outlives_its_container_and_the_agent(agent_factory):
    agent = agent_factory()
    made = agent.call("volume_create", "vol.data")
    assert made["name"] == "vol.data" and made["created_now"] is True
    assert agent.call("volume_create", "vol.data")["created_now"] is False
    agent.call("container_create", "busybox", "vol.one", {"volumes": ["vol.data:/srv/data"]})
    assert agent.call("container_inspect", "vol.one")["volumes"] == [{"name": "vol.data", "path": "/srv/data"}]
    agent.call("container_start", "vol.one")
    _sh(agent, "vol.one", "echo kept > /srv/data/note; mkdir /srv/data/sub")
    (row,) = agent.call("volume_ls")
    assert row["name"] == "vol.data" and row["used_by"] == ["vol.one"] and row["size_bytes"] == 5
    assert open(os.path.join(row["path"], "note")).read() == "kept\n"  # the host side of the bind mount

    with pytest.raises(errors.VolumeInUse, match="vol.one"):
        agent.call("volume_rm", "vol.data")
    agent.call("container_destroy", "vol.one", True)

    agent.kill9()
    agent.start()
    (row,) = agent.call("volume_ls")
    assert row["used_by"] == [] and row["size_bytes"] == 5
    # a second container, and a volume made at create when missing
    agent.call("container_create", "busybox", "vol.two",
               {"volumes": ["vol.data:/var/www/data", "vol.fresh:/srv/fresh"]})
    agent.call("container_start", "vol.two")
    assert _sh(agent, "vol.two", "cat /var/www/data/note; ls /srv/fresh | wc -l").split() == ["kept", "0"]
    assert [v["name"] for v in agent.call("volume_ls")] == ["vol.data", "vol.fresh"]
    agent.call("container_destroy", "vol.two", True)
    assert agent.call("volume_rm", "vol.data")["removed"] is True
    assert agent.call("volume_rm", "vol.fresh")["removed"] is True
    assert agent.call("volume_ls") == []
    with pytest.raises(errors.NoSuchVolume):
        agent.call("volume_rm", "vol.data")


@pytest.mark.parametrize("volumes", [
    ["bad..name:/srv"], ["ok:relative/path"], ["ok:/"], ["ok:/proc/x"], ["ok:/srv/../etc"], ["ok:/a b"],
    ["ok:/srv", "other:/srv"], ["noseparator"], [7], ["ok:/etc/dcfleet"], "x" * 80 + ":/srv",
])
def test_bad_volume_specs_are_refused_before_any_work(shared_agent, volumes):
    agent = shared_agent
    with pytest.raises(errors.InvalidArgument):
        agent.call("container_create", "busybox", "vol.bad", {"volumes": volumes})
    assert agent.call("container_ls") == [] and agent.call("volume_ls") == []
    with pytest.raises(errors.InvalidArgument):
        agent.call("volume_create", "../escape")
