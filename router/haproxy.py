"""The only code that talks to HAProxy: its config, its process, its
runtime API.

HAProxy (Debian 12's 2.6) runs as a daemon of its own (``-D``), so it keeps
serving while ``dc-router`` is stopped or killed.  It drops to Debian's
``haproxy`` user once its sockets are bound and its files read.  Everything lives in the
router's state dir::

    STATE/haproxy.cfg        the config, rewritten after every change: every
                             route's backend with its current servers, so a
                             reload or a restart brings every route back
    STATE/server-state       ``show servers state``, dumped after every change
                             and before a reload (load-server-state-from-file)
    STATE/admin.sock         the runtime API (mode 0600, level admin, hands
                             the listeners to a reloading process)
    STATE/haproxy.pid        the running process
    STATE/hosts.map          Host -> backend, exact names
    STATE/wildcards.map      ".domain" -> backend, longest first (map_end)
    STATE/errors/503.http    the page for a name with no healthy backend

Dynamic servers (PITFALLS.md): ``add server`` needs a backend with a dynamic
balance algorithm (roundrobin here), takes the address positionally, does
not inherit ``default-server`` (every keyword is given) and starts in
maintenance; ``del server`` needs maintenance and no connections.

Errors: HaproxyError (the process or the runtime API failed), with
RuntimeRefused for a command HAProxy answered with an error.
"""
from __future__ import annotations

import csv
import dataclasses
import grp
import io
import logging
import os
import pwd
import re
import signal
import time

import gevent
import gevent.socket
import gevent.subprocess
import jinja2

from dcctl import files, procs

log = logging.getLogger(__name__)

HAPROXY = "/usr/sbin/haproxy"
RUNTIME_TIMEOUT_SECONDS = 5.0
START_TIMEOUT_SECONDS = 15.0
#: Keywords of every server (static and dynamic: dynamic servers do not
#: inherit default-server).
SERVER_KEYWORDS = "check inter 1s fastinter 500ms downinter 1s fall 2 rise 2"
#: The longest a server that stopped answering stays UP (and gets traffic)
#: with SERVER_KEYWORDS and the config's timeouts: up to ``inter`` (1 s) to
#: the next check, then ``fall`` (2) failed checks ``fastinter`` (0.5 s)
#: apart, each failing by its connect timeout (min(timeout connect, inter)
#: = 1 s) or, for a server that accepts and never answers, after ``timeout
#: check`` (2 s) more: 1 + 3 + 0.5 + 3.  A host that is gone (no answer to
#: a connect) is DOWN within 1 + 1 + 0.5 + 1 = 3.5 s, a refused connect
#: within about 1.5 s.  Meanwhile a request whose connect fails is sent to
#: another server (retries 3, option redispatch).
CHECK_DOWN_BOUND_SECONDS = 7.5
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.:-]")


class HaproxyError(Exception):
    """HAProxy could not be started, reloaded or reached."""


class RuntimeRefused(HaproxyError):
    """The runtime API answered a command with an error."""


# ---------------------------------------------------------------- the model

@dataclasses.dataclass(frozen=True)
class Server:
    """One server of a backend: a route's backend (container, port) at the
    address it answers at.  Its name changes with its address, so a moved
    container is a new server and the old one is drained."""

    container: str
    container_port: int
    address: str
    port: int

    @property
    def name(self) -> str:
        return _NAME_CHARS.sub("_", f"{self.container}_{self.container_port}_{self.address}_{self.port}")


def backend_name(route: str) -> str:
    """HAProxy's backend for a route name: ``h_NAME`` (exact host),
    ``w_DOMAIN`` (``*.DOMAIN``), ``t_PORT`` (``tcp:PORT``)."""
    if route.startswith("tcp:"):
        return f"t_{route[4:]}"
    if route.startswith("*."):
        return f"w_{route[2:]}"
    return f"h_{route}"


@dataclasses.dataclass
class Layout:
    """What needs a reload to change: the routes' frontends and backends."""

    http: tuple[str, ...] = ()  # http route names
    tcp: tuple[int, ...] = ()  # tcp listen ports

    def backends(self) -> set[str]:
        return {backend_name(n) for n in self.http} | {backend_name(f"tcp:{p}") for p in self.tcp}


_TEMPLATE = jinja2.Environment(autoescape=False, keep_trailing_newline=True, trim_blocks=True,
                               lstrip_blocks=True).from_string("""\
# Written by dc-router; every change rewrites it (do not edit).
global
    pidfile {{ state }}/haproxy.pid
    stats socket {{ state }}/admin.sock mode 600 level admin expose-fd listeners
    stats timeout 30s
    server-state-file {{ state }}/server-state
    maxconn {{ maxconn }}
    hard-stop-after 60s
{% if user %}
    user {{ user }}
    group {{ group }}
{% endif %}

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 5s
    timeout check 2s
    load-server-state-from-file global
    # on a reload the old process answers a kept connection's next request
    # (with Connection: close) instead of closing it under a client
    option idle-close-on-response
    option redispatch 1
    retries 3
    retry-on conn-failure empty-response response-timeout
    errorfile 503 {{ state }}/errors/503.http

frontend http
    bind {{ http_bind }}
    mode http
    option forwardfor
    http-request disable-l7-retry unless METH_GET || METH_HEAD
    http-request set-var(txn.route) req.hdr(host),field(1,:),lower,map_str({{ state }}/hosts.map)
    http-request set-var(txn.route) req.hdr(host),field(1,:),lower,map_end({{ state }}/wildcards.map) if !{ var(txn.route) -m found }
    http-request return status 404 content-type "text/plain" string "404 Not Found: no route for this host name (dcfleet router)\\n" if !{ var(txn.route) -m found }
    use_backend %[var(txn.route)]
{% for b in http %}

backend {{ b.backend }}
    mode http
    balance roundrobin
    option httpchk
    http-check send meth GET uri / ver HTTP/1.1 hdr Host {{ b.check_host }}
    http-check expect rstatus ^[234]
{% for s in b.servers %}
    server {{ s.name }} {{ s.address }}:{{ s.port }} {{ keywords }}
{% endfor %}
{% endfor %}
{% for t in tcp %}

frontend tcp_{{ t.port }}
    mode tcp
    bind {{ tcp_bind }}:{{ t.port }}
    timeout client 1h
    default_backend {{ t.backend }}

backend {{ t.backend }}
    mode tcp
    balance roundrobin
    timeout server 1h
{% for s in t.servers %}
    server {{ s.name }} {{ s.address }}:{{ s.port }} {{ keywords }}
{% endfor %}
{% endfor %}
""")

ERROR_503 = ("HTTP/1.0 503 Service Unavailable\r\nCache-Control: no-cache\r\nConnection: close\r\n"
             "Content-Type: text/html\r\n\r\n"
             "<html><body><h1>503 Service Unavailable</h1>\n"
             "<p>This name has no healthy backend right now (dcfleet router). Try again shortly.</p>\n"
             "</body></html>\n")


def _service_user() -> tuple[str, str] | None:
    """Debian's ``haproxy`` user and group, which HAProxy drops to once its
    sockets are bound and its files read (None where they do not exist)."""
    try:
        pw = pwd.getpwnam("haproxy")
        return pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name
    except KeyError:
        return None


def render(state_dir: str, http_bind: str, tcp_bind: str, layout: Layout,
           servers: dict[str, list[Server]], maxconn: int = 4096) -> str:
    """The config text for ``layout`` with ``servers`` {backend: [Server]}."""
    user, group = _service_user() or ("", "")
    http = [{"backend": backend_name(n), "check_host": n[2:] if n.startswith("*.") else n,
             "servers": sorted(servers.get(backend_name(n), []), key=lambda s: s.name)} for n in layout.http]
    tcp = [{"port": p, "backend": backend_name(f"tcp:{p}"),
            "servers": sorted(servers.get(backend_name(f"tcp:{p}"), []), key=lambda s: s.name)} for p in layout.tcp]
    return _TEMPLATE.render(state=state_dir, http_bind=http_bind, tcp_bind=tcp_bind, http=http, tcp=tcp,
                            keywords=SERVER_KEYWORDS, maxconn=maxconn, user=user, group=group)


def _write(path: str, text: str, mode: int = 0o600) -> None:
    files.atomic_write(path, text, mode=mode)


# ---------------------------------------------------------------- runtime API

@dataclasses.dataclass(frozen=True)
class ServerStat:
    """A server as ``show stat`` reports it."""

    backend: str
    name: str
    status: str  # UP, DOWN, MAINT, DRAIN, "UP 1/2", "no check", ...
    sessions: int  # current sessions (scur)
    queued: int  # qcur
    address: str  # "ip:port"

    @property
    def maint(self) -> bool:
        return self.status.startswith("MAINT")

    @property
    def draining(self) -> bool:
        return self.status.startswith("DRAIN")

    @property
    def up(self) -> bool:
        return self.status.startswith("UP") or self.status == "no check"


class Runtime:
    """HAProxy's runtime API on a unix socket: one command per connection
    (HAProxy answers and closes)."""

    def __init__(self, socket_path: str, timeout_s: float = RUNTIME_TIMEOUT_SECONDS):
        self.path = socket_path
        self.timeout_s = timeout_s

    def command(self, line: str) -> str:
        """Send one command; returns HAProxy's answer.

        Raises: HaproxyError (socket missing, refused, timed out)."""
        sock = gevent.socket.socket(gevent.socket.AF_UNIX, gevent.socket.SOCK_STREAM)
        sock.settimeout(self.timeout_s)
        try:
            sock.connect(self.path)
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except OSError as exc:
            raise HaproxyError(f"runtime API {self.path}: {line.split()[0]}: {exc}") from exc
        finally:
            sock.close()
        return b"".join(chunks).decode(errors="replace")

    def alive(self) -> bool:
        try:
            return "Name: HAProxy" in self.command("show info")
        except HaproxyError:
            return False

    def pid(self) -> int | None:
        for line in self.command("show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split(":", 1)[1])
        return None

    def checked(self, line: str, ok=("", "New server registered.", "Server deleted.")) -> str:
        """A command whose answer must be empty or one of ``ok``.

        Raises: RuntimeRefused with HAProxy's answer."""
        answer = self.command(line).strip()
        if answer in ok:
            return answer
        raise RuntimeRefused(f"{line}: {answer}")

    def stats(self) -> tuple[set[str], set[str], list[ServerStat]]:
        """(frontends, backends, servers) from ``show stat``."""
        text = self.command("show stat")
        if not text.startswith("# "):
            raise HaproxyError(f"show stat: {text.strip()[:200]}")
        rows = csv.DictReader(io.StringIO(text[2:]))
        frontends, backends, servers = set(), set(), []
        for r in rows:
            px, sv = r.get("pxname", ""), r.get("svname", "")
            if sv == "FRONTEND":
                frontends.add(px)
            elif sv == "BACKEND":
                backends.add(px)
            elif px and sv:
                servers.append(ServerStat(px, sv, r.get("status", ""), int(r.get("scur") or 0),
                                          int(r.get("qcur") or 0), r.get("addr", "")))
        return frontends, backends, servers

    def add_server(self, backend: str, server: Server) -> None:
        """``add server`` (in maintenance), then ``enable health`` and
        ``enable server``.  Raises: RuntimeRefused."""
        ref = f"{backend}/{server.name}"
        self.checked(f"add server {ref} {server.address}:{server.port} {SERVER_KEYWORDS}")
        self.checked(f"enable health {ref}")
        self.checked(f"enable server {ref}")

    def drain(self, backend: str, name: str) -> None:
        """New requests go elsewhere; those in flight finish."""
        self.checked(f"set server {backend}/{name} state drain")

    def ready(self, backend: str, name: str) -> None:
        self.checked(f"set server {backend}/{name} state ready")

    def delete(self, backend: str, name: str) -> bool:
        """Maintenance, then ``del server``; False while it still has
        connections (call again later).  Raises: RuntimeRefused."""
        ref = f"{backend}/{name}"
        self.checked(f"set server {ref} state maint")
        answer = self.command(f"del server {ref}").strip()
        if answer == "Server deleted.":
            return True
        if "connections" in answer or "queue" in answer.lower():
            return False
        raise RuntimeRefused(f"del server {ref}: {answer}")

    def servers_state(self) -> str:
        return self.command("show servers state")


# ---------------------------------------------------------------- the process

class Haproxy:
    """One HAProxy process under ``state_dir``, with its config, server-state
    file and admin socket (see the module docstring).

    Args:
        state_dir: the router's state dir (absolute).
        http_bind: HAProxy bind spec of the HTTP frontend ("ADDR:PORT").
        tcp_bind: the address TCP routes listen on.
        binary: the haproxy executable.
    """

    def __init__(self, state_dir: str, http_bind: str, tcp_bind: str, binary: str = HAPROXY):
        self.state_dir = state_dir
        self.http_bind = http_bind
        self.tcp_bind = tcp_bind
        self.binary = binary
        self.config = os.path.join(state_dir, "haproxy.cfg")
        self.state_file = os.path.join(state_dir, "server-state")
        self.pid_file = os.path.join(state_dir, "haproxy.pid")
        self.socket = os.path.join(state_dir, "admin.sock")
        self.runtime = Runtime(self.socket)
        os.makedirs(os.path.join(state_dir, "errors"), mode=0o700, exist_ok=True)
        _write(os.path.join(state_dir, "errors", "503.http"), ERROR_503, 0o644)
        for m in ("hosts.map", "wildcards.map"):
            if not os.path.exists(os.path.join(state_dir, m)):
                _write(os.path.join(state_dir, m), "")

    # -- files
    def write(self, layout: Layout, servers: dict[str, list[Server]]) -> bool:
        """Write the config and maps for ``layout`` and ``servers``; True
        when the config text changed."""
        exact = [n for n in layout.http if not n.startswith("*.")]
        wild = sorted((n for n in layout.http if n.startswith("*.")), key=lambda n: (-len(n), n))
        _write(os.path.join(self.state_dir, "hosts.map"), "".join(f"{n} {backend_name(n)}\n" for n in exact))
        _write(os.path.join(self.state_dir, "wildcards.map"),
               "".join(f"{n[1:]} {backend_name(n)}\n" for n in wild))
        text = render(self.state_dir, self.http_bind, self.tcp_bind, layout, servers)
        try:
            with open(self.config) as f:
                if f.read() == text:
                    return False
        except FileNotFoundError:
            pass
        _write(self.config, text)
        return True

    def snapshot(self) -> dict[str, str | None]:
        """The config and maps as they are on disk (for restore)."""
        out: dict[str, str | None] = {}
        for path in (self.config, os.path.join(self.state_dir, "hosts.map"),
                     os.path.join(self.state_dir, "wildcards.map")):
            try:
                with open(path) as f:
                    out[path] = f.read()
            except FileNotFoundError:
                out[path] = None
        return out

    def restore(self, snap: dict[str, str | None]) -> None:
        for path, text in snap.items():
            if text is not None:
                _write(path, text)

    def save_state(self) -> None:
        """Dump ``show servers state`` into the server-state file (best
        effort: HAProxy may be restarting)."""
        try:
            text = self.runtime.servers_state()
        except HaproxyError as exc:
            log.warning("server state not saved: %s", exc)
            return
        if text.startswith("1\n"):
            _write(self.state_file, text)

    def layout_of_config(self) -> Layout | None:
        """The layout of the config on disk (None when there is none)."""
        try:
            with open(self.config) as f:
                text = f.read()
        except FileNotFoundError:
            return None
        names = [f"*.{n[len('w_'):]}" if n.startswith("w_") else n[len("h_"):]
                 for n in re.findall(r"^backend ([hw]_\S+)$", text, re.M)]
        tcp = [int(p) for p in re.findall(r"^frontend tcp_(\d+)$", text, re.M)]
        return Layout(tuple(sorted(names)), tuple(sorted(tcp)))

    # -- the process
    def pid(self) -> int | None:
        """The running HAProxy's pid (from its pid file, checked in /proc)."""
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if procs.alive(pid) and self._is_ours(procs.cmdline(pid)) else None

    def _is_ours(self, argv: list[bytes]) -> bool:
        """Whether ``argv`` is an HAProxy running this router's config."""
        return bool(argv) and os.path.basename(argv[0].decode(errors="replace")).startswith("haproxy") \
            and self.config.encode() in argv

    def all_pids(self) -> list[int]:
        """Every HAProxy process of this config (old ones finishing their
        connections after a reload too)."""
        return [pid for pid, argv in procs.processes() if self._is_ours(argv)]

    def running(self) -> bool:
        return self.pid() is not None and self.runtime.alive()

    def check_config(self) -> None:
        """``haproxy -c``. Raises: HaproxyError with its complaint."""
        done = gevent.subprocess.run([self.binary, "-c", "-q", "-f", self.config], capture_output=True,
                                     text=True, timeout=30)
        if done.returncode != 0:
            raise HaproxyError(f"config refused: {(done.stderr or done.stdout).strip()[-600:]}")

    def start(self) -> int:
        """Start HAProxy (a daemon) from the config on disk; returns its pid.

        Raises: HaproxyError (with HAProxy's complaint about the config)."""
        if os.path.exists(self.socket):
            os.unlink(self.socket)  # a dead process's
        return self._launch([])

    def reload(self) -> int:
        """A seamless reload: the new process takes the listening sockets
        over the admin socket (``-x``, ``expose-fd listeners``) and the old
        one finishes its connections (``-sf``), once the new one runs.
        Raises: HaproxyError (the old process keeps serving)."""
        old = self.pid()
        if old is None:
            return self.start()
        self.save_state()
        return self._launch(["-x", self.socket, "-sf", str(old)], old)

    def _launch(self, extra: list[str], old: int | None = None) -> int:
        argv = [self.binary, "-D", "-f", self.config, "-p", self.pid_file, *extra]
        done = gevent.subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                     stdin=gevent.subprocess.DEVNULL)
        if done.returncode != 0:
            raise HaproxyError(f"haproxy exited {done.returncode}: {(done.stderr or done.stdout).strip()[-600:]}")
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while True:
            pid = self.pid()
            if pid is not None and pid != old and self.runtime.alive() and self.runtime.pid() == pid:
                log.info("haproxy %s (pid %d)", "reloaded" if old else "started", pid)
                return pid
            if time.monotonic() > deadline:
                raise HaproxyError(f"haproxy did not answer on {self.socket} within {START_TIMEOUT_SECONDS:g} s")
            gevent.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Every process of this config: SIGUSR1 (soft stop: finish
        connections), then SIGKILL."""
        for sig, wait in ((signal.SIGUSR1, timeout_s), (signal.SIGKILL, 5.0)):
            pids = self.all_pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.all_pids():
                gevent.sleep(0.05)
