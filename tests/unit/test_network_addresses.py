"""agents.network without side effects: errors, validation, address
allocation, veth names."""
from __future__ import annotations

import re

import pytest

from agents import network
from agents.network import (AddressPoolExhausted, InvalidNetworkArgument, Network, NetworkError,
                            NoSuchPortMapping, PortInUse, PortRangeExhausted, validate_mapping)
from agents import errmap
from dcctl import errors as wire


def refuse_to_run(argv, timeout_s=0, **kw):
    raise AssertionError(f"no tool may run here: {argv}")


def net(subnet="10.217.3.0/24", **kw):
    return Network("dcbr0", subnet, (20000, 20999), run=refuse_to_run, **kw)


GOOD = {"container": "jerome.awesome.ubuntu", "proto": "tcp", "host_port": 20080,
        "container_address": "10.217.3.2", "container_port": 80}


def test_public_api():
    assert sorted(network.__all__) == [
        "AddressPoolExhausted", "InvalidNetworkArgument", "Network", "NetworkError", "NoSuchPortMapping",
        "PROTOS", "PortInUse", "PortRangeExhausted", "VETH_PREFIX", "validate_mapping"]


@pytest.mark.parametrize("cls, wire_cls, builtin", [
    (PortInUse, wire.PortInUse, Exception),
    (PortRangeExhausted, wire.PortRangeExhausted, Exception),
    (AddressPoolExhausted, wire.AddressPoolExhausted, Exception),
    (InvalidNetworkArgument, wire.InvalidArgument, ValueError),
    (NoSuchPortMapping, wire.NoSuchPortMapping, LookupError),
])
def test_error_tree_is_its_own_and_mapped_by_class(cls, wire_cls, builtin):
    assert issubclass(cls, NetworkError) and issubclass(cls, builtin)
    assert not issubclass(cls, wire.DcError) and not issubclass(NetworkError, wire.DcError)
    assert errmap.TABLE[cls] is wire_cls
    mapped = errmap.translate(cls("no room", hint="free one"))
    assert type(mapped) is wire_cls and mapped.message == "no room" and mapped.hint == "free one"


def test_properties():
    n = net()
    assert (n.gateway, n.prefixlen, n.network) == ("10.217.3.1", 24, "10.217.3.0/24")
    assert n.tag == "dcbr0" and n.layout.dnat_chain == "DCF-dcbr0-DNAT"
    assert net(tag="agent7").layout.dnat_chain == "DCF-agent7-DNAT"


@pytest.mark.parametrize("kwargs", [
    {"bridge": "a" * 16}, {"bridge": ""}, {"bridge": "br 0"}, {"bridge": "-br"}, {"bridge": None},
    {"subnet": "10.217.3.1/24"}, {"subnet": "10.217.3.0/31"}, {"subnet": "10.217.3.0"},
    {"subnet": "fd00::/64"}, {"subnet": "nonsense"}, {"subnet": None},
    {"port_range": (0, 10)}, {"port_range": (10, 65536)}, {"port_range": (200, 100)},
    {"port_range": (True, 10)}, {"port_range": (1,)}, {"port_range": None},
    {"tag": "a:b"}, {"tag": "x" * 16}, {"tag": ""},
])
def test_constructor_validates(kwargs):
    args = {"bridge": "dcbr0", "subnet": "10.217.3.0/24", "port_range": (20000, 20999)}
    tag = kwargs.pop("tag", None)
    args.update(kwargs)
    with pytest.raises(InvalidNetworkArgument):
        Network(args["bridge"], args["subnet"], args["port_range"], run=refuse_to_run, tag=tag)


def test_allocate_address_lowest_free_skipping_gateway_and_used():
    n = net()
    assert n.allocate_address(set()) == "10.217.3.2"
    assert n.allocate_address({"10.217.3.2", "10.217.3.4"}) == "10.217.3.3"
    assert n.allocate_address({"10.217.3.2/24", "10.217.3.3"}) == "10.217.3.4"
    assert n.allocate_address({"192.168.1.2", "10.217.3.1"}) == "10.217.3.2"  # outside / gateway


def test_allocate_address_never_network_or_broadcast_and_exhausts():
    n = net("10.217.3.0/30")  # .0 network, .1 gateway, .2 the only one, .3 broadcast
    assert n.allocate_address(set()) == "10.217.3.2"
    with pytest.raises(AddressPoolExhausted):
        n.allocate_address({"10.217.3.2"})
    full = net("10.217.3.0/24")
    with pytest.raises(AddressPoolExhausted):
        full.allocate_address({f"10.217.3.{i}" for i in range(2, 255)})
    assert full.allocate_address({f"10.217.3.{i}" for i in range(2, 254)}) == "10.217.3.254"


def test_allocate_address_rejects_garbage():
    with pytest.raises(InvalidNetworkArgument):
        net().allocate_address({"10.217.3.999"})


def test_validate_mapping_normalises():
    assert validate_mapping(dict(GOOD, extra=1)) == GOOD
    assert validate_mapping(GOOD, net()._net) == GOOD


@pytest.mark.parametrize("change", [
    {"proto": "sctp"}, {"proto": "TCP"}, {"host_port": 0}, {"host_port": 65536},
    {"host_port": True}, {"host_port": "80"}, {"container_port": 0}, {"container_port": 1.5},
    {"container_address": "10.217.3.256"}, {"container_address": "fd00::2"},
    {"container": ""}, {"container": "a b"}, {"container": "a:b"}, {"container": 'a"b'},
    {"container": "x" * 201}, {"container": None},
])
def test_validate_mapping_rejects(change):
    with pytest.raises(InvalidNetworkArgument):
        validate_mapping(dict(GOOD, **change))


@pytest.mark.parametrize("address", ["10.217.4.2", "10.217.3.0", "10.217.3.255"])
def test_validate_mapping_keeps_targets_in_the_subnet(address):
    with pytest.raises(InvalidNetworkArgument):
        validate_mapping(dict(GOOD, container_address=address), net()._net)


def test_validate_mapping_needs_every_key():
    for key in GOOD:
        with pytest.raises(InvalidNetworkArgument):
            validate_mapping({k: v for k, v in GOOD.items() if k != key})
    with pytest.raises(InvalidNetworkArgument):
        validate_mapping(["not", "a", "dict"])


def test_veth_names_are_short_deterministic_and_distinct():
    a, b = net(), net(tag="agent2")
    names = {a.veth_name(f"c{i}") for i in range(500)}
    assert len(names) == 500
    for name in names:
        assert re.fullmatch(r"dcv[0-9a-f]{12}", name)
    assert a.veth_name("web") == net().veth_name("web")
    assert a.veth_name("web") != b.veth_name("web")


@pytest.mark.parametrize("name", ["eth0", "dcbr0", "dcv" + "0" * 13, "dcv 1", ""])
def test_remove_stale_veth_refuses_other_links(name):
    with pytest.raises(InvalidNetworkArgument):
        net().remove_stale_veth(name)
