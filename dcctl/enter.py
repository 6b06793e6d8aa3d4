"""``dcctl container_enter NAME [COMMAND...]``: an interactive session.

Asks the agent (or the hub, which forwards) for a one-time session, connects
a relay channel (dcctl.wire.relay) to the relay it names, and shuttles the terminal: raw
mode when stdin is a TTY (like ``docker exec -it``), plain pipes otherwise
(like ``docker exec -i``).  The protocol is described in agents.enter.
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import termios
import tty

from dcctl import errors
from dcctl.wire.endpoint import ipc_endpoint, parse_endpoint, tcp_endpoint
from dcctl.wire.relay import Channel

PING_INTERVAL_SECONDS = 5.0
CONNECT_GRACE_SECONDS = 10.0


def relay_endpoint(session: dict, via: str) -> str:
    """Where to connect for ``session`` (container_enter's result) when the
    agent was reached at ``via`` (an endpoint)."""
    if session.get("transport") == "ipc":
        return ipc_endpoint(session["path"])
    host = session.get("address") or ""
    if not host:
        where = parse_endpoint(via)
        host = where.host if where.is_tcp and where.host not in ("*", "0.0.0.0") else "127.0.0.1"
    return tcp_endpoint(host, int(session["port"]))


def run(client, name: str, command: list[str] | None, stdin=None, stdout=None) -> int:
    """Open a session on ``name`` through ``client`` (an RpcClient) and relay
    the terminal until the command exits; returns its exit code.

    Raises: the errors of container_enter (NoSuchContainer,
    ContainerNotRunning, ...); Unreachable when the relay never answers.
    """
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    via = parse_endpoint(client.endpoint).kind
    session = client.call("container_enter", name, command or None, {"via": via})
    endpoint = relay_endpoint(session, client.endpoint)
    in_fd, out_fd = stdin.fileno(), stdout.fileno()
    is_tty = os.isatty(in_fd)
    cols, rows = shutil.get_terminal_size((80, 24))
    sock = Channel.connect(endpoint, server_key=session.get("server_key"))
    sock.send("hello", session["token"], rows, cols)
    saved = termios.tcgetattr(in_fd) if is_tty else None
    resized = []
    old_winch = signal.signal(signal.SIGWINCH, lambda *a: resized.append(1)) if is_tty else None
    stdin_open = True
    code = None
    silent_s = 0.0
    try:
        if is_tty:
            tty.setraw(in_fd)
        while code is None:
            if resized:
                resized.clear()
                c, r = shutil.get_terminal_size((80, 24))
                sock.send("resize", r, c)
            message_waiting, ready = sock.wait([in_fd] if stdin_open else [], PING_INTERVAL_SECONDS)
            if not message_waiting and not ready:
                sock.send("ping")
                silent_s += PING_INTERVAL_SECONDS
                if silent_s > 60:
                    raise errors.Unreachable(f"the enter relay at {endpoint} went silent")
                continue
            if message_waiting:
                silent_s = 0.0
                msg = sock.recv(0)
                if msg is None:
                    continue
                if msg[0] == "out":
                    os.write(out_fd, msg[1])
                elif msg[0] == "exit":
                    code = int(msg[1])
                elif msg[0] == "error":
                    raise errors.Unreachable(f"enter relay refused the session: {msg[1]}")
            if stdin_open and in_fd in ready:
                data = os.read(in_fd, 65536)
                if data:
                    sock.send("in", data)
                else:  # EOF on a pipe: send ^D so the shell ends, stop reading
                    stdin_open = False
                    sock.send("in", b"\x04")
    finally:
        if saved is not None:
            termios.tcsetattr(in_fd, termios.TCSADRAIN, saved)
        if old_winch is not None:
            signal.signal(signal.SIGWINCH, old_winch)
        sock.close()
    return code
