"""Image names, refs, content ids and manifest ids: the grammar the hub's
registry and the agents' image store share (one definition; the hub never
imports images/, so it lives in the wire layer).  Standard library only.

    name      ^[a-z0-9][a-z0-9._-]{0,63}$ without ".."      busybox, my.app-2
    ref       NAME (the newest image of that name) or NAME@IDPREFIX, the
              prefix 4-64 lowercase hex digits                busybox@3f2a
    digest    64 lowercase hex digits (a layer id, an image id)
    image id  the sha256 hex of the canonical JSON (sorted keys, compact,
              ASCII) of the manifest without its "id" key

Each function raises ``InvalidArgument`` (a ValueError); images/ re-raises
it as its own InvalidImage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any, Mapping

from dcctl.errors import InvalidArgument

__all__ = ["NAME_MAX_CHARS", "ImageRef", "image_name", "parse_ref", "digest", "manifest_id", "short_ref"]

NAME_MAX_CHARS = 64
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{4,64}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A parsed ref: ``name``, and ``prefix`` ("" for the newest of that name)."""

    name: str
    prefix: str = ""

    def matches(self, manifest: Mapping[str, Any]) -> bool:
        """Whether ``manifest`` (with name and id) is one this ref names."""
        return manifest.get("name") == self.name and str(manifest.get("id", "")).startswith(self.prefix)

    def __str__(self) -> str:
        return f"{self.name}@{self.prefix}" if self.prefix else self.name


def image_name(name: Any) -> str:
    """Return ``name`` if it is a valid image name.  Raises: InvalidArgument."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(f"invalid image name {name!r}: want ^[a-z0-9][a-z0-9._-]{{0,63}}$ without '..'")
    return name


def parse_ref(ref: Any) -> ImageRef:
    """Parse ``name`` or ``name@idprefix``.

    Raises:
        InvalidArgument: not a string, a bad name, or a prefix that is not
            4-64 lowercase hex digits.
    """
    if not isinstance(ref, str):
        raise InvalidArgument(f"invalid image ref {ref!r}: not a string")
    name, sep, prefix = ref.partition("@")
    image_name(name)
    if sep and not _PREFIX_RE.match(prefix):
        raise InvalidArgument(f"invalid image ref {ref!r}: the id prefix after '@' must be "
                              "4 to 64 lowercase hex digits")
    return ImageRef(name, prefix)


def digest(value: Any, what: str = "layer id") -> str:
    """Return ``value`` if it is 64 lowercase hex digits.  Raises: InvalidArgument."""
    if not isinstance(value, str) or not _DIGEST_RE.match(value):
        raise InvalidArgument(f"invalid {what} {value!r:.80}: want 64 lowercase hex digits")
    return value


def manifest_id(manifest: Mapping[str, Any]) -> str:
    """The image id of ``manifest``: sha256 hex of the canonical JSON
    (sorted keys, compact separators, ASCII) of every key but ``id``."""
    body = {k: v for k, v in manifest.items() if k != "id"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def short_ref(manifest: Mapping[str, Any]) -> str:
    """``name@<first 12 hex of id>``, the form used in messages and listings."""
    return f"{manifest['name']}@{manifest['id'][:12]}"
