"""ipc:// paths: whether a server listens on one (``ipc_listening``), and
claiming one for a new server (``claim_ipc_path``)."""
from __future__ import annotations

import os
import socket

from dcctl import errors

__all__ = ["claim_ipc_path", "ipc_listening"]


def ipc_listening(path: str) -> bool:
    """Whether anything accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def claim_ipc_path(path: str) -> None:
    """Make ``path`` free for a new ipc socket: a stale socket file (no one
    accepts on it) is removed; a live one is refused, so a second server can
    never silently take over another's local endpoint.

    Raises: Conflict."""
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        return
    if not ipc_listening(path):
        os.unlink(path)  # stale: its server is gone
        return
    raise errors.Conflict(f"ipc://{path} is in use by another running server",
                          hint="stop it, or give this one another --listen path")
