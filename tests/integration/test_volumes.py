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
    # a volume hiding the image's init or system dirs (was: NoCapacity "Failed to exec /sbin/init" at start)
    ["ok:/bin"], ["ok:/sbin"], ["ok:/lib"], ["ok:/lib64"], ["ok:/usr"], ["ok:/usr/bin"], ["ok:/etc"],
    ["ok:/.dcfleet"],
])
def test_bad_volume_specs_are_refused_before_any_work(shared_agent, volumes):
    agent = shared_agent
    with pytest.raises(errors.InvalidArgument):
        agent.call("container_create", "busybox", "vol.bad", {"volumes": volumes})
    assert agent.call("container_ls") == [] and agent.call("volume_ls") == []
    with pytest.raises(errors.InvalidArgument):
        agent.call("volume_create", "../escape")


def test_a_failed_create_removes_the_volume_it_made_never_one_that_existed(agent_factory):
    """A create that fails (here: the /29's five addresses are taken) after
    making a missing volume removes it again; a volume that existed stays.
    A container destroyed before it ever started (how a hub undoes a create
    whose start failed) takes the volumes its create made; one that ran
    leaves them, as volumes outlive containers."""
    from tests.agentproc import _unique_subnet
    agent = agent_factory(extra_args=("--subnet", _unique_subnet().replace(".0/24", ".0/29")))
    agent.call("volume_create", "vf.old")
    with open(os.path.join(agent.call("volume_ls")[0]["path"], "keep"), "w") as f:
        f.write("x")
    for k in range(5):  # every address of the /29 but the gateway's
        agent.call("container_create", "busybox", f"vf.fill{k}", {"volumes": ["vf.old:/srv/old"]})
    with pytest.raises(errors.DcError) as err:
        agent.call("container_create", "busybox", "vf.late", {"volumes": ["vf.old:/srv/old", "vf.new:/srv/new"]})
    assert not isinstance(err.value, errors.InvalidArgument), err.value
    assert [v["name"] for v in agent.call("volume_ls")] == ["vf.old"]  # vf.new went, vf.old stayed
    for k in range(5):
        agent.call("container_destroy", f"vf.fill{k}", True)
    (old,) = agent.call("volume_ls")
    assert old["name"] == "vf.old" and old["size_bytes"] == 1  # existed before: never removed

    agent.call("container_create", "busybox", "vf.never", {"volumes": ["vf.made:/srv/m"]})
    assert "vf.made" in [v["name"] for v in agent.call("volume_ls")]
    agent.call("container_destroy", "vf.never", True)  # never started: the create is undone, with its volume
    assert [v["name"] for v in agent.call("volume_ls")] == ["vf.old"]

    agent.call("container_create", "busybox", "vf.ran", {"volumes": ["vf.kept:/srv/k"]})
    agent.call("container_start", "vf.ran")
    agent.call("container_destroy", "vf.ran", True)
    assert [v["name"] for v in agent.call("volume_ls")] == ["vf.kept", "vf.old"]  # it ran: the volume is kept
