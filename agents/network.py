"""The host agent's networking: its container bridge and subnet, address
allocation, host-side veth names, and port mappings kept in the kernel
(iptables DNAT), so they keep forwarding while the agent is stopped.

Every tool runs through the ``run`` seam of ``lxcwrap.run`` (argv lists,
gevent-cooperative); pass ``lxcwrap.run.netns_runner(ns)`` to work inside a
network namespace.  The iptables layout is drawn in ``agents.netfilter``.

Errors (this module's own tree; none of them is a wire error: the agent's
service boundary maps each class onto one in ``dcctl.errors`` through the
table in ``agents.errmap``)::

    NetworkError                    a tool failed or the kernel refused
     +-- PortInUse                  host port already mapped or bound on the host
     +-- PortRangeExhausted         no free host port left in port_range
     +-- AddressPoolExhausted       no free address left in the subnet
     +-- InvalidNetworkArgument (ValueError)  bad bridge, subnet, port, proto, mapping
     +-- NoSuchPortMapping (LookupError)      no such rule (remove_mapping, missing_ok=False)
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import random
import re

from gevent.lock import RLock

from agents import netfilter
from lxcwrap.run import Completed, Runner, ToolError, run as default_run

__all__ = [
    "AddressPoolExhausted", "InvalidNetworkArgument", "Network", "NetworkError", "NoSuchPortMapping",
    "PortInUse", "PortRangeExhausted", "PROTOS", "VETH_PREFIX", "validate_mapping",
]

#: Seconds allowed for one ip / iptables / sysctl / ss call.
TOOL_TIMEOUT_SECONDS = 30.0
PROTOS = ("tcp", "udp")
#: Every host-side veth name starts with this (tests count links by it).
VETH_PREFIX = "dcv"
IFNAME_MAX_CHARS = 15
MAPPING_KEYS = ("container", "proto", "host_port", "container_address", "container_port")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_CONTAINER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


class NetworkError(Exception):
    """Bridge, address or netfilter work failed; ``.argv``/``.stderr`` name the
    tool call when one failed; ``.hint`` is an optional operator hint."""

    def __init__(self, message: str = "", *, hint: str | None = None,
                 argv: tuple[str, ...] = (), stderr: str = ""):
        super().__init__(message)
        self.hint = hint
        self.argv = tuple(argv)
        self.stderr = stderr


class PortInUse(NetworkError):
    """The host port is already mapped (recorded or in the kernel) or bound."""


class PortRangeExhausted(NetworkError):
    """Every host port in the agent's range is taken."""


class AddressPoolExhausted(NetworkError):
    """Every host address of the subnet is taken."""


class InvalidNetworkArgument(NetworkError, ValueError):
    """An argument failed validation; nothing was changed."""


class NoSuchPortMapping(NetworkError, LookupError):
    """No rule for that mapping exists in this agent's DNAT chain."""


def _ifname(name: str, what: str) -> str:
    if not isinstance(name, str) or not _IFNAME_RE.match(name):
        raise InvalidNetworkArgument(f"bad {what} {name!r}: 1-{IFNAME_MAX_CHARS} of [A-Za-z0-9_.-]")
    return name


def _proto(proto: str) -> str:
    if proto not in PROTOS:
        raise InvalidNetworkArgument(f"bad proto {proto!r}: expected one of {', '.join(PROTOS)}")
    return proto


def _port(port: int, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidNetworkArgument(f"bad {what} {port!r}: expected an integer in 1..65535")
    return port


def validate_mapping(m: dict, subnet: ipaddress.IPv4Network | None = None) -> dict:
    """Check a port mapping and return a copy holding exactly MAPPING_KEYS.

    Args:
        m: ``{"container": str, "proto": "tcp"|"udp", "host_port": int,
            "container_address": "a.b.c.d", "container_port": int}``; other
            keys are ignored.
        subnet: when given, container_address must be a host address in it
            (neither its network nor broadcast address).

    Raises:
        InvalidNetworkArgument: a key is missing or has a bad value.
    """
    if not isinstance(m, dict) or any(k not in m for k in MAPPING_KEYS):
        raise InvalidNetworkArgument(f"a port mapping needs the keys {', '.join(MAPPING_KEYS)}: {m!r}")
    container = m["container"]
    if not isinstance(container, str) or not _CONTAINER_RE.match(container):
        raise InvalidNetworkArgument(f"bad container name {container!r}")
    try:
        address = ipaddress.IPv4Address(m["container_address"])
    except (ipaddress.AddressValueError, ValueError) as exc:
        raise InvalidNetworkArgument(f"bad container_address {m['container_address']!r}") from exc
    if subnet is not None and (address not in subnet or address in (
            subnet.network_address, subnet.broadcast_address)):
        raise InvalidNetworkArgument(f"container_address {address} is not a host address of {subnet}")
    return {"container": container, "proto": _proto(m["proto"]),
            "host_port": _port(m["host_port"], "host_port"),
            "container_address": str(address),
            "container_port": _port(m["container_port"], "container_port")}


class Network:
    """One agent's bridge, subnet, addresses and port mappings.

    Args:
        bridge: bridge interface name, at most 15 characters of [A-Za-z0-9_.-].
        subnet: IPv4 CIDR such as ``"10.217.3.0/24"`` (prefix at most /30); the
            gateway, on the bridge, is its first host address.
        port_range: (first, last) host ports, inclusive, for allocate_port.
        run: the tool seam (``lxcwrap.run.run`` or a netns_runner / fake).
        tag: names this agent's chains (``DCF-<tag>-*``) and rule comments
            (``dcf:<tag>:<container>``); default: the bridge name.  Agents on
            one machine need distinct tags.

    Raises:
        InvalidNetworkArgument: any bad argument.
    """

    def __init__(self, bridge: str, subnet: str, port_range: tuple[int, int], *,
                 run: Runner = default_run, tag: str | None = None):
        self.bridge = _ifname(bridge, "bridge name")
        self.tag = _ifname(bridge if tag is None else tag, "tag")
        try:
            self._net = ipaddress.IPv4Network(subnet, strict=True)
        except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError, TypeError) as exc:
            raise InvalidNetworkArgument(f"bad subnet {subnet!r}: expected an IPv4 CIDR like 10.217.3.0/24") from exc
        if self._net.prefixlen > 30:
            raise InvalidNetworkArgument(f"subnet {subnet} is too small: at most /30")
        try:
            first, last = (_port(p, "port_range bound") for p in port_range)
        except (TypeError, ValueError) as exc:
            raise InvalidNetworkArgument(f"bad port_range {port_range!r}: expected (first, last)") from exc
        if first > last:
            raise InvalidNetworkArgument(f"bad port_range {port_range!r}: first > last")
        self.port_range = (first, last)
        self.layout = netfilter.Layout(self.tag, self.bridge, str(self._net))
        self._run = run
        self._tables = netfilter.Tables(self.layout, self._call)
        self._lock = RLock()  # serializes changes to this agent's DNAT chain
        self._random = random.SystemRandom()

    @property
    def gateway(self) -> str:
        """The bridge's address: the subnet's first host address (str)."""
        return str(self._net.network_address + 1)

    @property
    def prefixlen(self) -> int:
        return self._net.prefixlen

    @property
    def network(self) -> str:
        """The subnet in CIDR form, e.g. ``"10.217.3.0/24"``."""
        return str(self._net)

    def _call(self, argv: list[str], ok: tuple[int, ...] = (0,)) -> Completed:
        """Run one tool; NetworkError unless its exit status is in ``ok``."""
        try:
            done = self._run(argv, TOOL_TIMEOUT_SECONDS)
        except ToolError as exc:
            raise NetworkError(f"{argv[0]} failed: {exc}", argv=tuple(argv)) from exc
        if done.returncode not in ok:
            raise NetworkError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr_text[-300:]}",
                               argv=tuple(argv), stderr=done.stderr_text)
        return done

    # ------------------------------------------------------------ bridge

    def ensure_bridge(self) -> None:
        """Create or complete the bridge and this agent's chains; idempotent.

        Bridge (``ip link``/``ip addr``): created if missing, the gateway
        address added, set up.  Sysctls: ``net.ipv4.ip_forward=1`` and
        ``net.ipv4.conf.<bridge>.route_localnet=1`` (127.0.0.1:PORT on the
        host reaches containers).  Netfilter: the chains, fixed rules and
        jumps of ``agents.netfilter.Layout``, each rule added once (``-C``
        first); the DNAT chain's mappings are left as they are.

        Containers' veths join the bridge elsewhere (LXC); see enable_hairpin.

        Raises:
            NetworkError: a tool failed, or ``bridge`` names a non-bridge link.
        """
        link = self._link(self.bridge, details=True)
        if link is None:
            self._call(["ip", "link", "add", self.bridge, "type", "bridge"])
        elif link.get("linkinfo", {}).get("info_kind") != "bridge":
            raise NetworkError(f"{self.bridge} exists and is not a bridge",
                               hint="pick another bridge name in the agent's settings")
        addrs = json.loads(self._call(["ip", "-j", "addr", "show", "dev", self.bridge]).stdout or b"[]")
        have = {(a.get("local"), a.get("prefixlen")) for i in addrs for a in i.get("addr_info", [])
                if a.get("family") == "inet"}
        if have and (self.gateway, self.prefixlen) not in have:
            raise NetworkError(f"bridge {self.bridge} already carries "
                               f"{', '.join(f'{a}/{p}' for a, p in sorted(have))}, not {self.gateway}/{self.prefixlen}",
                               hint="another agent's bridge? give this agent its own --bridge and --subnet")
        if (self.gateway, self.prefixlen) not in have:
            self._call(["ip", "addr", "add", f"{self.gateway}/{self.prefixlen}", "brd", "+",
                        "dev", self.bridge])
        self._call(["ip", "link", "set", "dev", self.bridge, "up"])
        # The slash form keeps dots in interface names (br.0) unambiguous.
        for key in ("net/ipv4/ip_forward", f"net/ipv4/conf/{self.bridge}/route_localnet"):
            self._call(["sysctl", "-q", "-w", f"{key}=1"])
        self._tables.setup()

    def teardown(self) -> None:
        """Remove this agent's jumps and chains (with every mapping) and the
        bridge; idempotent.  Other agents' chains are not touched; sysctls
        are left as they are (others may rely on ip_forward).

        Raises:
            NetworkError: a tool failed.
        """
        with self._lock:
            self._tables.remove()
            if self._link(self.bridge) is not None:
                self._call(["ip", "link", "del", "dev", self.bridge])

    def _link(self, name: str, details: bool = False) -> dict | None:
        """``ip -j link show`` of one link, or None if there is none."""
        argv = ["ip", "-j", *(["-d"] if details else []), "link", "show", "dev", name]
        done = self._call(argv, ok=(0, 1))
        if done.returncode != 0:
            if "does not exist" in done.stderr_text:
                return None
            raise NetworkError(f"{' '.join(argv)}: {done.stderr_text}", argv=tuple(argv))
        links = json.loads(done.stdout or b"[]")
        return links[0] if links else None

    # ------------------------------------------------------------ addresses and veths

    def allocate_address(self, used: set[str]) -> str:
        """The lowest host address of the subnet that is not the gateway and
        not in ``used``.

        Args:
            used: addresses already given out, as ``"a.b.c.d"`` (a ``/len``
                suffix is accepted); addresses outside the subnet are ignored.

        Returns:
            the address as ``"a.b.c.d"`` (give it to the container with
            ``prefixlen``, its default route via ``gateway``).

        Raises:
            InvalidNetworkArgument: an entry of ``used`` is not an IPv4 address.
            AddressPoolExhausted: no host address is left.
        """
        taken = {self._net.network_address + 1}
        for item in used:
            try:
                taken.add(ipaddress.IPv4Interface(item).ip)
            except (ipaddress.AddressValueError, ipaddress.NetmaskValueError, ValueError) as exc:
                raise InvalidNetworkArgument(f"bad address in used: {item!r}") from exc
        for host in self._net.hosts():
            if host not in taken:
                return str(host)
        raise AddressPoolExhausted(f"no free address left in {self._net} ({len(taken)} taken)",
                                   hint="destroy unused containers or give the agent a larger subnet")

    def veth_name(self, container_key: str) -> str:
        """Host-side veth name for a container: ``dcv`` + 12 hex digits of a
        hash of (tag, container_key); deterministic, 15 characters."""
        digest = hashlib.sha256(f"{self.tag}\0{container_key}".encode()).hexdigest()
        return VETH_PREFIX + digest[:IFNAME_MAX_CHARS - len(VETH_PREFIX)]

    @staticmethod
    def link_present(name: str) -> bool:
        """Whether a link of this name exists, read from sysfs
        (/sys/class/net) without starting a tool: the caller must see the
        sysfs of its own network namespace (true for the agent; the local
        fleet mounts one per simulated host)."""
        return os.path.lexists(os.path.join("/sys/class/net", _ifname(name, "link name")))

    def remove_stale_veth(self, name: str) -> bool:
        """Delete a leftover link named ``name`` (an interrupted stop leaves a
        fixed veth name behind and the next start fails with "File exists").

        Returns:
            True when a link was deleted, False when there was none.

        Raises:
            InvalidNetworkArgument: ``name`` is not a ``dcv`` veth name.
            NetworkError: ``ip link del`` failed.
        """
        if not _ifname(name, "veth name").startswith(VETH_PREFIX):
            raise InvalidNetworkArgument(f"refusing to delete {name!r}: not a {VETH_PREFIX}* veth name")
        if self._link(name) is None:
            return False
        done = self._call(["ip", "link", "del", "dev", name], ok=(0, 1, 2))
        if done.returncode != 0 and self._link(name) is not None:
            raise NetworkError(f"cannot delete {name}: {done.stderr_text}", stderr=done.stderr_text)
        return True

    def enable_hairpin(self, veth: str) -> None:
        """Turn on hairpin mode on a container's bridge port (``ip link set
        type bridge_slave hairpin on``), so that the container reaches its own
        mapped host port when br_netfilter is loaded
        (``net.bridge.bridge-nf-call-iptables=1``: DNAT then happens while
        bridging and the frame must leave by the port it came in on).  Call it
        once the host-side veth is on the bridge (after lxc-start).

        Raises:
            InvalidNetworkArgument: bad interface name.
            NetworkError: no such link, it is not on this bridge, or ip failed.
        """
        _ifname(veth, "veth name")
        if self._run is default_run and self._hairpin_sysfs(veth):
            return
        done = self._call(["ip", "link", "set", "dev", veth, "type", "bridge_slave", "hairpin", "on"],
                          ok=(0, 1, 2))
        if done.returncode != 0:  # say why in our words (one call on the fast path)
            link = self._link(veth)
            if link is None or link.get("master") != self.bridge:
                raise NetworkError(f"{veth} is not a port of bridge {self.bridge}")
            raise NetworkError(f"cannot set hairpin on {veth}: {done.stderr_text}")

    def _hairpin_sysfs(self, veth: str) -> bool:
        """Hairpin on through sysfs (``brport/hairpin_mode``), without a
        process, when sysfs shows ``veth`` as a port of our bridge (the
        agent's own network namespace, as for ``link_present``).  Returns
        False when it could not: ``ip`` then does it and says why."""
        link = os.path.join("/sys/class/net", veth)
        try:
            if os.path.basename(os.readlink(os.path.join(link, "master"))) != self.bridge:
                return False
            with open(os.path.join(link, "brport", "hairpin_mode"), "w") as f:
                f.write("1")
        except OSError:
            return False
        return True

    # ------------------------------------------------------------ host ports

    def _ports_in_use(self, proto: str) -> set[int]:
        """Host ports of ``proto`` bound by a socket (``ss``, in the runner's
        network namespace) or DNATed by any rule of the nat table."""
        flags = "-ltn" if proto == "tcp" else "-aun"
        bound = netfilter.bound_ports(self._call(["ss", "-H", flags]).stdout_text)
        return bound | self._tables.dnat_ports(proto)

    def check_port_available(self, proto: str, host_port: int, taken: set[tuple[str, int]]) -> None:
        """Raise unless ``host_port`` can be mapped for ``proto``.

        Args:
            taken: (proto, host_port) pairs the agent has recorded.

        Raises:
            InvalidNetworkArgument: bad proto, or port outside 1..65535.
            PortInUse: recorded in ``taken``, in a DNAT rule of the nat table
                (any agent), or bound by a socket on the host.
        """
        _proto(proto)
        _port(host_port, "host_port")
        if (proto, host_port) in taken:
            raise PortInUse(f"{proto} port {host_port} is already mapped")
        if host_port in self._ports_in_use(proto):
            raise PortInUse(f"{proto} port {host_port} is bound or mapped on the host",
                            hint="pick another host port or let the agent allocate one")

    def allocate_port(self, proto: str, taken: set[tuple[str, int]]) -> int:
        """A random free host port in ``port_range`` (like Docker's).

        Args:
            proto: ``"tcp"`` or ``"udp"``.
            taken: (proto, host_port) pairs the agent has recorded, explicit
                and allocated alike.

        Returns:
            a port not in ``taken``, not DNATed in the nat table and not bound
            (``ss``) for ``proto``.

        Raises:
            InvalidNetworkArgument: bad proto.
            PortRangeExhausted: no such port is left.
        """
        _proto(proto)
        busy = {p for (q, p) in taken if q == proto} | self._ports_in_use(proto)
        first, last = self.port_range
        free = [p for p in range(first, last + 1) if p not in busy]
        if not free:
            raise PortRangeExhausted(f"no free {proto} port left in {first}-{last}",
                                     hint="remove unused port mappings or widen the port range")
        return self._random.choice(free)

    # ------------------------------------------------------------ port mappings

    def _existing_dnat_specs(self) -> list[tuple[str, ...]]:
        specs = self._tables.dnat_specs()
        if specs is None:
            raise NetworkError(f"chain {self.layout.dnat_chain} is missing: call ensure_bridge() first")
        return specs

    def list_rules(self) -> list[dict]:
        """The mappings in this agent's DNAT chain (``iptables -t nat -S``),
        in chain order, as mapping dicts; [] before ensure_bridge."""
        specs = self._tables.dnat_specs() or []
        return [m for m in map(self.layout.parse_mapping, specs) if m is not None]

    def add_mapping(self, m: dict) -> bool:
        """Add the DNAT rule of mapping ``m`` (see validate_mapping) to this
        agent's nat chain; idempotent.  The rule lives in the kernel and keeps
        forwarding while the agent is stopped.

        Returns:
            True when a rule was added, False when it was already there.

        Raises:
            InvalidNetworkArgument: bad mapping, or address outside the subnet.
            PortInUse: this chain maps the host port to somewhere else.
            NetworkError: the chain is missing (call ensure_bridge) or iptables failed.
        """
        m = validate_mapping(m, self._net)
        with self._lock:
            specs = self._existing_dnat_specs()
            spec = self.layout.mapping_spec(m)
            if spec in specs:
                return False
            for other in filter(None, map(self.layout.parse_mapping, specs)):
                if (other["proto"], other["host_port"]) == (m["proto"], m["host_port"]):
                    raise PortInUse(f"{m['proto']} port {m['host_port']} is already mapped "
                                    f"to {other['container']}")
            self._tables.append_dnat(spec)
            return True

    def remove_mapping(self, m: dict, *, missing_ok: bool = True) -> bool:
        """Delete the DNAT rule of mapping ``m``.

        Returns:
            True when a rule was deleted, False when there was none.

        Raises:
            InvalidNetworkArgument: bad mapping.
            NoSuchPortMapping: there was none and ``missing_ok`` is false.
            NetworkError: iptables failed.
        """
        m = validate_mapping(m)
        with self._lock:
            if self._tables.delete_rule("nat", self.layout.dnat_chain, self.layout.mapping_spec(m)):
                return True
        if not missing_ok:
            raise NoSuchPortMapping(f"no {m['proto']} mapping of host port {m['host_port']} "
                                    f"to {m['container']}")
        return False

    def reconcile(self, mappings: list[dict]) -> dict:
        """Make this agent's DNAT chain hold exactly ``mappings``, rule by rule
        (never a flush, so unchanged mappings forward throughout): extra,
        duplicate and foreign rules are deleted, then missing ones appended.

        Returns:
            ``{"added": int, "removed": int}``.

        Raises:
            InvalidNetworkArgument: a bad mapping, or two for one (proto, host_port).
            NetworkError: the chain is missing (call ensure_bridge) or iptables failed.
        """
        wanted = [validate_mapping(m, self._net) for m in mappings]
        by_port = {}
        for m in wanted:
            other = by_port.setdefault((m["proto"], m["host_port"]), m)
            if other != m:
                raise InvalidNetworkArgument(f"two mappings for {m['proto']} port {m['host_port']}")
        want = {self.layout.mapping_spec(m) for m in by_port.values()}
        with self._lock:
            specs = self._existing_dnat_specs()
            return self._tables.sync_dnat(specs, want)
