"""``dcctl image_push FILE NAME[:TAG]``: upload an image archive from this
machine into the hub's registry (see hub/uploads.py for the protocol).

The hub's ``image_push HOST REF`` (copy an image from a host) keeps its
shape; dcctl takes the first word as a local file when it names one (or
contains a "/"), and uploads it instead.  The file is an OCI archive, a
docker-save archive or a rootfs tarball; an OCI layout directory is packed
into a plain tar first.  ``FILE:TAG`` picks one image of an archive holding
several.  The upload resumes where an interrupted one stopped (the hub keeps
what it received, keyed by the file's sha256); progress goes to stderr.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tarfile
import tempfile
import time
from typing import Callable, Iterator

from dcctl import errors
from dcctl.wire.endpoint import parse_endpoint
from dcctl.wire.refs import parse_ref

__all__ = ["looks_local", "push_file", "send_file", "TransferProgress", "absolute_paths", "user_path_error", "CHUNK_BYTES", "PUSH_OPTIONS",
           "PUSH_USAGE"]

#: The options of the upload form, as image_upload_finish takes them
#: (select comes from FILE:TAG).
PUSH_OPTIONS = {"host": "the host that imports the archive (default: the first live host by name)",
                "format": "the archive's format, as image_import's --format"}
PUSH_USAGE = "dcctl image_push FILE[:TAG] NAME[:TAG] [--host HOST] [--format FORMAT]"
#: The importing agent's copy of the upload (agents.transfer.fetch_upload:
#: mkstemp("upload-") under its state dir), as error messages name it.
_AGENT_COPY_RE = re.compile(r"(?:/[^\s'\":,()]+)*/upload-[A-Za-z0-9_]{8}\b")

#: Methods whose argument at this index is a path on the server's host.
HOST_PATH_ARGS = {"image_import": 0, "image_import_progress": 0, "image_export": 1}

CHUNK_BYTES = 4 << 20
FINISH_TIMEOUT_SECONDS = 1860.0


def _split(word: str) -> tuple[str, str | None]:
    if os.path.exists(word):
        return word, None
    head, sep, tag = word.rpartition(":")
    if sep and head and "/" not in tag and os.path.exists(head):
        return head, tag
    return word, None


def absolute_paths(method: str | None, endpoint: str, args: list) -> list:
    """For a local ``ipc://`` server (on this machine), make a relative
    image path absolute (``dcctl image_import ./ubuntu.tar ubuntu``); the
    agent takes absolute paths only.  Other endpoints: args unchanged."""
    index = HOST_PATH_ARGS.get(method or "")
    if index is None or not parse_endpoint(endpoint).is_ipc or len(args) <= index:
        return args
    word = args[index]
    if not isinstance(word, str) or os.path.isabs(word) or not word:
        return args
    return [*args[:index], os.path.abspath(word), *args[index + 1:]]


def looks_local(word: str) -> bool:
    """Whether image_push's first word names a local file or directory
    (else it is a host name, as for the hub's image_push HOST REF)."""
    path, _tag = _split(word)
    return os.path.exists(path) or "/" in word


@contextlib.contextmanager
def _as_file(path: str) -> Iterator[str]:
    """The path itself, or a plain tar of an OCI layout directory."""
    if not os.path.isdir(path):
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="dcctl-push-", suffix=".tar")
    os.close(fd)
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(os.listdir(path)):
                tar.add(os.path.join(path, name), arcname=name)
        yield tmp
    finally:
        os.unlink(tmp)


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
    return sha.hexdigest()


class _Progress:
    """One status line on stderr, redrawn in place on a terminal."""

    def __init__(self, label: str, total: int, stream=None):
        self.label, self.total, self.stream = label, total, stream or sys.stderr
        self.started = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < 0.2:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-6) / 2**20
        pct = 100.0 * done / self.total if self.total else 100.0
        width = 30
        bar = "#" * int(width * pct / 100) + "-" * (width - int(width * pct / 100))
        line = (f"{self.label} [{bar}] {pct:5.1f}% {done / 2**20:.1f}/{self.total / 2**20:.1f} MiB "
                f"{rate:.1f} MiB/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        elif final:
            self.stream.write(line + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()


#: The public name of the upload's status line (dcctl build's context upload).
TransferProgress = _Progress


def send_file(call: Callable, file: str, progress: "_Progress | None" = None) -> str:
    """Upload ``file`` to the hub in CHUNK_BYTES chunks (image_upload_begin,
    image_upload_chunk), resuming where an earlier upload of the same
    content stopped; progress on ``progress`` (a _Progress) if given.

    Returns: the upload id (the file's sha256), complete on the hub.
    Raises: the hub's errors (InvalidArgument, StoreError: disk full)."""
    size = os.path.getsize(file)
    sha = _sha256(file)
    state = call("image_upload_begin", size, sha)
    offset = state["offset"]
    if offset and not state.get("complete") and progress is not None:
        progress.note(f"resuming at {offset / 2**20:.1f} MiB")
    with open(file, "rb") as f:
        while offset < size:
            f.seek(offset)
            data = f.read(CHUNK_BYTES)
            try:
                offset = call("image_upload_chunk", sha, offset, data)["offset"]
            except errors.InvalidArgument:
                state = call("image_upload_begin", size, sha)  # lost our place: ask where
                if state["offset"] == offset:
                    raise
                offset = state["offset"]
            if progress is not None:
                progress.update(offset)
    if progress is not None:
        progress.update(size, final=True)
    return sha


def push_file(call: Callable, word: str, name: str, *, stream=None, options: dict | None = None,
              on_items: Callable[[Iterator[dict]], "dict | None"] | None = None) -> dict:
    """Upload ``word`` (FILE or FILE:TAG) as image ``name`` (NAME[:TAG]).

    Args:
        call: ``call(method, *args, timeout_s=...)`` on the hub.
        word: the local path, maybe with ``:TAG``.
        name: the image name and tag to give it (checked by the ref
            grammar, dcctl.wire.refs.parse_ref, before anything is sent).
        stream: where progress goes (default stderr).
        options: image_upload_finish's options (PUSH_OPTIONS: host, format).
        on_items: when given and the hub has image_upload_finish_progress,
            the finish runs as that stream and ``on_items(items)`` renders
            it (verify, copy, unpack, pack, registry) and returns its last
            item, whose result is the answer; else image_upload_finish.

    Returns: image_upload_finish's result {manifest, host, bytes}.
    Raises: InvalidArgument (a bad NAME, no such file), and the hub's
    errors, whose messages name ``word``'s path where the importing agent's
    would name its temporary copy.
    """
    path, select = _split(word)
    parse_ref(name)  # the one ref grammar, before a byte is sent
    if not os.path.exists(path):
        raise errors.InvalidArgument(f"no such file {path!r} on this machine")
    with _as_file(path) as file:
        progress = _Progress(f"pushing {os.path.basename(path.rstrip('/'))}", os.path.getsize(file), stream)
        sha = send_file(call, file, progress)
        progress.note("verifying and importing on the fleet...")
        options = {**(options or {}), **({"select": select} if select else {})}
        try:
            if on_items is not None:
                try:
                    items = call("image_upload_finish_progress", sha, name, options,
                                 timeout_s=FINISH_TIMEOUT_SECONDS)
                except errors.NoSuchMethod:  # an older hub
                    items = None
                if items is not None:
                    last = on_items(items if hasattr(items, "__next__") else iter([items]))
                    return (last or {}).get("result")
            return call("image_upload_finish", sha, name, options, timeout_s=FINISH_TIMEOUT_SECONDS)
        except errors.DcError as exc:
            raise user_path_error(exc, path) from exc


def user_path_error(exc: errors.DcError, path: str) -> errors.DcError:
    """``exc`` with the importing agent's temporary copy of the upload
    (``.../images/tmp/upload-xxxxxxxx``) named as the user's ``path``
    instead; ``exc`` itself when its message names no such copy."""
    message = _AGENT_COPY_RE.sub(lambda m: path, exc.message)
    if message == exc.message:
        return exc
    return type(exc)(message, hint=exc.hint)
