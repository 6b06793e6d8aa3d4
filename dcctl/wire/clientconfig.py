"""Where a client finds its endpoint and CURVE keys: the environment
variables and config paths that dcctl, ops/ and tests share.

    $DCCTL_HOST          the endpoint (default DEFAULT_ENDPOINT)
    $DCCTL_KEY           our key pair file (.key_secret), for tcp:// endpoints
    $DCCTL_SERVER_KEY    the server's public key (a file, or 40 Z85 characters)
    $DCCTL_CONFIG_DIR    CONFIG_DIR (default ~/.config/dcfleet), holding
                         dcctl.key / dcctl.key_secret (our pair) and
                         servers/HOST_PORT.key (known server keys, like ssh's
                         known_hosts; ops/fleet writes them)

Every function takes the environment as a mapping (default os.environ), so
tests hand it their own.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Mapping

from dcctl import errors
from dcctl.wire.endpoint import parse_endpoint

if TYPE_CHECKING:
    from dcctl import auth

__all__ = ["DEFAULT_ENDPOINT", "HOST_ENV", "KEY_ENV", "SERVER_KEY_ENV", "CONFIG_DIR_ENV", "config_dir",
           "key_pair_path", "known_server_key_path", "client_keys"]

DEFAULT_ENDPOINT = "ipc:///run/dcfleet/agent.sock"
HOST_ENV = "DCCTL_HOST"
KEY_ENV = "DCCTL_KEY"  # our key pair (.key_secret) for tcp:// endpoints
SERVER_KEY_ENV = "DCCTL_SERVER_KEY"  # the server's public key (file or Z85)
CONFIG_DIR_ENV = "DCCTL_CONFIG_DIR"  # default ~/.config/dcfleet
_Z85_KEY_CHARS = 40


def config_dir(environ: Mapping[str, str] | None = None) -> str:
    """CONFIG_DIR: where dcctl keeps its key pair and known server keys."""
    environ = os.environ if environ is None else environ
    return environ.get(CONFIG_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".config", "dcfleet")


def key_pair_path(environ: Mapping[str, str] | None = None) -> str:
    """CONFIG_DIR/dcctl.key_secret, the operator's default key pair."""
    return os.path.join(config_dir(environ), "dcctl.key_secret")


def known_server_key_path(endpoint: str, environ: Mapping[str, str] | None = None) -> str:
    """CONFIG_DIR/servers/HOST_PORT.key: the known public key of a tcp://
    server (an IPv6 host's colons become underscores).

    Raises: InvalidArgument (not a tcp:// endpoint)."""
    ep = parse_endpoint(endpoint)
    if not ep.is_tcp:
        raise errors.InvalidArgument(f"only tcp:// endpoints have server keys, not {endpoint}")
    hostport = f"{ep.host}_{'*' if ep.port is None else ep.port}".replace(":", "_")
    return os.path.join(config_dir(environ), "servers", f"{hostport}.key")


def client_keys(endpoint: str, key: str | None = None, server_key: str | None = None,
                environ: Mapping[str, str] | None = None) -> auth.ClientKeys | None:
    """The CURVE keys for ``endpoint``.

    Args:
        key: our key pair file; None: $DCCTL_KEY, else key_pair_path().
        server_key: the server's public key (file or Z85); None:
            $DCCTL_SERVER_KEY, else known_server_key_path(endpoint).

    Returns: ClientKeys, or None for ipc:// endpoints and when our key pair
    does not exist (the server then says it requires CURVE).

    Raises: InvalidArgument (a bad endpoint; no known server key, with a
    hint; a key file that cannot be read)."""
    environ = os.environ if environ is None else environ
    if not parse_endpoint(endpoint).is_tcp:
        return None
    key = key or environ.get(KEY_ENV) or key_pair_path(environ)
    if not os.path.exists(key):
        return None
    given = server_key or environ.get(SERVER_KEY_ENV)
    server_key = given or known_server_key_path(endpoint, environ)
    # a Z85 key only when given: a default path that happens to be 40
    # characters long is still a path
    if not os.path.exists(server_key) and not (given and len(given) == _Z85_KEY_CHARS):
        raise errors.InvalidArgument(
            f"no known server key for {endpoint}",
            hint=f"give --server-key FILE|Z85 or ${SERVER_KEY_ENV}, or write it to {server_key}")
    from dcctl import auth  # pyzmq's key files: loaded only when keys are needed
    return auth.ClientKeys.from_files(key, server_key)
