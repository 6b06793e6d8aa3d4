"""agents.network and agents.netfilter offline: recorded ``iptables -S`` and
``ss`` output (tests/data/network_*) fed through a fake ``run`` seam."""
from __future__ import annotations

import pathlib

import pytest

from agents import netfilter
from agents.network import (InvalidNetworkArgument, Network, NetworkError, PortInUse,
                            PortRangeExhausted)
from lxcwrap.run import Completed, ToolNotFound

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"
CHAIN = "DCF-dcbr0-DNAT"


def recorded(name: str) -> str:
    return (DATA / f"network_{name}.txt").read_text()


class FakeRun:
    """A run seam answering from a table of argv prefixes; records calls."""

    def __init__(self, answers: dict[tuple[str, ...], tuple[int, str]] | None = None):
        self.answers = answers or {}
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, argv, timeout_s=0, **kw):
        argv = tuple(argv)
        self.calls.append(argv)
        for prefix in sorted(self.answers, key=len, reverse=True):
            if argv[:len(prefix)] == prefix:
                rc, out = self.answers[prefix]
                return Completed(argv, rc, out.encode(), b"" if rc == 0 else out.encode())
        return Completed(argv, 0, b"", b"")

    def iptables(self, verb: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == "iptables" and verb in c]


def recorded_host() -> FakeRun:
    return FakeRun({
        ("iptables", "-w", "-t", "nat", "-S", CHAIN): (0, recorded("iptables_nat_S_dnat_chain")),
        ("iptables", "-w", "-t", "nat", "-S"): (0, recorded("iptables_nat_S")),
        ("ss", "-H", "-ltn"): (0, recorded("ss_ltn")),
        ("ss", "-H", "-aun"): (0, recorded("ss_aun")),
    })


def net(run, port_range=(20000, 20999)):
    return Network("dcbr0", "10.217.3.0/24", port_range, run=run)


JEROME_TCP = {"container": "jerome.awesome.ubuntu", "proto": "tcp", "host_port": 20080,
              "container_address": "10.217.3.2", "container_port": 80}
JEROME_UDP = dict(JEROME_TCP, proto="udp", host_port=20053, container_port=53)
WEB = {"container": "web-2_x", "proto": "tcp", "host_port": 20443,
       "container_address": "10.217.3.3", "container_port": 443}


def test_list_rules_parses_recorded_chain_and_skips_foreign_rules():
    assert net(recorded_host()).list_rules() == [JEROME_TCP, JEROME_UDP, WEB]


def test_list_rules_is_empty_without_the_chain():
    run = FakeRun({("iptables", "-w", "-t", "nat", "-S", CHAIN): (1, "iptables: No chain/target/match by that name.")})
    assert net(run).list_rules() == []


def test_mapping_spec_round_trips():
    layout = netfilter.Layout("dcbr0", "dcbr0", "10.217.3.0/24")
    for m in (JEROME_TCP, JEROME_UDP, WEB):
        assert layout.parse_mapping(layout.mapping_spec(m)) == m
    other = netfilter.Layout("other", "dcbr1", "10.217.4.0/24")
    assert other.parse_mapping(layout.mapping_spec(JEROME_TCP)) is None


def test_dnat_host_ports_sees_every_agent_and_docker():
    text = recorded("iptables_nat_S")
    assert netfilter.dnat_host_ports(text, "tcp") == {20080, 20443, 20999, 21000, 8080}
    assert netfilter.dnat_host_ports(text, "udp") == {20053, 9053}


def test_bound_ports_from_recorded_ss():
    assert netfilter.bound_ports(recorded("ss_ltn")) == {20100, 20101, 20102}
    assert netfilter.bound_ports(recorded("ss_aun")) == {20200, 20201}
    assert netfilter.bound_ports("UNCONN 0 0 0.0.0.0%eth0:68 0.0.0.0:*\n\n") == {68}


def test_allocate_port_never_returns_a_taken_bound_or_mapped_port():
    n = net(recorded_host(), port_range=(20075, 20105))
    taken = {("tcp", p) for p in range(20085, 20095)} | {("udp", 20075)}
    busy = set(range(20085, 20095)) | {20100, 20101, 20102, 20080}
    free = set(range(20075, 20106)) - busy
    seen = {n.allocate_port("tcp", taken) for _ in range(600)}
    assert seen == free  # random over the whole free set, never a busy one
    assert {n.allocate_port("udp", taken) for _ in range(100)} <= set(range(20076, 20106))


def test_allocate_port_exhausted():
    n = net(recorded_host(), port_range=(20100, 20102))
    with pytest.raises(PortRangeExhausted):
        n.allocate_port("tcp", set())
    with pytest.raises(PortRangeExhausted):
        net(recorded_host(), port_range=(20300, 20301)).allocate_port(
            "udp", {("udp", 20300), ("udp", 20301)})
    with pytest.raises(InvalidNetworkArgument):
        n.allocate_port("icmp", set())


@pytest.mark.parametrize("proto, port, taken", [
    ("tcp", 20500, {("tcp", 20500)}),   # recorded by the agent
    ("tcp", 20100, set()),              # listening socket
    ("udp", 20201, set()),              # bound udp socket
    ("tcp", 21000, set()),              # another agent's rule
    ("tcp", 8080, set()),               # someone else's DNAT
    ("udp", 20053, set()),
])
def test_check_port_available_in_use(proto, port, taken):
    with pytest.raises(PortInUse):
        net(recorded_host()).check_port_available(proto, port, taken)


def test_check_port_available_ok_and_invalid():
    n = net(recorded_host())
    n.check_port_available("tcp", 20053, {("udp", 20500)})  # 20053 is mapped for udp only
    for proto, port in [("tcp", 0), ("tcp", 65536), ("tcp", "80"), ("sctp", 80)]:
        with pytest.raises(InvalidNetworkArgument):
            n.check_port_available(proto, port, set())


def test_reconcile_deletes_rule_by_rule_then_appends_without_flushing():
    run = recorded_host()
    new = dict(WEB, host_port=20444)
    assert net(run).reconcile([JEROME_TCP, new]) == {"added": 1, "removed": 4}
    deletes = [c[6:] for c in run.iptables("-D")]
    assert deletes == [netfilter.Layout("dcbr0", "dcbr0", "10.217.3.0/24").mapping_spec(m)
                       for m in (JEROME_UDP, WEB)] + [
        ("-p", "tcp", "-m", "tcp", "--dport", "1", "-j", "RETURN"),
        ("-p", "tcp", "-m", "tcp", "--dport", "20999", "-m", "comment", "--comment",
         "dcf:elsewhere:x", "-j", "DNAT", "--to-destination", "10.217.3.9:80")]
    appends = run.iptables("-A")
    assert len(appends) == 1 and "20444" in appends[0] and appends[0][4:6] == ("-A", CHAIN)
    assert run.calls.index(appends[0]) > run.calls.index(run.iptables("-D")[-1])
    assert not run.iptables("-F") and all("-w" in c for c in run.calls if c[0] == "iptables")


def test_reconcile_refuses_two_targets_for_one_port_before_any_call():
    run = recorded_host()
    with pytest.raises(InvalidNetworkArgument):
        net(run).reconcile([JEROME_TCP, dict(JEROME_TCP, container_port=81)])
    assert run.calls == []


def test_add_mapping_is_idempotent_and_refuses_a_mapped_port():
    run = recorded_host()
    assert net(run).add_mapping(JEROME_TCP) is False
    with pytest.raises(PortInUse):
        net(run).add_mapping(dict(JEROME_TCP, container="intruder"))
    assert run.iptables("-A") == []
    with pytest.raises(NetworkError, match="ensure_bridge"):
        net(FakeRun({("iptables", "-w", "-t", "nat", "-S"): (1, "No chain")})).add_mapping(JEROME_TCP)


def test_ensure_bridge_on_a_bare_host_creates_everything_once():
    run = FakeRun({("ip", "-j", "-d", "link", "show"): (1, 'Device "dcbr0" does not exist.'),
                   ("ip", "-j", "addr"): (0, "[]"),
                   ("iptables", "-w", "-t"): (1, "iptables: No chain/target/match by that name.")})
    run.answers.update({("iptables", "-w", "-t", t, v): (0, "") for t in ("nat", "filter", "raw")
                        for v in ("-N", "-A", "-I")})
    net(run).ensure_bridge()
    assert ("ip", "link", "add", "dcbr0", "type", "bridge") in run.calls
    assert ("ip", "addr", "add", "10.217.3.1/24", "brd", "+", "dev", "dcbr0") in run.calls
    assert ("sysctl", "-q", "-w", "net/ipv4/conf/dcbr0/route_localnet=1") in run.calls
    assert ("sysctl", "-q", "-w", "net/ipv4/ip_forward=1") in run.calls
    assert len(run.iptables("-N")) == 4
    added = run.iptables("-A") + run.iptables("-I")
    layout = netfilter.Layout("dcbr0", "dcbr0", "10.217.3.0/24")
    assert len(added) == len(layout.fixed_rules()) + len(layout.jumps())
    for call in added:  # each checked with -C first
        check = call[:4] + ("-C", call[5]) + call[(7 if call[4] == "-I" else 6):]
        assert check in run.calls[:run.calls.index(call)]


def test_ensure_bridge_when_all_is_there_adds_nothing():
    address = '[{"addr_info":[{"family":"inet","local":"10.217.3.1","prefixlen":24}]}]'
    run = FakeRun({("ip", "-j", "-d", "link", "show"): (0, '[{"linkinfo":{"info_kind":"bridge"}}]'),
                   ("ip", "-j", "addr"): (0, address)})
    net(run).ensure_bridge()
    assert not [c for c in run.calls if set(c) & {"-A", "-I", "-N", "add"}]


def test_ensure_bridge_refuses_a_non_bridge_link():
    run = FakeRun({("ip", "-j", "-d", "link", "show"): (0, '[{"linkinfo":{"info_kind":"veth"}}]')})
    with pytest.raises(NetworkError, match="not a bridge"):
        net(run).ensure_bridge()


def test_tool_failures_become_network_errors():
    def missing(argv, timeout_s=0, **kw):
        raise ToolNotFound("iptables: not installed", argv)

    with pytest.raises(NetworkError) as info:
        net(missing).list_rules()
    assert isinstance(info.value.__cause__, ToolNotFound)
    run = FakeRun({("iptables",): (4, "iptables: Permission denied")})
    with pytest.raises(NetworkError, match="Permission denied"):
        net(run).remove_mapping(JEROME_TCP)
