"""Who may call: CURVE keys, allowlists with roles, and the ZAP handler.

Every TCP endpoint of an agent or the hub runs ZeroMQ CURVE (encryption and
client authentication).  A ZAP handler, bound in the server's own ZeroMQ
context at ``inproc://zeromq.zap.01``, admits a client during the handshake
only if its public key is in the allowlist; the key (Z85, 40 chars) becomes
the connection's User-Id, which the server reads from every request frame.
Each call is then checked against the *current* allowlist, so removing a key
takes effect at once, even for connections made before.

Key files are ZeroMQ certificates (``zmq.auth``): ``NAME.key`` (public) and
``NAME.key_secret`` (public and secret, mode 0600).

Allowlist layout (a directory, re-read when it changes)::

    KEYS_DIR/server.key_secret      this server's own key pair (made on first start)
    KEYS_DIR/clients/admin/*.key    may call everything
    KEYS_DIR/clients/read/*.key     may list, inspect, read hostinfo and pull images
    KEYS_DIR/clients/agent/*.key    hosts (on a SQLite hub): register, heartbeat, pull images; nothing else
    KEYS_DIR/clients/router/*.key   routers (on the hub): read the route table, nothing else

A hub on etcd takes its hosts' keys (the ``agent`` role) from the store
instead (``Allowlist(agent_keys=...)``, the store's watched key index):
``host_add`` on any hub of the store admits a host on all of them and
``host_remove`` on any hub refuses its key on all of them, with no file on
any machine; its ``clients/agent/`` files are then not read.  The server
key pair and the admin, read and router keys stay in the keys dir (copied
once to each hub machine).

The local ``ipc://`` endpoint (mode 0600, root only) has no CURVE; its
callers are the host's root and get the admin role.  ``admin`` covers every
access level, the agent's too: a local agent may join a hub over the hub's
ipc endpoint (the hub knows it by its name there, see hub.service).

Secrets: ``read`` and ``agent`` callers never see environment values.  A
result's maps under an ``env`` key (a container's environment, anywhere in
the result: inspect, broadcast, listings) reach them with each value
replaced by REDACTED (``redact_env``); the names stay.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import threading
from typing import Callable

import gevent
import zmq
import zmq.auth

from dcctl import errors, files

log = logging.getLogger(__name__)

ROLES = ("admin", "read", "agent", "router")
#: What each role may call: method access levels it covers ("routes": the
#: route table, the only level a router's key has).
#: "pull": reading images to pull them (image_manifest, image_layer_read, an
#: upload's chunks), all an agent reads at the hub besides its own membership calls.
GRANTS = {"admin": {"read", "admin", "agent", "routes", "pull"}, "read": {"read", "routes", "pull"},
          "agent": {"agent", "pull"}, "router": {"routes"}}
LOCAL_ROLE = "admin"
#: Roles that see env names with their values replaced by REDACTED.
REDACTED_ROLES = frozenset({"read", "agent"})
REDACTED = "<redacted>"
_MAX_REDACT_DEPTH = 64
ZAP_ENDPOINT = "inproc://zeromq.zap.01"


def keygen(key_dir: str, name: str) -> tuple[str, str]:
    """Write a new key pair ``NAME.key`` / ``NAME.key_secret`` (0600) into
    ``key_dir`` (made 0700); returns (public file, secret file).

    Raises: InvalidArgument (bad name), Conflict (files exist)."""
    if not name or "/" in name or name.startswith("."):
        raise errors.InvalidArgument(f"bad key name {name!r}")
    os.makedirs(key_dir, mode=0o700, exist_ok=True)
    pub, sec = os.path.join(key_dir, f"{name}.key"), os.path.join(key_dir, f"{name}.key_secret")
    if os.path.exists(pub) or os.path.exists(sec):
        raise errors.Conflict(f"key files for {name!r} already exist in {key_dir}")
    old = os.umask(0o077)
    try:
        zmq.auth.create_certificates(key_dir, name)
    finally:
        os.umask(old)
    os.chmod(sec, 0o600)
    os.chmod(pub, 0o644)
    return pub, sec


def load_public(path_or_key: str) -> bytes:
    """A public key from a certificate file, or a Z85 string (40 chars)."""
    if len(path_or_key) == 40 and not os.path.exists(path_or_key):
        return path_or_key.encode()
    try:
        public, _ = zmq.auth.load_certificate(path_or_key)
    except (OSError, ValueError) as exc:
        raise errors.InvalidArgument(f"cannot read public key {path_or_key}: {exc}") from exc
    return public


def public_key(text: object) -> str:
    """A Z85 CURVE public key (40 chars, 32 bytes) checked and returned.

    Raises: InvalidArgument."""
    if not isinstance(text, str) or len(text) != 40:
        raise errors.InvalidArgument("a public key is 40 characters of Z85 (the public-key of a .key file)")
    try:
        raw = zmq.utils.z85.decode(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, KeyError, IndexError) as exc:
        raise errors.InvalidArgument(f"bad public key {text!r}: not Z85") from exc
    if len(raw) != 32:
        raise errors.InvalidArgument(f"bad public key {text!r}: not 32 bytes")
    return text


def redact_env(value, depth: int = 0):
    """``value`` (a result: dicts, lists, scalars) with every map found under
    an ``env`` key given REDACTED for each value (names kept).  Makes new
    containers where it changes something; never mutates ``value``."""
    if depth > _MAX_REDACT_DEPTH:
        return value
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k == "env" and isinstance(v, dict):
                out[k] = {name: REDACTED for name in v}
            else:
                out[k] = redact_env(v, depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact_env(v, depth + 1) for v in value]
    return value


def load_pair(path: str) -> tuple[bytes, bytes]:
    """(public, secret) from a ``.key_secret`` certificate file."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise errors.InvalidArgument(f"cannot read key pair {path}: {exc}") from exc
    if not secret:
        raise errors.InvalidArgument(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def ensure_server_pair(keys_dir: str) -> tuple[bytes, bytes]:
    """This server's key pair (KEYS_DIR/server.key_secret), made if missing."""
    path = os.path.join(keys_dir, "server.key_secret")
    if not os.path.exists(path):
        keygen(keys_dir, "server")
    return load_pair(path)


@dataclasses.dataclass
class Allowlist:
    """Client public keys by role, read from KEYS_DIR/clients/<role>/*.key
    and re-read whenever a role directory changes (mtime).

    ``agent_keys``: None (the ``agent`` role's keys are files too), or a
    callable ``(z85 key) -> host name or None`` that alone answers for the
    ``agent`` role (an etcd hub's watched key index, see the module doc);
    it is asked on every lookup, so it must answer from memory."""

    keys_dir: str
    agent_keys: Callable[[str], str | None] | None = None
    _stamp: tuple = ()
    _roles: dict = dataclasses.field(default_factory=dict)  # z85 key -> (role, file name)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        for role in ROLES:
            os.makedirs(os.path.join(self.keys_dir, "clients", role), mode=0o700, exist_ok=True)
        if self.agent_keys is not None:
            left = [e for e in os.listdir(os.path.join(self.keys_dir, "clients", "agent")) if e.endswith(".key")]
            if left:
                log.warning("the hosts' keys come from the fleet store: %d file(s) in %s/clients/agent are not "
                            "read (host_add admits a host, host_remove refuses it, on every hub)",
                            len(left), self.keys_dir)

    @property
    def agents_elsewhere(self) -> bool:
        """True when the ``agent`` role's keys come from ``agent_keys``, not files."""
        return self.agent_keys is not None

    def _dirs_stamp(self) -> tuple:
        out = []
        for role in ROLES:
            d = os.path.join(self.keys_dir, "clients", role)
            try:
                st = os.stat(d)
                out.append((role, st.st_mtime_ns, st.st_ino))
            except FileNotFoundError:
                out.append((role, 0, 0))
        return tuple(out)

    def lookup(self, public_z85: bytes | str) -> tuple[str, str] | None:
        """(role, key name) of a client key, or None if not allowed."""
        key = public_z85.decode() if isinstance(public_z85, bytes) else public_z85
        stamp = self._dirs_stamp()
        if stamp != self._stamp:
            roles = {}
            for role in ROLES:
                d = os.path.join(self.keys_dir, "clients", role)
                if role == "agent" and self.agent_keys is not None:
                    continue
                for entry in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                    if not entry.endswith(".key"):
                        continue
                    try:
                        public, _ = zmq.auth.load_certificate(os.path.join(d, entry))
                    except (OSError, ValueError):
                        log.warning("skipping unreadable key file %s/%s", d, entry)
                        continue
                    roles[public.decode()] = (role, entry[:-4])
            self._roles, self._stamp = roles, stamp
        found = self._roles.get(key)
        if self.agent_keys is None or (found is not None and found[0] != "agent"):
            return found
        name = self.agent_keys(key)
        return ("agent", name) if name is not None else None

    def add(self, role: str, name: str, public_z85: str) -> str:
        """Write a client public key file for ``role``; returns its path."""
        if role not in ROLES:
            raise errors.InvalidArgument(f"role must be one of {', '.join(ROLES)}")
        if not name or "/" in name or name.startswith("."):
            raise errors.InvalidArgument(f"bad key name {name!r}")
        path = os.path.join(self.keys_dir, "clients", role, f"{name}.key")
        files.atomic_write(path, f'curve\n    public-key = "{public_z85}"\n', mode=0o644)
        return path

    def remove(self, role: str, name: str, public_z85: str) -> bool:
        """Delete the key file ``clients/ROLE/NAME.key`` if it holds
        ``public_z85``; True when deleted."""
        path = os.path.join(self.keys_dir, "clients", role, f"{name}.key")
        try:
            public, _ = zmq.auth.load_certificate(path)
        except (OSError, ValueError):
            return False
        if public.decode() != public_z85:
            return False
        os.unlink(path)
        return True


class ZapHandler:
    """Answers ZAP requests for the sockets of ``ctx`` (a zmq.green context):
    CURVE clients whose key is in ``allowlist`` get status 200 and their key
    as User-Id; anyone else gets 400, logged with their address."""

    def __init__(self, ctx, allowlist: Allowlist):
        self.allowlist = allowlist
        self.sock = ctx.socket(zmq.REP)
        self.sock.linger = 0
        self.sock.bind(ZAP_ENDPOINT)
        self.task = gevent.spawn(self._serve)

    def _serve(self) -> None:
        while True:
            frames = self.sock.recv_multipart()
            try:
                reply = self._answer(frames)
            except Exception:  # never leave the REP socket without an answer
                log.exception("ZAP request failed")
                reply = [b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"internal error", b"", b""]
            self.sock.send_multipart(reply)

    def _answer(self, frames: list[bytes]) -> list[bytes]:
        version, request_id, _domain, address, _identity, mechanism = frames[:6]
        creds = frames[6:]
        if mechanism == b"CURVE" and len(creds) == 1 and len(creds[0]) == 32:
            key = zmq.utils.z85.encode(creds[0])
            found = self.allowlist.lookup(key)
            if found is not None:
                return [version, request_id, b"200", b"OK", key, b""]
            log.warning("refused CURVE client key %s from %s", key.decode(), address.decode(errors="replace"))
            return [version, request_id, b"400", b"key not allowed", b"", b""]
        log.warning("refused %s client from %s", mechanism.decode(errors="replace"),
                    address.decode(errors="replace"))
        return [version, request_id, b"400", b"CURVE required", b"", b""]

    def close(self) -> None:
        self.task.kill()
        self.sock.close()


@dataclasses.dataclass(frozen=True)
class ClientKeys:
    """What a CURVE client needs: its key pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    @classmethod
    def from_files(cls, pair_file: str, server_key: str) -> "ClientKeys":
        public, secret = load_pair(pair_file)
        return cls(public, secret, load_public(server_key))
