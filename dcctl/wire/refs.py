"""Image names, refs, content ids and manifest ids: the grammar the hub's
registry and the agents' image store share (one definition; the hub never
imports images/, so it lives in the wire layer).  Standard library only.

    name      ^[a-z0-9][a-z0-9._-]{0,63}$ without ".."      busybox, my.app-2
    tag       ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ (Docker's)  24.04, latest
    ref       NAME[:TAG][@IDPREFIX]: the newest image of that name and
              tag (NAME alone is NAME:latest; an untagged image answers to
              "latest"); NAME@IDPREFIX that id whatever its tag, the prefix
              4-64 lowercase hex digits                       busybox@3f2a, ubuntu:24.04
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

__all__ = ["NAME_MAX_CHARS", "DEFAULT_TAG", "ImageRef", "image_name", "image_tag", "parse_ref", "digest",
           "manifest_id", "short_ref"]

NAME_MAX_CHARS = 64
#: The tag an image without one answers to.
DEFAULT_TAG = "latest"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_PREFIX_RE = re.compile(r"^[0-9a-f]{4,64}$")
_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclasses.dataclass(frozen=True)
class ImageRef:
    """A parsed ref: ``name``, ``tag`` (None: any) and ``prefix`` ("": any id)."""

    name: str
    tag: str | None = None
    prefix: str = ""

    def matches(self, manifest: Mapping[str, Any]) -> bool:
        """Whether ``manifest`` (with name, id and maybe tag) is one this ref
        names; an untagged image answers to the tag DEFAULT_TAG."""
        if manifest.get("name") != self.name or not str(manifest.get("id", "")).startswith(self.prefix):
            return False
        return self.tag is None or (manifest.get("tag") or DEFAULT_TAG) == self.tag

    def lookup(self) -> "ImageRef":
        """The ref as a lookup (resolve) reads it: a bare NAME (no tag, no
        id prefix) is NAME:DEFAULT_TAG, never the newest of any tag; with a
        tag or an id prefix, the ref itself."""
        if self.tag is None and not self.prefix:
            return dataclasses.replace(self, tag=DEFAULT_TAG)
        return self

    def __str__(self) -> str:
        head = self.name if self.tag is None else f"{self.name}:{self.tag}"
        return f"{head}@{self.prefix}" if self.prefix else head


def image_name(name: Any) -> str:
    """Return ``name`` if it is a valid image name.  Raises: InvalidArgument."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or ".." in name:
        raise InvalidArgument(f"invalid image name {name!r}: want ^[a-z0-9][a-z0-9._-]{{0,63}}$ without '..'")
    return name


def image_tag(tag: Any) -> str:
    """Return ``tag`` if it is a valid tag (Docker's grammar).  Raises: InvalidArgument."""
    if not isinstance(tag, str) or not _TAG_RE.match(tag):
        raise InvalidArgument(f"invalid image tag {tag!r}: want ^[A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}}$")
    return tag


def parse_ref(ref: Any) -> ImageRef:
    """Parse ``name[:tag][@idprefix]``.

    Raises:
        InvalidArgument: not a string, a bad name or tag, or a prefix that
            is not 4-64 lowercase hex digits.
    """
    if not isinstance(ref, str):
        raise InvalidArgument(f"invalid image ref {ref!r}: not a string")
    head, sep, prefix = ref.partition("@")
    name, colon, tag = head.partition(":")
    image_name(name)
    if colon:
        image_tag(tag)
    if sep and not _PREFIX_RE.match(prefix):
        raise InvalidArgument(f"invalid image ref {ref!r}: the id prefix after '@' must be "
                              "4 to 64 lowercase hex digits")
    return ImageRef(name, tag if colon else None, prefix)


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
