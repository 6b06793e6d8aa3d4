"""A build context as ``dcctl build`` sends it and the agent checks it.

``context_files(root)`` lists a context directory: ``.dockerignore``
honoured (patterns are fnmatch globs on the path from the context root; a
pattern matching a directory excludes what is under it; ``!`` re-includes;
the last match wins; the Dockerfile is always sent), symlinks that leave
the context refused, the total size of its files capped.
``pack_context(root, out)`` writes those files into a plain tar.
"""
from __future__ import annotations

import fnmatch
import os
import stat
import tarfile

from dcctl import errors

__all__ = ["DEFAULT_MAX_CONTEXT_BYTES", "context_files", "read_dockerignore", "pack_context"]

#: Cap on a build context (its regular files), bytes.
DEFAULT_MAX_CONTEXT_BYTES = 256 << 20



def read_dockerignore(root: str) -> list[tuple[bool, str]]:
    """The patterns of ``root/.dockerignore``: [(negated, pattern)]."""
    try:
        with open(os.path.join(root, ".dockerignore"), encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for raw in lines:
        p = raw.strip()
        if not p or p.startswith("#"):
            continue
        neg = p.startswith("!")
        p = os.path.normpath(p.lstrip("!").strip()).lstrip("/")
        out.append((neg, p))
    return out


def _ignored(rel: str, patterns: list[tuple[bool, str]]) -> bool:
    hit = False
    for neg, p in patterns:
        # a pattern matches the path or any directory above it
        parts = rel.split("/")
        if any(fnmatch.fnmatchcase("/".join(parts[:i]), p) for i in range(1, len(parts) + 1)):
            hit = not neg
    return hit


def context_files(root: str, max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES) -> list[str]:
    """The context's paths (relative, directories before their contents),
    without those .dockerignore excludes (the Dockerfile is always kept).

    Raises:
        InvalidImage: a symlink that points out of the context (absolute, or
            climbing above it), a device node, fifo or socket, or regular
            files totalling over ``max_bytes``.
    """
    root = os.path.realpath(root)
    patterns = read_dockerignore(root)
    out, total = [], 0
    for top, dirs, files in os.walk(root):
        dirs.sort()
        rel_top = os.path.relpath(top, root)
        for name in sorted(dirs + files):
            rel = name if rel_top == "." else f"{rel_top}/{name}"
            if rel != "Dockerfile" and _ignored(rel, patterns):
                if name in dirs:
                    dirs.remove(name)
                continue
            path = os.path.join(top, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                resolved = os.path.normpath(os.path.join(os.path.dirname(rel), target))
                if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
                    raise errors.InvalidImage(f"context: {rel} is a symlink to {target!r}, out of the context")
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
                if total > max_bytes:
                    raise errors.InvalidImage(f"context is over its cap of {max_bytes} bytes (at {rel})")
            elif not stat.S_ISDIR(st.st_mode):
                raise errors.InvalidImage(f"context: {rel} is a device node, fifo or socket")
            out.append(rel)
    return out


def pack_context(root: str, out_path: str, max_bytes: int = DEFAULT_MAX_CONTEXT_BYTES,
                 dockerfile: str = "Dockerfile") -> int:
    """Write the context's files (context_files) into a plain tar at
    ``out_path``, owners and modes as they are.

    Returns: the number of entries.
    Raises: InvalidImage (as context_files), InvalidArgument (no
    Dockerfile, not a directory), OSError."""
    if not os.path.isdir(root):
        raise errors.InvalidArgument(f"build context {root!r} is not a directory")
    files = context_files(root, max_bytes)
    if not os.path.isfile(os.path.join(root, dockerfile)):
        raise errors.InvalidArgument(f"no {dockerfile} in {root}")
    with tarfile.open(out_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in files:
            tar.add(os.path.join(root, rel), arcname=rel, recursive=False)
    return len(files)
