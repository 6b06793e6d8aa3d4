"""Jinja2 templates of an image, rendered into a container at create.

An image lists template paths in its manifest (``templates``).  Image content
is untrusted: templates render in a ``SandboxedEnvironment`` with
``StrictUndefined``, cannot include other files, cannot build huge numbers or
strings with ``**``/``*``, and their output is capped.  Files are read from the
layers and written under the destination without following any symlink.

Context keys the agent passes: name, hostname, address, prefixlen, gateway,
host (host name), exposed_ports (list of {"proto", "port"}), env (dict).

An image that does not template its network identity (a rootfs imported with
``image_import`` lists no templates) still gets it: the agent passes
dcfleet's own templates for /etc/hostname, /etc/hosts and
/etc/network/interfaces as ``defaults``, rendered as for built images.
"""
from __future__ import annotations

import functools
import os
import secrets
import stat
from typing import Any, Mapping

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from images.errors import InvalidImage, StoreError
from images.fsutil import O_DIR_NOFOLLOW, open_dir_beneath, split_path

__all__ = ["render_templates", "render_text", "MAX_TEMPLATE_BYTES", "MAX_OUTPUT_BYTES"]

MAX_TEMPLATE_BYTES = 1024**2
MAX_OUTPUT_BYTES = 4 * 1024**2
_MAX_EXPONENT = 256


class _Sandbox(SandboxedEnvironment):
    """The stock sandbox, plus limits on ``**`` and sequence ``*``."""

    intercepted_binops = frozenset(["*", "**"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > _MAX_EXPONENT:
            raise jinja2.exceptions.SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (isinstance(seq, (str, list, tuple)) and isinstance(times, int)
                        and len(seq) * times > MAX_OUTPUT_BYTES):
                    raise jinja2.exceptions.SecurityError("repetition result is too large")
        return super().call_binop(context, operator, left, right)


def _template_line(exc: BaseException, filename: str) -> int | None:
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return exc.lineno
    line, tb = None, exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _no_loader(name: str) -> None:
    return None  # {% include %}/{% extends %}/{% import %} find nothing


#: One sandbox per autoescape setting; its loader finds nothing, so a
#: template can include no other file (not even itself).
_ENVS = {escape: _Sandbox(undefined=jinja2.StrictUndefined, autoescape=escape, keep_trailing_newline=True,
                          cache_size=0, loader=jinja2.FunctionLoader(_no_loader))
         for escape in (False, True)}


#: Templates up to this size are kept compiled (at most _COMPILED_KEPT of
#: them: a few MiB at worst); larger ones are compiled at each render.
_COMPILED_MAX_SOURCE_CHARS = 16384
_COMPILED_KEPT = 256


def _compile(source: str, path: str, autoescape: bool) -> jinja2.Template:
    env = _ENVS[autoescape]
    return env.template_class.from_code(env, env.compile(source, path, path), env.make_globals(None), None)


_compile_kept = functools.lru_cache(maxsize=_COMPILED_KEPT)(_compile)


def _compiled(source: str, path: str, autoescape: bool) -> jinja2.Template:
    """The template, compiled once per (text, path) when it is small: every
    create renders the same few templates, and compiling one costs about a
    millisecond.  A syntax error is raised each time (not kept)."""
    if len(source) <= _COMPILED_MAX_SOURCE_CHARS:
        return _compile_kept(source, path, autoescape)
    return _compile(source, path, autoescape)


def render_text(source: str, path: str, context: Mapping[str, Any]) -> str:
    """Render one template's text.

    Args:
        source: the template text.
        path: its path in the image (names it in errors; a path ending in
            .html/.htm/.xml turns autoescaping on).
        context: the variables.

    Returns:
        the rendered text.

    Raises:
        InvalidImage: syntax error, undefined variable, sandbox violation,
            any error while rendering, or output over MAX_OUTPUT_BYTES; the
            message names the file and the line.
    """
    autoescape = path.endswith((".html", ".htm", ".xml"))
    out, size = [], 0
    try:
        template = _compiled(source, path, autoescape)
        for chunk in template.generate(dict(context)):
            size += len(chunk)
            if size > MAX_OUTPUT_BYTES:
                raise InvalidImage(f"template {path}: output over {MAX_OUTPUT_BYTES} bytes")
            out.append(chunk)
    except InvalidImage:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of untrusted content
        line = _template_line(exc, path)
        where = f" line {line}" if line else ""
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise InvalidImage(f"template {path}{where}: {type(exc).__name__}: {message}") from exc
    return "".join(out)


def _read_template(layer_dir: str, parts: tuple[str, ...], path: str) -> tuple[str, os.stat_result]:
    root_fd = os.open(layer_dir, O_DIR_NOFOLLOW)
    try:
        pfd = open_dir_beneath(root_fd, parts[:-1], what=f"template {path}")
    finally:
        os.close(root_fd)
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=pfd)
    except OSError as exc:
        raise InvalidImage(f"template {path}: cannot open ({exc.strerror})") from exc
    finally:
        os.close(pfd)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise InvalidImage(f"template {path}: not a regular file")
        data = f.read(MAX_TEMPLATE_BYTES + 1)
    if len(data) > MAX_TEMPLATE_BYTES:
        raise InvalidImage(f"template {path}: larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        return data.decode("utf-8"), st
    except UnicodeDecodeError as exc:
        raise InvalidImage(f"template {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _write_beneath(root_fd: int, parts: tuple[str, ...], path: str, data: bytes,
                   st: os.stat_result) -> None:
    pfd = open_dir_beneath(root_fd, parts[:-1], what=f"template {path} destination", create=True)
    tmp = f".dcfleet-{secrets.token_hex(6)}"
    try:
        try:
            if stat.S_ISDIR(os.stat(parts[-1], dir_fd=pfd, follow_symlinks=False).st_mode):
                raise InvalidImage(f"template {path}: destination is a directory")
        except FileNotFoundError:
            pass
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            if os.geteuid() == 0:
                os.fchown(out.fileno(), st.st_uid, st.st_gid)
            os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
        # rename replaces a symlink at the destination, never writes through it
        os.rename(tmp, parts[-1], src_dir_fd=pfd, dst_dir_fd=pfd)
        tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp, dir_fd=pfd)
            except OSError:
                pass
        os.close(pfd)


#: Mode and owner of a default template's output when the image has no such file.
_DEFAULT_STAT = os.stat_result((stat.S_IFREG | 0o644, 0, 0, 1, 0, 0, 0, 0, 0, 0))


def _default_target(store, manifest: Mapping[str, Any], parts: tuple[str, ...],
                    path: str) -> os.stat_result | None:
    """Where a default template may go: its parent is a real directory of
    the image (nothing is made in an image that lacks it, and a symlinked
    directory is never shadowed) and the path itself is not a directory.

    Returns: the stat to copy mode and owner from, or None to skip it."""
    try:
        if len(parts) > 1:
            parent = store.find_file(manifest, "/" + "/".join(parts[:-1]))
            if parent is None or not stat.S_ISDIR(parent[1].st_mode):
                return None
        found = store.find_file(manifest, path)
    except InvalidImage:  # a symlink on the way
        return None
    if found is None:
        return _DEFAULT_STAT
    if stat.S_ISDIR(found[1].st_mode):
        return None
    return found[1] if stat.S_ISREG(found[1].st_mode) else _DEFAULT_STAT


def render_templates(store, manifest: Mapping[str, Any], dest_root: str,
                     context: Mapping[str, Any],
                     defaults: Mapping[str, str] | None = None) -> list[str]:
    """Render an image's templates into a container's root (or upper) dir.

    Args:
        store: the ImageStore holding the image's layers.
        manifest: the image manifest; its ``templates`` are absolute paths.
        dest_root: host directory standing for the container's "/"; parents
            are created (0755); an existing symlink at a destination is
            replaced, a symlink on the way is refused.
        context: template variables (see the module docstring).
        defaults: {absolute path: template text} rendered for each path the
            manifest does not list among its templates (an imported rootfs
            lists none), as long as the image has the path's parent as a
            real directory and the path is not a directory; the output takes
            the mode and owner of the image's file (0644 root when none).
            The agent passes images.rootfs.NETWORK_TEMPLATES, so every
            container's /etc/hostname and /etc/hosts name it.

    Returns:
        the host paths written, in manifest order.

    Raises:
        InvalidImage: a path with "..", a template missing from the layers or
            not a regular file, a symlink on the way, or a render error
            (names the file and line).
        StoreError: I/O failure reading or writing.
    """
    rendered = []  # render everything first: a bad template writes nothing
    try:
        for path in manifest.get("templates", ()):
            parts = split_path(path, what=f"template path {path!r}", absolute=True)
            if not parts:
                raise InvalidImage("template path '/': not a file")
            found = store.find_file(manifest, path)
            if found is None:
                raise InvalidImage(f"template {path}: not found in the image's layers")
            source, st = _read_template(found[0], parts, path)
            rendered.append((parts, path, render_text(source, path, context).encode("utf-8"), st))
        listed = {"/" + "/".join(p) for p, *_ in rendered}
        for path, source in (defaults or {}).items():
            parts = split_path(path, what=f"default template path {path!r}", absolute=True)
            if not parts or "/" + "/".join(parts) in listed:
                continue
            st = _default_target(store, manifest, parts, path)
            if st is not None:
                rendered.append((parts, path, render_text(source, path, context).encode("utf-8"), st))
        root_fd = os.open(dest_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for parts, path, data, st in rendered:
                _write_beneath(root_fd, parts, path, data, st)
        finally:
            os.close(root_fd)
    except OSError as exc:
        raise StoreError(f"rendering templates into {dest_root}: {exc.strerror or exc}") from exc
    return [os.path.join(dest_root, *parts) for parts, _p, _d, _s in rendered]

