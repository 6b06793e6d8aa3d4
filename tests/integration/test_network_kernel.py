"""agents.network against the real kernel, inside throwaway network namespaces
(see netfixtures): bridge, DNAT port mappings over every path, reconcile,
coexistence of two agents, teardown, and the 127.0.0.1 pitfall."""
from __future__ import annotations

import secrets

import pytest

from agents.network import Network, NoSuchPortMapping, PortInUse, PortRangeExhausted
from lxcwrap.run import netns_runner
from tests.integration.netfixtures import lab  # noqa: F401  (fixture)

HOST_PORT = 20080
PAGE = "page.txt"


def mapping(topo, proto="tcp", host_port=HOST_PORT, container_port=8000, container="web.app"):
    return {"container": container, "proto": proto, "host_port": host_port,
            "container_address": topo.container_address, "container_port": container_port}


@pytest.fixture(params=[True, False], ids=["br_netfilter", "no_br_netfilter"])
def served(lab, tmp_path, request):  # noqa: F811
    """A topology whose container serves a page over HTTP on port 8000, with
    and without iptables seeing bridged frames."""
    token = "hello-" + secrets.token_hex(4)
    (tmp_path / PAGE).write_text(token)
    topo = lab.topology(br_netfilter=request.param)
    lab.http_server(topo.container, topo.container_address, 8000, str(tmp_path))
    return lab, topo, token


def iptables_save(lab, ns):
    return lab.exec(ns, "iptables-save").stdout


def rule_lines(lab, ns, needle):
    """Rules and chain names (without counters) of iptables-save holding needle."""
    lines = (line.split()[0] if line.startswith(":") else line
             for line in iptables_save(lab, ns).splitlines() if not line.startswith("#"))
    return sorted(line for line in lines if needle in line)


def test_tcp_mapping_answers_on_every_path_then_stops(served):
    lab, topo, token = served
    assert topo.net.add_mapping(mapping(topo)) is True
    assert topo.net.add_mapping(mapping(topo)) is False  # idempotent
    assert topo.net.list_rules() == [mapping(topo)]
    neighbour = lab.attach_container(topo.host, topo.net, "neighbour", topo.net.allocate_address(
        {topo.container_address}))
    paths = [
        (topo.host, f"http://127.0.0.1:{HOST_PORT}/{PAGE}"),        # OUTPUT + route_localnet
        (topo.host, f"http://{topo.uplink_address}:{HOST_PORT}/{PAGE}"),  # OUTPUT, own address
        (topo.client, f"http://{topo.uplink_address}:{HOST_PORT}/{PAGE}"),  # PREROUTING
        (topo.container, f"http://{topo.net.gateway}:{HOST_PORT}/{PAGE}"),  # hairpin
        (topo.container, f"http://{topo.uplink_address}:{HOST_PORT}/{PAGE}"),
        (neighbour, f"http://{topo.uplink_address}:{HOST_PORT}/{PAGE}"),  # container to container
    ]
    for ns, url in paths:
        got = lab.http_get(ns, url)
        assert (got.returncode, got.stdout) == (0, token), (ns, url, got.stderr)

    assert topo.net.remove_mapping(mapping(topo)) is True
    assert topo.net.remove_mapping(mapping(topo)) is False
    with pytest.raises(NoSuchPortMapping):
        topo.net.remove_mapping(mapping(topo), missing_ok=False)
    assert topo.net.list_rules() == []
    for ns, url in paths:
        assert lab.http_get(ns, url).returncode != 0, (ns, url)


def test_udp_mapping(lab):  # noqa: F811
    topo = lab.topology()
    lab.udp_echo(topo.container, topo.container_address, 5353)
    topo.net.add_mapping(mapping(topo, proto="udp", host_port=20053, container_port=5353))
    for ns, address in [(topo.host, "127.0.0.1"), (topo.client, topo.uplink_address)]:
        got = lab.udp_ask(ns, address, 20053, "ping")
        assert (got.returncode, got.stdout.strip()) == (0, "echo:ping"), (ns, got.stderr)


def test_reconcile_restores_deleted_and_removes_strays(served):
    lab, topo, token = served
    net, chain = topo.net, topo.net.layout.dnat_chain
    wanted = [mapping(topo), mapping(topo, host_port=20081, container="web.other")]
    assert net.reconcile(wanted) == {"added": 2, "removed": 0}
    lab.exec(topo.host, "iptables", "-w", "-t", "nat", "-D", chain, *net.layout.mapping_spec(wanted[0]))
    stray = mapping(topo, host_port=20999, container="gone.app")
    lab.exec(topo.host, "iptables", "-w", "-t", "nat", "-A", chain, *net.layout.mapping_spec(stray))
    lab.exec(topo.host, "iptables", "-w", "-t", "nat", "-A", chain, "-p", "tcp", "--dport", "1",
             "-j", "RETURN")
    lab.exec(topo.host, "iptables", "-w", "-t", "nat", "-A", chain, *net.layout.mapping_spec(wanted[1]))

    assert net.reconcile(wanted) == {"added": 1, "removed": 3}  # stray, foreign, duplicate
    assert sorted(net.list_rules(), key=lambda m: m["host_port"]) == wanted
    assert len(lab.exec(topo.host, "iptables", "-w", "-t", "nat", "-S", chain).stdout.splitlines()) == 3
    for port in (HOST_PORT, 20081):
        got = lab.http_get(topo.client, f"http://{topo.uplink_address}:{port}/{PAGE}")
        assert got.stdout == token
    assert net.reconcile(wanted) == {"added": 0, "removed": 0}
    assert net.reconcile([]) == {"added": 0, "removed": 2}


def test_two_agents_in_one_namespace_leave_each_other_alone(served):
    lab, topo, token = served
    other = Network("dctbr1", "10.217.4.0/24", (21000, 21999), run=netns_runner(topo.host), tag="other")
    other.ensure_bridge()
    other_mapping = {"container": "db.app", "proto": "tcp", "host_port": 21000,
                     "container_address": "10.217.4.2", "container_port": 5432}
    other.add_mapping(other_mapping)
    topo.net.add_mapping(mapping(topo))
    before = rule_lines(lab, topo.host, "DCF-other-")

    assert topo.net.reconcile([]) == {"added": 0, "removed": 1}
    assert other.list_rules() == [other_mapping]
    with pytest.raises(PortInUse):  # another agent's DNAT rule holds the port
        topo.net.check_port_available("tcp", 21000, set())
    topo.net.teardown()
    assert rule_lines(lab, topo.host, "DCF-other-") == before
    assert rule_lines(lab, topo.host, "DCF-dctbr0-") == []
    assert other.list_rules() == [other_mapping]
    assert lab.ip(topo.host, "link", "show", "dctbr1").returncode == 0
    other.teardown()


def test_ensure_bridge_is_idempotent_and_teardown_leaves_nothing(lab):  # noqa: F811
    topo = lab.topology()
    topo.net.add_mapping(mapping(topo))
    first = rule_lines(lab, topo.host, "")
    topo.net.ensure_bridge()
    assert rule_lines(lab, topo.host, "") == first
    assert lab.exec(topo.host, "cat", "/proc/sys/net/ipv4/conf/dctbr0/route_localnet").stdout.strip() == "1"

    topo.net.teardown()
    saved = iptables_save(lab, topo.host)
    assert "DCF-" not in saved and "dcf:" not in saved
    assert lab.ip(topo.host, "link", "show", "dctbr0", check=False).returncode != 0
    topo.net.teardown()  # idempotent


def raw_drops(lab, topo):
    out = lab.exec(topo.host, "iptables", "-w", "-t", "raw", "-L", topo.net.layout.raw_chain,
                   "-n", "-v", "-x").stdout.splitlines()
    return sum(int(line.split()[0]) for line in out[2:] if "DROP" in line)


def test_loopback_stays_closed_to_other_machines_and_containers(served, tmp_path):
    """moby#41872 / #45629: crafted packets for 127.0.0.1 from a neighbour or
    from a container must reach neither a mapped port nor the host's
    loopback-only services, although 127.0.0.1 works from the host itself."""
    lab, topo, token = served
    topo.net.add_mapping(mapping(topo))
    lab.http_server(topo.host, "127.0.0.1", 8999, str(tmp_path))
    assert lab.http_get(topo.host, f"http://127.0.0.1:{HOST_PORT}/{PAGE}").stdout == token
    assert lab.http_get(topo.host, f"http://127.0.0.1:8999/{PAGE}").stdout == token

    lab.route_loopback_via(topo.client, topo.uplink_address)
    lab.route_loopback_via(topo.container, topo.net.gateway)
    drops = raw_drops(lab, topo)
    for ns in (topo.client, topo.container):
        for port in (HOST_PORT, 8999):
            got = lab.http_get(ns, f"http://127.0.0.1:{port}/{PAGE}")
            assert got.returncode != 0 and token not in got.stdout, (ns, port)
    assert raw_drops(lab, topo) > drops  # the crafted packets did arrive, and were dropped
    # The same neighbour still reaches the mapped port the ordinary way.
    assert lab.http_get(topo.client, f"http://{topo.uplink_address}:{HOST_PORT}/{PAGE}").stdout == token


def test_port_checks_see_bound_sockets_in_the_namespace(lab):  # noqa: F811
    topo = lab.topology(port_range=(20500, 20500))
    lab.udp_echo(topo.host, "127.0.0.1", 20500)
    with pytest.raises(PortInUse):
        topo.net.check_port_available("udp", 20500, set())
    with pytest.raises(PortRangeExhausted):
        topo.net.allocate_port("udp", set())
    assert topo.net.allocate_port("tcp", set()) == 20500
    with pytest.raises(PortRangeExhausted):
        topo.net.allocate_port("tcp", {("tcp", 20500)})
    topo.net.check_port_available("tcp", 20500, set())
    topo.net.add_mapping(mapping(topo, host_port=20500))
    with pytest.raises(PortInUse):
        topo.net.check_port_available("tcp", 20500, set())
    with pytest.raises(PortInUse):  # same host port, another container
        topo.net.add_mapping(mapping(topo, host_port=20500, container="intruder"))


def test_remove_stale_veth(lab):  # noqa: F811
    topo = lab.topology()
    name = topo.net.veth_name("left.behind")
    lab.ip(topo.host, "link", "add", name, "type", "veth", "peer", "name", "dcvpeer0")
    assert topo.net.remove_stale_veth(name) is True
    assert lab.ip(topo.host, "link", "show", name, check=False).returncode != 0
    assert lab.ip(topo.host, "link", "show", "dcvpeer0", check=False).returncode != 0
    assert topo.net.remove_stale_veth(name) is False
    links = lab.ip(topo.host, "-br", "link").stdout
    assert sum(line.startswith("dcv") for line in links.splitlines()) == 1  # the container's
