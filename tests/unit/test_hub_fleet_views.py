"""The hub's fleet views (container_ls, network_ls, hostinfo) over fake
agents on real ipc sockets, one of them a rogue host (its own key, its own
answers): whatever shape its answers take, the view of every other host
still answers, and no host can put its rows under another host's name."""
from __future__ import annotations

import pytest

from dcctl import wire
from tests.hubfakes import FakeAgent, FakeFleet

GARBAGE = [5, "text", {"name": "x"}, [1, 2], [{"no": "name"}], [{"name": 7}], None]


class RogueAgent(FakeAgent):
    """Answers every view with ``self.answer``."""

    answer = None

    @wire.expose
    def container_ls(self) -> list:
        return self.answer

    @wire.expose
    def network_ls(self):
        return self.answer

    @wire.expose
    def hostinfo(self):
        return self.answer


@pytest.fixture
def fleet(tmp_path):
    made = FakeFleet(tmp_path, {"honest": 4, "rogue": 4})
    made.push_image()
    made.unserve("rogue")
    made.agents["rogue"] = RogueAgent("rogue")
    made.serve("rogue")
    made.hub.create_container("busybox", "good.web", {"host": "honest"})
    yield made
    made.close()


@pytest.mark.parametrize("answer", GARBAGE)
def test_a_rogue_hosts_garbage_never_breaks_the_fleet_views(fleet, answer):
    fleet.agents["rogue"].answer = answer
    listed = fleet.hub.container_ls()
    assert [(c["host"], c["name"], c["state"]) for c in listed if c["host"] == "honest"] == [
        ("honest", "good.web", "running")]
    nets = {r["host"]: r for r in fleet.hub.network_ls()}
    infos = {r["host"]: r for r in fleet.hub.hostinfo()}
    assert set(nets) == set(infos) == {"honest", "rogue"}
    if not isinstance(answer, dict):  # a map is a hostinfo as far as the hub can tell
        assert "error" in nets["rogue"] and infos["rogue"]["status"] == "error"


def test_a_rogue_host_cannot_answer_views_under_another_hosts_name(fleet):
    fleet.agents["rogue"].answer = {"host": "honest", "status": "ok"}
    assert sorted(r["host"] for r in fleet.hub.network_ls()) == ["honest", "rogue"]
    assert sorted(r["host"] for r in fleet.hub.hostinfo()) == ["honest", "rogue"]


def test_a_rogue_host_cannot_list_its_rows_under_another_host(fleet):
    fleet.agents["rogue"].answer = [{"name": "good.web", "host": "honest", "state": "stopped"},
                                    {"name": "fake.db", "host": "honest", "state": "running"}]
    listed = fleet.hub.container_ls()
    assert {(c["host"], c["name"], c["state"]) for c in listed} == {
        ("honest", "good.web", "running"), ("rogue", "good.web", "stopped"), ("rogue", "fake.db", "running")}
