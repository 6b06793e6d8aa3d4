"""Image manifests and refs: validation and content ids (pure functions).

A manifest is a JSON object with string keys only::

    {
      "id":            sha256 hex of the canonical JSON of the other keys,
      "name":          "busybox"   (^[a-z0-9][a-z0-9._-]{0,63}$, no ".."),
      "created":       Unix seconds (float),
      "layers":        [layer id, ...]   bottom first; a layer id is the
                       sha256 hex of the layer's canonical tar,
      "size_bytes":    sum of the layer tar sizes (int),
      "exposed_ports": [{"proto": "tcp"|"udp", "port": 1..65535}, ...],
      "env":           {"KEY": "value", ...},
      "command":       ["httpd", "-f", ...]  the default command init runs,
      "stop_signal":   "SIGUSR1" | "SIGRTMIN+3" | "SIGPWR" | ...,
      "init":          "/sbin/init",
      "templates":     ["/etc/hostname", ...]  absolute paths in the rootfs,
      "parent":        image id or None,
    }

Two optional keys, present only when set (so the ids of images made before
them do not change): ``tag`` (Docker's tag grammar, e.g. "24.04"; an image
without one answers to the tag "latest") and ``config``, what an imported
OCI/Docker image's config said beyond the fields above::

      "config": {"entrypoint": [...], "cmd": [...], "working_dir": "/app",
                 "user": "1000:1000" (as the image wrote it), "volumes": [...],
                 "labels": {...}}

Refs are ``name`` (newest image of that name), ``name:tag`` (newest of that
name and tag) or ``name@idprefix`` / ``name:tag@idprefix`` (at least 4
lowercase hex digits).  The grammar of names, tags, refs, digests and image
ids, and the env-key rule, are the wire layer's (``dcctl.wire.refs``,
``dcctl.validate.is_env_key``), shared with the hub; the functions here
raise their errors as InvalidImage.
"""
from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from dcctl import validate
from dcctl.errors import InvalidArgument
from dcctl.wire import refs
from images.errors import InvalidImage
from images.fsutil import split_path

__all__ = [
    "MANIFEST_FIELDS", "OPTIONAL_FIELDS", "validate_name", "validate_tag", "parse_ref",
    "parse_full_ref", "ref_matches", "validate_digest",
    "normalize_fields", "manifest_id", "short_ref",
]

#: The tag an image without one answers to.
DEFAULT_TAG = refs.DEFAULT_TAG
_CONFIG_KEYS = ("entrypoint", "cmd", "working_dir", "user", "volumes", "labels")
_SIGNAL_RE = re.compile(r"^SIG(?:RTMIN\+[0-9]{1,2}|RTMAX-[0-9]{1,2}|[A-Z][A-Z0-9]{1,10})$")

#: Every key of a stored manifest.
MANIFEST_FIELDS = ("id", "name", "created", "layers", "size_bytes", "exposed_ports", "env",
                   "command", "stop_signal", "init", "templates", "parent")
#: Keys a stored manifest may have besides MANIFEST_FIELDS (only when set).
OPTIONAL_FIELDS = ("tag", "config")
#: Keys a caller may pass to ImageStore.commit() (the others are computed).
COMMIT_FIELDS = ("exposed_ports", "env", "command", "stop_signal", "init", "templates",
                 "parent", "created", "tag", "config")


def _image_error(check, *args):
    """``check(*args)`` (a dcctl.wire.refs function) with its InvalidArgument
    raised as InvalidImage."""
    try:
        return check(*args)
    except InvalidArgument as exc:
        raise InvalidImage(str(exc)) from exc


def validate_name(name: Any) -> str:
    """Return ``name`` if it is a valid image name (refs.image_name), else raise InvalidImage."""
    return _image_error(refs.image_name, name)


def validate_tag(tag: Any) -> str:
    """Return ``tag`` if it is a valid tag (refs.image_tag: Docker's grammar), else raise InvalidImage."""
    return _image_error(refs.image_tag, tag)


def parse_full_ref(ref: Any) -> tuple[str, str | None, str]:
    """Split ``name[:tag][@idprefix]`` into (name, tag or None, prefix or "").

    Raises:
        InvalidImage: bad name or tag, or a prefix that is not 4-64
            lowercase hex digits.
    """
    parsed = _image_error(refs.parse_ref, ref)
    return parsed.name, parsed.tag, parsed.prefix


def parse_ref(ref: Any) -> tuple[str, str]:
    """Split ``name[:tag]`` or ``name[:tag]@idprefix`` into (name, prefix or "")
    (the tag, if any, is checked and dropped: see parse_full_ref).

    Raises:
        InvalidImage: bad name or tag, or a prefix that is not 4-64
            lowercase hex digits.
    """
    name, _tag, prefix = parse_full_ref(ref)
    return name, prefix


def ref_matches(manifest: Mapping[str, Any], name: str, tag: str | None, prefix: str) -> bool:
    """Whether a manifest answers to the parsed ref (an untagged image
    answers to the tag "latest")."""
    return refs.ImageRef(name, tag, prefix).matches(manifest)


def validate_digest(value: Any, what: str = "layer id") -> str:
    """Return ``value`` if it is 64 lowercase hex digits, else raise InvalidImage."""
    return _image_error(refs.digest, value, what)


short_ref = refs.short_ref
manifest_id = refs.manifest_id


def _str_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidImage(f"invalid {what} {value!r}: want a list of strings")
    for item in value:
        if not isinstance(item, str) or "\x00" in item or len(item) > 65536:
            raise InvalidImage(f"invalid {what} item {item!r}: want a string without NUL")
    return list(value)


def _config(value: Any) -> dict:
    if not isinstance(value, Mapping) or set(value) - set(_CONFIG_KEYS):
        raise InvalidImage(f"invalid config {value!r}: want a dict with keys among "
                           f"{', '.join(_CONFIG_KEYS)}")
    out: dict = {}
    for key in ("entrypoint", "cmd", "volumes"):
        out[key] = _str_list(value.get(key), f"config {key}")
    for key in ("working_dir", "user"):
        item = value.get(key) or ""
        if not isinstance(item, str) or "\x00" in item or "\n" in item or len(item) > 4096:
            raise InvalidImage(f"invalid config {key} {item!r}")
        out[key] = item
    if out["working_dir"] and not out["working_dir"].startswith("/"):
        raise InvalidImage(f"invalid config working_dir {out['working_dir']!r}: not absolute")
    labels = value.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise InvalidImage("invalid config labels: want a dict of str to str")
    out["labels"] = dict(sorted(labels.items()))
    return out


_PORT_RE = re.compile(r"^([0-9]{1,5})(?:/(tcp|udp))?$")


def _port_item(item: Any) -> tuple[str, int]:
    """One exposed port as (proto, port): ``80`` (tcp), ``"80"``,
    ``"80/tcp"``, ``"53/udp"`` (Docker's ExposedPorts key) or
    ``{"proto": "tcp", "port": 80}``."""
    if type(item) is int:
        proto, port = "tcp", item
    elif isinstance(item, str):
        m = _PORT_RE.match(item)
        if not m:
            raise InvalidImage(f"invalid exposed port {item!r}: want PORT or PORT/tcp|udp, e.g. 80/tcp")
        proto, port = m.group(2) or "tcp", int(m.group(1))
    elif isinstance(item, Mapping) and set(item) == {"proto", "port"}:
        proto, port = item["proto"], item["port"]
        if proto not in ("tcp", "udp") or type(port) is not int:
            raise InvalidImage(f"invalid exposed port {item!r}: proto tcp|udp, port 1-65535")
    else:
        raise InvalidImage(f"invalid exposed port {item!r}: want 80, '80/tcp' or {{'proto', 'port'}}")
    if not 1 <= port <= 65535:
        raise InvalidImage(f"invalid exposed port {item!r}: port 1-65535")
    return proto, port


def _ports(value: Any) -> list[dict]:
    """exposed_ports: one port (see _port_item) or a list of them, as
    [{proto, port}] without duplicates, in the order given."""
    if value is None:
        return []
    items = value if isinstance(value, (list, tuple)) else [value]
    ports, seen = [], set()
    for item in items:
        proto, port = _port_item(item)
        if (proto, port) not in seen:
            seen.add((proto, port))
            ports.append({"proto": proto, "port": port})
    return ports


def _env(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidImage(f"invalid env {value!r}: want a dict of str to str")
    for key, val in value.items():
        if not validate.is_env_key(key):
            raise InvalidImage(f"invalid env variable name {key!r}")
        if not isinstance(val, str) or "\x00" in val:
            raise InvalidImage(f"invalid value for env variable {key}: want a string without NUL")
    return dict(sorted(value.items()))


def _command(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise InvalidImage(f"invalid command {value!r}: want a list of strings")
    for arg in value:
        if not isinstance(arg, str) or "\x00" in arg:
            raise InvalidImage(f"invalid command argument {arg!r}: want a string without NUL")
    return list(value)


def _abs_path(value: Any, what: str) -> str:
    return "/" + "/".join(split_path(value, what=f"{what} {value!r}", absolute=True))


def _templates(value: Iterable[Any]) -> list[str]:
    if value is not None and not isinstance(value, (list, tuple)):
        raise InvalidImage(f"invalid templates {value!r}: want a list of absolute paths")
    out: list[str] = []
    for path in value or ():
        norm = _abs_path(path, "template path")
        if norm == "/":
            raise InvalidImage("invalid template path '/': not a file")
        if norm not in out:
            out.append(norm)
    return out


def normalize_fields(fields: Mapping[str, Any]) -> dict:
    """Validate and normalize the caller-settable manifest fields.

    Args:
        fields: any of exposed_ports, env, command, stop_signal, init,
            templates, parent, created, tag, config (see the module
            docstring for shapes).

    Returns:
        a dict with every COMMIT_FIELDS key (defaults filled in), except
        ``created``, ``tag`` and ``config``, which are left out when not
        given (or None).

    Raises:
        InvalidImage: an unknown key or a value of the wrong shape.
    """
    unknown = set(fields) - set(COMMIT_FIELDS)
    if unknown:
        raise InvalidImage(f"unknown manifest field(s): {', '.join(sorted(unknown))}")
    stop_signal = fields.get("stop_signal", "SIGPWR")
    if not isinstance(stop_signal, str) or not _SIGNAL_RE.match(stop_signal):
        raise InvalidImage(f"invalid stop_signal {stop_signal!r}: want e.g. SIGPWR, SIGRTMIN+3")
    parent = fields.get("parent")
    if parent is not None:
        validate_digest(parent, "parent image id")
    out = {
        "exposed_ports": _ports(fields.get("exposed_ports", ())),
        "env": _env(fields.get("env")),
        "command": _command(fields.get("command")),
        "stop_signal": stop_signal,
        "init": _abs_path(fields.get("init", "/sbin/init"), "init path"),
        "templates": _templates(fields.get("templates", ())),
        "parent": parent,
    }
    if "created" in fields:
        created = fields["created"]
        if type(created) not in (int, float) or created < 0:
            raise InvalidImage(f"invalid created {created!r}: want Unix seconds")
        out["created"] = float(created)
    if fields.get("tag") is not None:
        out["tag"] = validate_tag(fields["tag"])
    if fields.get("config") is not None:
        out["config"] = _config(fields["config"])
    return out
