"""``dcctl build CONTEXT -t NAME[:TAG]``: pack, upload, build, stream.

The context directory (``.dockerignore`` honoured, symlinks out of it and
an oversized context refused here before a byte is sent: dcctl.buildctx)
is packed into a tar, uploaded to the hub in chunks (dcctl.upload's
image_upload_begin/chunk, keyed and checked by its sha256; bytes sent of
the total and the rate on stderr, redrawn in place on a terminal, without
--json) and built by the
hub's ``build`` on one idle host.  The build's output is printed as it
comes (stderr), then the image ref (stdout).  With ``--json`` each output
line is a JSON line ``{"log": ...}`` on stderr, and stdout holds one JSON
answer, ``{image, id, layer_bytes, ...}``.

Options: ``--build-arg K=V`` (repeatable), ``--timeout-s S`` (the build's),
``--host H`` (build there), ``--file PATH`` (the Dockerfile in the context).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from typing import Any

from dcctl import buildctx, errors, upload
from dcctl.wire.client import RpcClient
from dcctl.wire.refs import parse_ref

__all__ = ["run_build", "BUILD_USAGE"]

BUILD_USAGE = "dcctl build CONTEXT -t NAME[:TAG] [--build-arg K=V]... [--timeout-s S] [--host H] [--json]"
#: With several hubs: seconds to wait for the build's first item (an idle
#: host, the context fetched).
FIRST_ITEM_TIMEOUT_SECONDS = 900.0
_FLAGS = {"t": "name", "tag": "name", "build-arg": "build_args", "build_arg": "build_args",
          "timeout-s": "timeout_s", "timeout_s": "timeout_s", "host": "host", "file": "dockerfile"}


def parse_flags(flags: list[tuple[str, str]]) -> tuple[str, dict]:
    """(image name with tag, the hub's build options) from ``--key value``
    flags.  Raises: InvalidArgument (unknown flag, no -t, bad values)."""
    name, opts, args = None, {}, {}
    for key, value in flags:
        target = _FLAGS.get(key)
        if target is None:
            raise errors.InvalidArgument(f"build takes no --{key}", hint=f"usage: {BUILD_USAGE}")
        if target == "name":
            name = value
        elif target == "build_args":
            k, sep, v = value.partition("=")
            if not sep or not k:
                raise errors.InvalidArgument(f"--build-arg {value!r}: want NAME=VALUE")
            args[k] = v
        elif target == "timeout_s":
            try:
                opts["timeout_s"] = float(value)
            except ValueError:
                raise errors.InvalidArgument(f"--timeout-s {value!r}: want seconds") from None
        else:
            opts[target] = value
    if not name:
        raise errors.InvalidArgument("build needs -t NAME[:TAG]", hint=f"usage: {BUILD_USAGE}")
    if args:
        opts["build_args"] = args
    return name, opts


def run_build(client: Any, words: list[str], flags: list[tuple[str, str]], as_json: bool,
              out=None, err=None) -> int:
    """Run ``dcctl build`` against the hub behind ``client`` (an RpcClient).

    Returns: 0 once the image is built and in the registry.
    Raises: InvalidArgument (usage, a bad context), and the hub's build
    errors (BuildFailed, InvalidImage, ImageNotFound, ...)."""
    out, err = out or sys.stdout, err or sys.stderr
    if len(words) != 1:
        raise errors.InvalidArgument("build takes one CONTEXT directory", hint=f"usage: {BUILD_USAGE}")
    name, opts = parse_flags(flags)
    parsed = parse_ref(name)
    if parsed.prefix:
        raise errors.InvalidArgument(f"-t {name}: want NAME or NAME:TAG, no @id")
    if parsed.tag:
        opts["tag"] = parsed.tag
    root = os.path.abspath(words[0])
    _check_dockerfile(root, opts)  # a bad Dockerfile is refused before a byte is sent
    fd, tar = tempfile.mkstemp(prefix="dcctl-build-", suffix=".tar")
    os.close(fd)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _interrupted(tar, err)) if main else None
    try:
        return _send_and_build(client, root, tar, parsed, opts, as_json, out, err)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        if os.path.exists(tar):
            os.unlink(tar)


def _check_dockerfile(root: str, opts: dict) -> None:
    """Parse the context's Dockerfile here (images.dockerfile, as the
    builder will): an unsupported instruction, a COPY source that leaves the
    context, an undeclared build arg give InvalidImage naming the line
    before any upload.  A context without it is left to pack_context."""
    path = os.path.join(root, opts.get("dockerfile", "Dockerfile"))
    if not os.path.isfile(path):
        return
    from images import dockerfile  # noqa: PLC0415 - the builder's own parser
    with open(path, "rb") as f:
        text = f.read()
    try:
        dockerfile.parse(text, opts.get("build_args"))
    except ValueError as exc:  # images.errors.InvalidImage
        raise errors.InvalidImage(str(exc)) from None


def _interrupted(tar: str, err):
    """A SIGINT handler for a build under way: one line, exit 130 at once
    (no traceback from the greenlet it lands in).  The hub sees this client
    gone (its heartbeat stops) and stops the build on its host."""
    def handler(_sig, _frame):
        try:
            os.unlink(tar)
        except OSError:
            pass
        try:
            err.write("dcctl: build interrupted; the hub stops it on its host\n")
            err.flush()
        finally:
            os._exit(130)
    return handler


def _send_and_build(client: Any, root: str, tar: str, parsed, opts: dict, as_json: bool, out, err) -> int:
    """Pack, upload, build and print (see run_build); ``tar`` is removed once sent."""
    count = buildctx.pack_context(root, tar, dockerfile=opts.get("dockerfile", "Dockerfile"))
    progress = None
    if not as_json:  # (--json keeps its contract: one answer on stdout)
        err.write(f"sending context ({count} entries, {os.path.getsize(tar)} bytes)\n")
        progress = upload.TransferProgress("sending context", os.path.getsize(tar), err)
    upload_id = upload.send_file(lambda m, *a: client.call(m, *a, timeout_s=120.0), tar, progress)
    os.unlink(tar)
    result = None
    if isinstance(client, RpcClient):
        items = client.stream("build", upload_id, parsed.name, opts)  # waits as long as the build takes
    else:  # several hubs (FailoverClient): a bounded wait for the first item
        items = client.call("build", upload_id, parsed.name, opts, timeout_s=FIRST_ITEM_TIMEOUT_SECONDS)
    for item in items:
        if "result" in item:
            result = item["result"]
        elif "log" in item:
            if as_json:  # JSON lines on stderr: stdout holds the one answer, {image, id, layer_bytes, ...}
                err.write(json.dumps({"log": item["log"]}, ensure_ascii=False) + "\n")
                err.flush()
            else:
                err.write(item["log"] + "\n")
                err.flush()
    if result is None:
        raise errors.InternalError("the hub's build ended without a result")
    if as_json:
        out.write(json.dumps(result, sort_keys=True) + "\n")
    else:
        tag = f":{opts['tag']}" if opts.get("tag") else ""  # as -t named it: NAME[:TAG]@id
        out.write(f"{result['name']}{tag}@{result['id'][:12]}\n")
    return 0
