"""hub/streams.relay over real sockets: an agent's stream reaches the hub's
caller in order; a caller that leaves closes the agent's stream; an agent
that dies mid-stream is Unreachable naming its host."""
import gevent
import pytest

from dcctl import errors, wire
from hub.agents import Agents
from hub.store import HubStore
from hub.streams import relay
from tests.waiting import wait_for


class Agent:
    def __init__(self):
        self.closed = 0

    @wire.expose(stream=True)
    def ticks(self, n: int) -> dict:
        i = 0
        try:
            while n < 0 or i < n:
                yield {"i": i}
                i += 1
                if n < 0:
                    gevent.sleep(0.01)
        finally:
            self.closed += 1


class Hub:
    def __init__(self, agents):
        self.agents = agents

    @wire.expose(stream=True)
    def follow(self, host: str, n: int) -> dict:
        return relay(self.agents, host, "ticks", n, annotate=lambda item: {**item, "host": host})


@pytest.fixture
def fleet(tmp_path):
    agent = Agent()
    agent_svc = wire.Service(agent, "agent", heartbeat_s=0.5)
    agent_ep = f"ipc://{tmp_path}/agent.sock"
    agent_svc.bind(agent_ep)
    agent_svc.start()
    store = HubStore(str(tmp_path / "hub"))
    store.upsert_host("h1", agent_ep, "addr-h1", {}, {})
    agents = Agents(store, heartbeat_s=1.0)
    hub_svc = wire.Service(Hub(agents), "hub", heartbeat_s=0.5)
    hub_ep = f"ipc://{tmp_path}/hub.sock"
    hub_svc.bind(hub_ep)
    hub_svc.start()
    caller = wire.RpcClient(hub_ep, timeout_s=5, heartbeat_s=0.5)
    yield agent, agent_svc, caller
    caller.close()
    hub_svc.stop()
    agents.close()
    agent_svc.stop()
    store.close()


def test_relay_hands_every_item_on_in_order(fleet):
    agent, _, caller = fleet
    got = list(caller.stream("follow", "h1", 400))
    assert got == [{"i": i, "host": "h1"} for i in range(400)]
    wait_for(lambda: agent.closed == 1, 10, "the agent's generator closed")


def test_a_caller_that_leaves_closes_the_agents_stream(fleet):
    agent, _, caller = fleet
    items = caller.stream("follow", "h1", -1)
    assert next(items)["i"] == 0
    items.close()
    wait_for(lambda: agent.closed == 1, 20, "the agent's stream closed after the caller left")


def test_an_agent_that_dies_mid_stream_is_unreachable_naming_its_host(fleet):
    _, agent_svc, caller = fleet
    items = caller.stream("follow", "h1", -1)
    assert next(items)["i"] == 0
    agent_svc.stop()
    with gevent.Timeout(30):  # a deadline: without heartbeats this would hang
        with pytest.raises(errors.Unreachable, match="host h1"):
            for _ in items:
                pass


def test_an_unknown_host_is_no_such_host(fleet):
    _, _, caller = fleet
    with pytest.raises(errors.NoSuchHost):
        caller.call("follow", "nope", 3)
