"""Throwaway network namespaces for networking tests.

A ``Lab`` names everything it makes with one random prefix (``dctn-<hex>``),
and its ``close()`` kills every process it started or that runs inside its
namespaces, then deletes the namespaces, which takes their links, bridges and
iptables rules with them.  Traffic goes only to addresses inside them.

Topology built by ``Lab.topology()``::

    client ns  eth0 198.18.N.2/24 --- up0 198.18.N.1/24  host ns  (Network, bridge)
                                                          bridge gateway 10.217.3.1
    container ns  eth0 <allocated>/24, default via gateway --- dcv... on the bridge
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from agents.network import Network
from lxcwrap.run import netns_runner

PREFIX = "dctn-"
ENV = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "LANG": "C"}

UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(b"echo:" + data, peer)
"""

UDP_ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.5)
for _ in range(6):
    s.sendto(sys.argv[3].encode(), (sys.argv[1], int(sys.argv[2])))
    try:
        print(s.recv(2048).decode()); break
    except socket.timeout:
        pass
else:
    sys.exit(1)
"""


def sh(*argv: str, check: bool = True, timeout_s: float = 20.0) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, env=ENV, timeout=timeout_s)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
    return done


@dataclasses.dataclass
class Topology:
    host: str
    container: str
    client: str
    net: Network
    container_address: str
    uplink_address: str  # the host's own address on the uplink
    client_address: str


class Lab:
    def __init__(self):
        self.prefix = PREFIX + secrets.token_hex(3)
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.octet = secrets.randbelow(200) + 20

    def netns(self, role: str) -> str:
        name = f"{self.prefix}-{role}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def ip(self, ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", ns, *argv, check=check)

    def exec(self, ns: str, *argv: str, check: bool = True, timeout_s: float = 20.0):
        return sh("ip", "netns", "exec", ns, *argv, check=check, timeout_s=timeout_s)

    def spawn(self, ns: str, *argv: str) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def wait_bound(self, ns: str, proto: str, port: int, timeout_s: float = 10.0) -> None:
        flags = "-ltn" if proto == "tcp" else "-lun"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            out = self.exec(ns, "ss", "-H", flags, f"sport = :{port}").stdout
            if out.strip():
                return
            time.sleep(0.05)
        raise AssertionError(f"nothing bound {proto} port {port} in {ns}")

    def http_server(self, ns: str, address: str, port: int, directory: str) -> None:
        self.spawn(ns, sys.executable, "-m", "http.server", str(port), "--bind", address,
                   "--directory", directory)
        self.wait_bound(ns, "tcp", port)

    def udp_echo(self, ns: str, address: str, port: int) -> None:
        self.spawn(ns, sys.executable, "-c", UDP_ECHO, address, str(port))
        self.wait_bound(ns, "udp", port)

    def http_get(self, ns: str, url: str) -> subprocess.CompletedProcess:
        return self.exec(ns, "curl", "-sS", "--noproxy", "*", "--connect-timeout", "2", "-m", "4",
                         url, check=False)

    def udp_ask(self, ns: str, address: str, port: int, text: str) -> subprocess.CompletedProcess:
        return self.exec(ns, sys.executable, "-c", UDP_ASK, address, str(port), text, check=False)

    def attach_container(self, host: str, net: Network, key: str, address: str) -> str:
        """A new "container" netns whose eth0 is a veth on net's bridge."""
        ns = self.netns("c" + secrets.token_hex(2))
        veth = net.veth_name(key)
        self.ip(host, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        self.ip(host, "link", "set", veth, "master", net.bridge, "up")
        net.enable_hairpin(veth)  # as the agent does after lxc-start
        self.ip(ns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
        self.ip(ns, "link", "set", "eth0", "up")
        self.ip(ns, "route", "add", "default", "via", net.gateway)
        return ns

    def route_loopback_via(self, ns: str, gateway: str) -> None:
        """Make ``ns`` send packets for 127.0.0.1 to ``gateway`` on eth0: the
        crafted-packet attack of moby#41872, done with policy routing."""
        self.exec(ns, "sysctl", "-q", "-w", "net.ipv4.conf.eth0.route_localnet=1")
        self.ip(ns, "route", "add", "127.0.0.1/32", "via", gateway, "dev", "eth0", "table", "100")
        self.ip(ns, "rule", "add", "pref", "10", "to", "127.0.0.1/32", "lookup", "100")
        self.ip(ns, "rule", "add", "pref", "20", "lookup", "local")
        self.ip(ns, "rule", "del", "pref", "0", "lookup", "local")

    def topology(self, bridge: str = "dctbr0", subnet: str = "10.217.3.0/24",
                 port_range: tuple[int, int] = (20000, 20999), br_netfilter: bool = True) -> Topology:
        host = self.netns("host")
        # Whether iptables also sees bridged frames (per namespace since Linux 5.3).
        self.exec(host, "sysctl", "-q", "-w", f"net.bridge.bridge-nf-call-iptables={int(br_netfilter)}")
        # A closed FORWARD policy shows that the agent's own accept rules suffice.
        self.exec(host, "iptables", "-w", "-P", "FORWARD", "DROP")
        net = Network(bridge, subnet, port_range, run=netns_runner(host))
        net.ensure_bridge()
        address = net.allocate_address(set())
        container = self.attach_container(host, net, "web", address)
        client = self.netns("client")
        uplink, client_address = f"198.18.{self.octet}.1", f"198.18.{self.octet}.2"
        self.ip(host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", client)
        self.ip(host, "addr", "add", f"{uplink}/24", "dev", "up0")
        self.ip(host, "link", "set", "up0", "up")
        self.ip(client, "addr", "add", f"{client_address}/24", "dev", "eth0")
        self.ip(client, "link", "set", "eth0", "up")
        return Topology(host, container, client, net, address, uplink, client_address)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        for ns in self.namespaces:
            pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)

    def leftovers(self) -> list[str]:
        listed = sh("ip", "netns", "list").stdout.split()
        return [name for name in listed if name.startswith(self.prefix)]


@pytest.fixture
def lab(request):
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    for tool in ("iptables", "curl", "ss"):
        if shutil.which(tool, path=ENV["PATH"]) is None:
            pytest.skip(f"{tool} is not installed")
    the_lab = Lab()
    try:
        yield the_lab
    finally:
        the_lab.close()
    assert the_lab.leftovers() == [], "network namespaces leaked"
