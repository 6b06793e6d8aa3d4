"""Plain calls served without zerorpc's channel stack (dcctl.wire.zrpcserve)
keep zerorpc's heartbeat behaviour, over real sockets with the stock
zerorpc client underneath RpcClient: a call longer than the heartbeat is
kept alive both ways, and a caller that goes away has its call killed."""
import gevent
import pytest

from dcctl import errors, wire
from tests.waiting import wait_for

HEARTBEAT_S = 0.3


class Napper:
    def __init__(self):
        self.outcomes = []

    @wire.expose
    def nap(self, seconds: float) -> str:
        try:
            gevent.sleep(seconds)
        except BaseException as exc:
            self.outcomes.append(type(exc).__name__)
            raise
        self.outcomes.append("done")
        return "rested"


@pytest.fixture
def napper(tmp_path):
    target = Napper()
    svc = wire.Service(target, "napper", heartbeat_s=HEARTBEAT_S)
    ep = f"ipc://{tmp_path}/nap.sock"
    svc.bind(ep)
    svc.start()
    client = wire.RpcClient(ep, timeout_s=30, heartbeat_s=HEARTBEAT_S)
    yield target, client
    client.close()
    svc.stop()


def test_a_plain_call_longer_than_the_heartbeat_is_answered(napper):
    target, client = napper
    # the client drops a server that sends no heartbeat for two of its intervals (0.6 s)
    assert client.call("nap", 8 * HEARTBEAT_S) == "rested"
    assert target.outcomes == ["done"]


def test_a_caller_that_goes_away_has_its_call_killed(napper):
    target, client = napper
    with pytest.raises(errors.CallTimeout):
        client.call("nap", 60.0, timeout_s=HEARTBEAT_S)
    wait_for(lambda: target.outcomes, 30, "the server to notice its caller gone")
    assert target.outcomes == ["LostRemote"]
    assert client.call("nap", 0.0) == "rested"  # and the server goes on
