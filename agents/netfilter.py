"""The iptables rule layout of one agent (``Layout``, as data), ``Tables``
which applies it through a ``call(argv, ok)`` function that
``agents.network.Network`` hands it (the ``run`` seam, errors translated), and
parsers for ``iptables -S`` / ``ss`` output.

Layout for an agent with tag T, bridge B and subnet S (chain names fit the
28-character iptables limit because T has at most 15 characters)::

    raw    PREROUTING  -j DCF-T-RAW                          (inserted first)
           DCF-T-RAW   -d 127.0.0.0/8 ! -i lo -j DROP
    nat    PREROUTING  ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DCF-T-DNAT
           OUTPUT      -m addrtype --dst-type LOCAL -j DCF-T-DNAT
           DCF-T-DNAT  one DNAT rule per port mapping, commented "dcf:T:<container>"
           POSTROUTING -j DCF-T-POST
           DCF-T-POST  -s S ! -o B -j MASQUERADE             containers going out
                       -s 127.0.0.0/8 -o B -j MASQUERADE     host's 127.0.0.1 -> container
                       -s S -o B -m conntrack --ctstate DNAT -j MASQUERADE
                                                             hairpin / container -> host port
    filter FORWARD     -j DCF-T-FWD                          (inserted first)
           DCF-T-FWD   -o B -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
                       -o B -m conntrack --ctstate DNAT -j ACCEPT   (published ports only)
                       -i B -j ACCEPT

Why 127.0.0.0/8 is handled three ways (moby#45629, moby#41872): connections
from the host itself to 127.0.0.1:PORT go through nat OUTPUT, are DNATed to the
container, leave through B with a loopback source, which the kernel allows only
with ``route_localnet=1`` on B, and which the narrow MASQUERADE rewrites to the
gateway.  A packet for 127.0.0.1 that arrives from another machine or from a
container must never be DNATed (PREROUTING excludes 127.0.0.0/8) nor reach the
host's loopback-only services through ``route_localnet`` (raw DROP).

With br_netfilter (``bridge-nf-call-iptables=1``) a container reaching its
own host port is DNATed while bridging and must leave by the port it came in
on: the agent turns on hairpin mode per port (``Network.enable_hairpin``).
"""
from __future__ import annotations

import dataclasses
import shlex
from typing import Callable

from lxcwrap.run import Completed

#: ``call(argv, ok)``: run a tool, raise unless its exit status is in ``ok``.
Call = Callable[..., Completed]

LOOPBACK_NET = "127.0.0.0/8"
#: Prefix of every chain an agent creates (``iptables-save | grep DCF-``).
CHAIN_PREFIX = "DCF-"
#: Prefix of every rule comment: ``dcf:<tag>:<container>``.
COMMENT_PREFIX = "dcf"


@dataclasses.dataclass(frozen=True)
class Rule:
    """One rule: ``iptables -t table -A chain *spec``; ``insert`` puts it first."""

    table: str
    chain: str
    spec: tuple[str, ...]
    insert: bool = False


@dataclasses.dataclass(frozen=True)
class Layout:
    """Chain names and fixed rules of one agent (see the module docstring)."""

    tag: str
    bridge: str
    subnet: str

    @property
    def dnat_chain(self) -> str:
        return f"{CHAIN_PREFIX}{self.tag}-DNAT"

    @property
    def post_chain(self) -> str:
        return f"{CHAIN_PREFIX}{self.tag}-POST"

    @property
    def forward_chain(self) -> str:
        return f"{CHAIN_PREFIX}{self.tag}-FWD"

    @property
    def raw_chain(self) -> str:
        return f"{CHAIN_PREFIX}{self.tag}-RAW"

    def chains(self) -> list[tuple[str, str]]:
        """(table, chain) of every chain this agent owns."""
        return [("raw", self.raw_chain), ("nat", self.dnat_chain),
                ("nat", self.post_chain), ("filter", self.forward_chain)]

    def jumps(self) -> list[Rule]:
        """Rules in built-in chains that jump to this agent's chains."""
        local = ("-m", "addrtype", "--dst-type", "LOCAL")
        return [
            Rule("raw", "PREROUTING", ("-j", self.raw_chain), insert=True),
            Rule("nat", "PREROUTING", ("!", "-d", LOOPBACK_NET, *local, "-j", self.dnat_chain)),
            Rule("nat", "OUTPUT", (*local, "-j", self.dnat_chain)),
            Rule("nat", "POSTROUTING", ("-j", self.post_chain)),
            Rule("filter", "FORWARD", ("-j", self.forward_chain), insert=True),
        ]

    def fixed_rules(self) -> list[Rule]:
        """Rules inside this agent's own chains, other than port mappings."""
        b, s = self.bridge, self.subnet
        ct = ("-m", "conntrack", "--ctstate")
        return [
            Rule("raw", self.raw_chain, ("-d", LOOPBACK_NET, "!", "-i", "lo", "-j", "DROP")),
            Rule("nat", self.post_chain, ("-s", s, "!", "-o", b, "-j", "MASQUERADE")),
            Rule("nat", self.post_chain, ("-s", LOOPBACK_NET, "-o", b, "-j", "MASQUERADE")),
            Rule("nat", self.post_chain, ("-s", s, "-o", b, *ct, "DNAT", "-j", "MASQUERADE")),
            Rule("filter", self.forward_chain, ("-o", b, *ct, "RELATED,ESTABLISHED", "-j", "ACCEPT")),
            Rule("filter", self.forward_chain, ("-o", b, *ct, "DNAT", "-j", "ACCEPT")),
            Rule("filter", self.forward_chain, ("-i", b, "-j", "ACCEPT")),
        ]

    def comment(self, container: str) -> str:
        return f"{COMMENT_PREFIX}:{self.tag}:{container}"

    def mapping_spec(self, m: dict) -> tuple[str, ...]:
        """The DNAT rule spec of a validated mapping, token for token as
        ``iptables -S`` prints it back (so specs compare by equality)."""
        proto = m["proto"]
        return ("-p", proto, "-m", proto, "--dport", str(m["host_port"]),
                "-m", "comment", "--comment", self.comment(m["container"]),
                "-j", "DNAT", "--to-destination", f"{m['container_address']}:{m['container_port']}")

    def parse_mapping(self, spec: tuple[str, ...]) -> dict | None:
        """The mapping dict a DNAT rule spec stands for, or None when the rule
        is not one of this agent's mappings."""
        opts = _options(spec)
        comment = opts.get("--comment", "")
        prefix = self.comment("")
        if opts.get("-j") != "DNAT" or not comment.startswith(prefix):
            return None
        try:
            address, _, port = opts["--to-destination"].rpartition(":")
            m = {"container": comment[len(prefix):], "proto": opts["-p"],
                 "host_port": int(opts["--dport"]), "container_address": address,
                 "container_port": int(port)}
        except (KeyError, ValueError):
            return None
        return m if self.mapping_spec(m) == tuple(spec) else None


class Tables:
    """Applies a Layout with ``iptables -w``; never flushes a chain in use.

    Args:
        layout: the agent's Layout.
        call: ``call(argv, ok=(0,)) -> Completed``, raising on other exit codes.
    """

    def __init__(self, layout: Layout, call: Call):
        self.layout = layout
        self._call = call

    def _ipt(self, table: str, *args: str, ok: tuple[int, ...] = (0,)) -> Completed:
        return self._call(["iptables", "-w", "-t", table, *args], ok=ok)

    def _has_chain(self, table: str, chain: str) -> bool:
        return self._ipt(table, "-S", chain, ok=(0, 1)).returncode == 0

    def ensure_rule(self, rule: Rule) -> bool:
        """Add ``rule`` unless ``-C`` finds it; True when added."""
        if self._ipt(rule.table, "-C", rule.chain, *rule.spec, ok=(0, 1)).returncode == 0:
            return False
        verb = ("-I", rule.chain, "1") if rule.insert else ("-A", rule.chain)
        self._ipt(rule.table, *verb, *rule.spec)
        return True

    def delete_rule(self, table: str, chain: str, spec: tuple[str, ...]) -> bool:
        """Delete one copy of a rule; False when there was none."""
        if self._ipt(table, "-C", chain, *spec, ok=(0, 1, 2)).returncode != 0:
            return False
        self._ipt(table, "-D", chain, *spec)
        return True

    def setup(self) -> None:
        """Create the chains, their fixed rules and the jumps; each rule once."""
        for table, chain in self.layout.chains():
            if not self._has_chain(table, chain):
                self._ipt(table, "-N", chain)
        for rule in self.layout.fixed_rules() + self.layout.jumps():
            self.ensure_rule(rule)

    def remove(self) -> None:
        """Delete every jump (duplicates too), then flush and delete the chains."""
        for rule in self.layout.jumps():
            while self.delete_rule(rule.table, rule.chain, rule.spec):
                pass
        for table, chain in self.layout.chains():
            if self._has_chain(table, chain):
                self._ipt(table, "-F", chain)
                self._ipt(table, "-X", chain)

    def dnat_specs(self) -> list[tuple[str, ...]] | None:
        """Rule specs in the DNAT chain, in order, or None when it is missing."""
        chain = self.layout.dnat_chain
        done = self._ipt("nat", "-S", chain, ok=(0, 1))
        return chain_rules(done.stdout_text, chain) if done.returncode == 0 else None

    def append_dnat(self, spec: tuple[str, ...]) -> None:
        self._ipt("nat", "-A", self.layout.dnat_chain, *spec)

    def sync_dnat(self, have: list[tuple[str, ...]], want: set[tuple[str, ...]]) -> dict:
        """Turn the DNAT chain from ``have`` (its specs) into ``want``: delete
        extras and duplicates one by one, then append what is missing."""
        kept, removed = set(), 0
        for spec in have:
            if spec in want and spec not in kept:
                kept.add(spec)
                continue
            self._ipt("nat", "-D", self.layout.dnat_chain, *spec)
            removed += 1
        for spec in sorted(want - kept):
            self.append_dnat(spec)
        return {"added": len(want - kept), "removed": removed}

    def dnat_ports(self, proto: str) -> set[int]:
        """Host ports of ``proto`` in every DNAT rule of the nat table."""
        return dnat_host_ports(self._ipt("nat", "-S").stdout_text, proto)


def _options(spec: tuple[str, ...]) -> dict[str, str]:
    """Option -> value for the options of a rule spec (last one wins)."""
    out: dict[str, str] = {}
    for i, token in enumerate(spec[:-1]):
        if token.startswith("-") and not spec[i + 1].startswith("-"):
            out[token] = spec[i + 1]
    return out


def chain_rules(save_text: str, chain: str) -> list[tuple[str, ...]]:
    """Specs of the ``-A chain`` lines in ``iptables -S`` output, in order."""
    out = []
    for line in save_text.splitlines():
        tokens = shlex.split(line)
        if len(tokens) >= 2 and tokens[0] == "-A" and tokens[1] == chain:
            out.append(tuple(tokens[2:]))
    return out


def dnat_host_ports(save_text: str, proto: str) -> set[int]:
    """Destination ports of every DNAT rule for ``proto`` in ``iptables -t nat
    -S`` output, whoever made it (other agents, Docker, an operator)."""
    ports = set()
    for line in save_text.splitlines():
        if not line.startswith("-A "):
            continue
        opts = _options(tuple(shlex.split(line)))
        if opts.get("-j") == "DNAT" and opts.get("-p") == proto and opts.get("--dport", "").isdigit():
            ports.add(int(opts["--dport"]))
    return ports


def bound_ports(ss_text: str) -> set[int]:
    """Local ports in ``ss -H -n`` output (columns: state, recv-q, send-q,
    local address:port, peer address:port, ...)."""
    ports = set()
    for line in ss_text.splitlines():
        fields = line.split()
        if len(fields) >= 4:
            port = fields[3].rpartition(":")[2]
            if port.isdigit():
                ports.add(int(port))
    return ports
