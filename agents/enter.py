"""Interactive sessions for ``container_enter``: a one-time-token PTY relay.

``container_enter`` starts ``lxc-attach`` on a pseudo-terminal (lxc-attach
then allocates the container-side pty itself) and binds a ZeroMQ PAIR socket
for one client.  The client proves itself with the one-time token in its
first message; a session nobody claims in ``accept_timeout_s`` ends.

Messages are msgpack lists:
    client -> agent: ["hello", token, rows, cols] | ["in", bytes]
                     | ["resize", rows, cols] | ["ping"] | ["close"]
    agent -> client: ["out", bytes] | ["exit", code] | ["error", message]
                     | ["pong"]

The relay lives outside zerorpc because zerorpc has no client-to-server
stream; ZeroMQ keeps it on the same transport (and, later, the same keys).
"""
from __future__ import annotations

import fcntl
import logging
import os
import pty
import secrets
import signal
import struct
import termios

import gevent
import gevent.socket

from dcctl import errors
from dcctl.wire.endpoint import parse_endpoint
from dcctl.wire.relay import Channel
from lxcwrap import spawn

log = logging.getLogger(__name__)

IDLE_TIMEOUT_SECONDS = 30.0  # the client pings every 5 s; silence means it is gone
#: Input is held until the session's process has written something (or this
#: long): lxc-attach flushes its terminal's pending input when it sets it up.
INPUT_HOLD_SECONDS = 3.0
MAX_FRAME_BYTES = 1 << 20  # no message from the client (it pings every 5 s)


def _set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class EnterSession:
    """One relay: a relay channel (dcctl.wire.relay) + lxc-attach on a PTY."""

    def __init__(self, start, bind_to: str, accept_timeout_s: float, curve: tuple[bytes, bytes] | None = None):
        self.token = secrets.token_hex(16)
        self.output_seen = False
        self.start = start  # start(tty_path) -> lxcwrap.spawn.Child
        # over tcp encrypted with the agent's key; the one-time token admits the client
        self.channel = Channel.bind(bind_to, curve=curve if parse_endpoint(bind_to).is_tcp else None,
                                    max_frame_bytes=MAX_FRAME_BYTES)
        self.endpoint = dict(self.channel.address)
        self.bind_to = bind_to
        self.accept_timeout_s = accept_timeout_s
        self.task = gevent.spawn(self._run)

    def _send(self, *msg) -> None:
        self.channel.send(*msg)

    def _recv(self, timeout_s: float):
        return self.channel.recv(timeout_s)

    def _run(self) -> None:
        proc = master = None
        try:
            hello = self._recv(self.accept_timeout_s)
            if not hello or hello[0] != "hello" or len(hello) != 4 or not isinstance(hello[1], str) \
                    or not secrets.compare_digest(hello[1], self.token):
                if hello:
                    self._send("error", "bad or missing token")
                return
            master, slave = pty.openpty()
            rows, cols = (int(hello[2]) or 24, int(hello[3]) or 80)
            _set_winsize(slave, rows, cols)
            # a new session that opens the pty slave: it becomes the child's
            # controlling terminal (job control, ^C, window size changes)
            proc = self.start(os.ttyname(slave))
            os.close(slave)
            reader = gevent.spawn(self._pump_out, master)
            self._pump_in(master, reader)
            code = proc.wait(10) if reader.ready() else None
            self._send("exit", code if code is not None else -1)
        except Exception:
            log.exception("enter session failed")
            try:
                self._send("error", "session failed on the agent; see its log")
            except errors.Unreachable:
                pass
        finally:
            if proc is not None and proc.poll() is None:
                # hang up: lxc-attach passes SIGHUP to the shell in the
                # container, so nothing is left running there
                proc.kill(signal.SIGHUP)
                try:
                    proc.wait(3)
                except spawn.SpawnTimeout:
                    proc.kill()
                    proc.wait(10)
            if master is not None:
                os.close(master)
            self.channel.close()
            if self.endpoint["transport"] == "ipc":
                try:
                    os.unlink(self.endpoint["path"])
                except FileNotFoundError:
                    pass

    def _pump_out(self, master: int) -> None:
        while True:
            try:
                gevent.socket.wait_read(master)
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side of the pty closed
                return
            if not data:
                return
            self.output_seen = True
            self._send("out", data)

    @staticmethod
    def _write(master: int, data: bytes) -> None:
        while data:
            gevent.socket.wait_write(master)
            data = data[os.write(master, data):]

    def _pump_in(self, master: int, reader: gevent.Greenlet) -> None:
        idle_s = 0.0
        held: list[bytes] = []
        started = gevent.get_hub().loop.now()
        while not reader.ready():
            if held and (self.output_seen or gevent.get_hub().loop.now() - started > INPUT_HOLD_SECONDS):
                self._write(master, b"".join(held))
                held.clear()
            msg = self._recv(0.2)
            if msg is None:
                idle_s += 0.2
                if idle_s > IDLE_TIMEOUT_SECONDS:
                    return
                continue
            idle_s = 0.0
            kind = msg[0]
            if kind == "in" and len(msg) == 2 and isinstance(msg[1], (bytes, str)):
                data = msg[1].encode() if isinstance(msg[1], str) else msg[1]
                if self.output_seen and not held:
                    self._write(master, data)
                else:
                    held.append(data)
            elif kind == "resize" and len(msg) == 3:
                _set_winsize(master, int(msg[1]), int(msg[2]))
            elif kind == "ping":
                self._send("pong")
            elif kind == "close":
                return
        reader.join(timeout=2)


class EnterRelay:
    """Starts EnterSessions.

    Args:
        listen: the agent's endpoints; a session binds next to the first tcp
            one (same address, random port) or, with none, in ``run_dir``.
        run_dir: directory for ipc session sockets (0700).
        accept_timeout_s: seconds a session waits for its client.
        curve: the agent's CURVE key pair: tcp relays are encrypted with it.
    """

    def __init__(self, listen: list[str], run_dir: str, accept_timeout_s: float,
                 curve: tuple[bytes, bytes] | None = None):
        self.curve = curve
        tcp = next((parse_endpoint(ep) for ep in listen if parse_endpoint(ep).is_tcp), None)
        self.tcp_bind = tcp.with_port(0) if tcp else None  # the port is chosen per session
        self.run_dir = run_dir
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        self.accept_timeout_s = accept_timeout_s

    def open(self, start, via_tcp: bool) -> dict:
        """Start a session; ``start(tty_path)`` starts its process on the
        terminal (e.g. Lxc.attach_tty bound to a container and command).

        Returns: {"token": hex, "transport": "tcp"|"ipc", "port"|"path",
        "expires_s": seconds to connect, "server_key": Z85 (tcp: connect with
        CURVE, any client key)}."""
        if via_tcp and self.tcp_bind:
            bind_to = self.tcp_bind
        else:
            bind_to = f"ipc://{os.path.join(self.run_dir, 'enter-' + secrets.token_hex(6) + '.sock')}"
        session = EnterSession(start, bind_to, self.accept_timeout_s, self.curve)
        out = {"token": session.token, **session.endpoint, "expires_s": self.accept_timeout_s}
        if session.endpoint["transport"] == "tcp" and self.curve is not None:
            out["server_key"] = self.curve[0].decode()
        return out
