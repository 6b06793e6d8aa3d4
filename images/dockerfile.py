"""Dockerfiles and build contexts, checked before any build work.

``parse(text, build_args)`` reads a Dockerfile with ``dockerfile-parse``
(its line joining, comments and escapes) and turns it into a list of
``Step`` (instruction, argument, line number), with ``$VAR``/``${VAR}``
substituted from ARG and ENV where Docker substitutes them (not in RUN,
CMD or ENTRYPOINT: the shell does that).  Supported: FROM (one stage),
RUN, COPY, ADD (local context files only; a local tar archive is
unpacked, as Docker does), ENV, ARG, WORKDIR, EXPOSE, CMD,
ENTRYPOINT, USER, LABEL, VOLUME.  Anything else, a second FROM, a flag we
do not implement (``--mount``, ``--platform``, ``--from``), ADD of a URL, or a malformed argument is refused with its line number
(``InvalidImage``, a wire ``InvalidArgument``); so is a COPY/ADD source that
leaves the context (``../x``), before any upload or container.

``context_files(root, ...)`` lists a context directory as the build sees
it: ``.dockerignore`` honoured (patterns as fnmatch globs on the path from
the context root, ``!`` re-includes, the last match wins), symlinks that
leave the context refused, the total size capped.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shlex

from dcctl import validate
from images.errors import InvalidImage

__all__ = ["Step", "Plan", "parse", "context_files", "read_dockerignore", "DEFAULT_MAX_CONTEXT_BYTES",
           "SUPPORTED"]

SUPPORTED = ("FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "EXPOSE", "CMD", "ENTRYPOINT",
             "USER", "LABEL", "VOLUME")
_MAX_DOCKERFILE_BYTES = 1 << 20
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


@dataclasses.dataclass(frozen=True)
class Step:
    """One instruction: ``line`` is 1-based; ``args`` its parsed form:
    RUN/CMD/ENTRYPOINT: argv list; COPY/ADD: {"srcs", "dest", "chown"};
    ENV/LABEL: {K: V}; EXPOSE: [{proto, port}]; VOLUME: [paths];
    FROM/WORKDIR/USER: str; ARG: {name: default or None}.  ``text`` is
    the instruction as the Dockerfile writes it (before substitution, so
    no build-arg value), an ARG by its name only: what a build's step line
    shows."""

    instruction: str
    args: object
    line: int
    text: str = dataclasses.field(default="", compare=False)


@dataclasses.dataclass
class Plan:
    """A parsed Dockerfile: the base image ref and the steps after FROM."""

    base: str
    steps: list[Step]


def _err(line: int, msg: str) -> InvalidImage:
    return InvalidImage(f"Dockerfile line {line}: {msg}")


def _subst(text: str, env: dict, line: int) -> str:
    def one(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in env and env[name] != "":
            return env[name]
        return m.group(2) or "" if m.group(1) else ""
    if "\x00" in text:
        raise _err(line, "NUL byte")
    return _VAR.sub(one, text)


def _json_list(value: str, line: int, what: str) -> list[str] | None:
    """The exec (JSON) form if ``value`` is one, else None."""
    v = value.strip()
    if not v.startswith("["):
        return None
    try:
        out = json.loads(v)
    except ValueError:
        return None  # Docker runs it as a shell command then
    if not isinstance(out, list) or not all(isinstance(a, str) for a in out):
        raise _err(line, f"{what}: the JSON form must be a list of strings")
    return out


def _words(value: str, line: int, what: str) -> list[str]:
    try:
        return shlex.split(value, posix=True)
    except ValueError as exc:
        raise _err(line, f"{what}: {exc}") from None


def _pairs(value: str, line: int, what: str) -> dict[str, str]:
    words = _words(value, line, what)
    if not words:
        raise _err(line, f"{what} needs KEY=VALUE")
    if "=" not in words[0]:  # legacy "ENV KEY value with spaces"
        rest = value.strip()[len(value.strip().split(None, 1)[0]):].strip()
        if not rest:
            raise _err(line, f"{what} {words[0]}: no value")
        return {words[0]: rest}
    out = {}
    for w in words:
        key, sep, val = w.partition("=")
        if not sep or not key:
            raise _err(line, f"{what}: {w!r} is not KEY=VALUE")
        out[key] = val
    return out


def _flags(words: list[str], line: int, what: str, allowed: tuple[str, ...]) -> tuple[dict, list[str]]:
    flags = {}
    while words and words[0].startswith("--"):
        name, _, val = words.pop(0)[2:].partition("=")
        if name not in allowed:
            raise _err(line, f"{what} --{name} is not supported")
        flags[name] = val
    return flags, words


def _chown(value: str | None, line: int) -> tuple[int, int] | None:
    if value is None:
        return None
    user, _, group = value.partition(":")
    if not user.isdigit() or (group and not group.isdigit()):
        raise _err(line, f"--chown={value}: only numeric UID[:GID] is supported")
    return int(user), int(group or user)


def _copy(instruction: str, value: str, line: int) -> dict:
    words = _json_list(value, line, instruction)
    flags: dict = {}
    if words is None:
        flags, words = _flags(_words(value, line, instruction), line, instruction, ("chown",))
    if len(words) < 2:
        raise _err(line, f"{instruction} needs at least one source and a destination")
    *srcs, dest = words
    for src in srcs:
        inside = os.path.normpath(src.lstrip("/") or ".")  # "/x" is the context's x, as Docker reads it
        if inside == ".." or inside.startswith("../"):
            raise _err(line, f"{instruction} {src}: the source leaves the build context")
        if instruction == "ADD" and re.match(r"^[a-z][a-z0-9+.-]*://|^git@", src):
            raise _err(line, f"ADD {src}: only files of the build context can be added (no URLs)")
    return {"srcs": srcs, "dest": dest, "chown": _chown(flags.get("chown"), line)}


def _ports(value: str, line: int) -> list[dict]:
    out = []
    for w in _words(value, line, "EXPOSE"):
        port, _, proto = w.partition("/")
        proto = proto or "tcp"
        if not port.isdigit() or not 1 <= int(port) <= 65535 or proto not in ("tcp", "udp"):
            raise _err(line, f"EXPOSE {w}: want PORT or PORT/tcp or PORT/udp")
        out.append({"proto": proto, "port": int(port)})
    if not out:
        raise _err(line, "EXPOSE needs a port")
    return out


def _argv(value: str, line: int, what: str) -> list[str]:
    argv = _json_list(value, line, what)
    return argv if argv is not None else ["/bin/sh", "-c", value]


def parse(text: str | bytes, build_args: dict | None = None) -> Plan:
    """Parse and check a Dockerfile.

    Args:
        text: the Dockerfile (at most 1 MiB, UTF-8).
        build_args: {NAME: value} for its ARGs (an ARG the file does not
            declare is refused, as ``docker build`` warns).

    Returns:
        a Plan (base ref, steps after FROM, each with its 1-based line).

    Raises:
        InvalidImage: an unsupported or malformed instruction (the message
            names its line), no FROM, several FROMs, an unknown build arg.
    """
    from dockerfile_parse import DockerfileParser  # the well-kept parser (PyPI: dockerfile-parse)

    if isinstance(text, str):
        text = text.encode("utf-8")
    if len(text) > _MAX_DOCKERFILE_BYTES:
        raise InvalidImage(f"Dockerfile is over {_MAX_DOCKERFILE_BYTES} bytes")
    try:
        text.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidImage(f"Dockerfile is not UTF-8: {exc}") from None
    build_args = dict(build_args or {})
    for k, v in build_args.items():
        if not validate.is_env_key(k) or not isinstance(v, str):
            raise InvalidImage(f"build arg {k!r}: want NAME=text")
    parser = DockerfileParser(fileobj=io.BytesIO(text), env_replace=False)
    env: dict[str, str] = {}  # what substitution sees: ARGs then ENVs
    declared: set[str] = set()
    base, steps = None, []
    for item in parser.structure:
        ins, value, line = item["instruction"].upper(), item["value"], item["startline"] + 1
        if ins == "COMMENT":
            continue
        if ins not in SUPPORTED:
            raise _err(line, f"{ins} is not supported (supported: {', '.join(SUPPORTED)})")
        if not value.strip():
            raise _err(line, f"{ins} needs an argument")
        shown = f"{ins} {value.strip()}"
        if ins == "ARG":
            name, sep, default = value.strip().partition("=")
            if not validate.is_env_key(name):
                raise _err(line, f"ARG {name!r}: not a variable name")
            declared.add(name)
            got = build_args.get(name, default if sep else None)
            if got is not None:
                env.setdefault(name, got)
            if base is not None:
                steps.append(Step("ARG", {name: got}, line, f"ARG {name}"))
            continue
        if base is None and ins != "FROM":
            raise _err(line, f"{ins} before FROM")
        if ins == "FROM":
            if base is not None:
                raise _err(line, "a second FROM: multi-stage builds are not supported")
            words = _words(_subst(value, env, line), line, "FROM")
            if words and words[0].startswith("--"):
                raise _err(line, f"FROM {words[0]} is not supported")
            if len(words) == 3 and words[1].upper() == "AS":
                words = words[:1]
            if len(words) != 1:
                raise _err(line, "FROM takes one image ref (and optionally AS NAME)")
            base = words[0]
            continue
        if ins == "RUN":
            words = _words(value, line, "RUN") if not value.lstrip().startswith("[") else []
            if words and words[0].startswith("--"):
                raise _err(line, f"RUN {words[0]} is not supported")
            steps.append(Step("RUN", _argv(value, line, "RUN"), line, shown))
        elif ins in ("CMD", "ENTRYPOINT"):
            steps.append(Step(ins, _argv(value, line, ins), line, shown))
        elif ins in ("COPY", "ADD"):
            steps.append(Step(ins, _copy(ins, _subst(value, env, line), line), line, shown))
        elif ins in ("ENV", "LABEL"):
            pairs = _pairs(_subst(value, env, line), line, ins)
            if ins == "ENV":
                for k in pairs:
                    if not validate.is_env_key(k):
                        raise _err(line, f"ENV {k!r}: not a variable name")
                env.update(pairs)
            steps.append(Step(ins, pairs, line, shown))
        elif ins == "EXPOSE":
            steps.append(Step(ins, _ports(_subst(value, env, line), line), line, shown))
        elif ins == "VOLUME":
            v = _subst(value, env, line)
            paths = _json_list(v, line, "VOLUME") or _words(v, line, "VOLUME")
            for p in paths:
                if not p.startswith("/"):
                    raise _err(line, f"VOLUME {p!r}: want an absolute path")
            steps.append(Step(ins, paths, line, shown))
        elif ins in ("WORKDIR", "USER"):
            v = _subst(value, env, line).strip()
            if ins == "USER" and not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]*)?$", v):
                raise _err(line, f"USER {v!r}: want USER or USER:GROUP")
            steps.append(Step(ins, v, line, shown))
    if base is None:
        raise InvalidImage("Dockerfile has no FROM")
    unknown = sorted(set(build_args) - declared)
    if unknown:
        raise InvalidImage(f"build arg(s) {', '.join(unknown)} not declared by an ARG in the Dockerfile")
    return Plan(base=base, steps=steps)


# ------------------------------------------------------------ contexts
# (one implementation, shared with dcctl build, which packs the context)
from dcctl.buildctx import DEFAULT_MAX_CONTEXT_BYTES, context_files, read_dockerignore  # noqa: E402,F401
