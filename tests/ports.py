"""A free TCP port on loopback for a test's server.

A port drawn at random can be one the kernel just handed out as an
ephemeral source port (32768-60999 here), or one still in TIME_WAIT: the
bind then fails for a reason the test is not about.  Asking the kernel
for port 0 gives one nobody holds now.
"""
import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
