"""dcctl's command line: splitting argv (global options, METHOD, words,
``--key value`` flags) and converting words to a method's arguments from
the server's ``_zerorpc_inspect`` answer; usage and help text.

Nothing here talks to a server (see dcctl.cli.commands).  Words become
typed values by the wire's one coercion (dcctl.wire.coerce); the rules are
in dcctl.cli's module doc.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

from dcctl import errors, output
from dcctl.wire.clientconfig import DEFAULT_ENDPOINT, HOST_ENV, KEY_ENV, SERVER_KEY_ENV
from dcctl.wire.coerce import Param, coerce_text, json_value, params_of, parse_size

__all__ = ["UsageError", "Command", "parse_timeout", "split_argv", "Param", "params_of", "options_index",
           "parse_size", "convert_word", "build_options", "build_call", "usage", "method_help",
           "MAP_OPTIONS", "LITERAL_AFTER_WORDS"]

_NUMBER_RE = re.compile(r"^-\.?\d")
#: Option keys whose KEY=VALUE flags build a map (--env A=1 --env B=2).
MAP_OPTIONS = ("env", "label")
#: Methods whose trailing words are a command (docker exec style): once this
#: many words follow the method name, the rest is taken literally, dashes and
#: all (``dcctl container_exec web sh -c 'exit 4'``); dcctl's options go before.
LITERAL_AFTER_WORDS = {"container_exec": 2, "container_enter": 2}


class UsageError(Exception):
    """The command line is wrong; dcctl exits 2.  ``name`` is what the
    error line calls it (UsageError, or InvalidArgument for a value the
    wire cannot carry)."""

    def __init__(self, message: str, hint: str | None = None, name: str = "UsageError"):
        super().__init__(message)
        self.hint = hint
        self.name = name


@dataclasses.dataclass
class Command:
    """A split command line (before any server is asked)."""

    endpoint: str
    key: str | None = None  # our key pair file (.key_secret)
    server_key: str | None = None  # the server's public key (file or Z85)
    json: bool = False
    wide: bool = False  # every column of a listing, uncut
    filters: list[str] = dataclasses.field(default_factory=list)  # --filter KEY=VALUE specs
    timeout_s: float | None = None  # None: the default for the method
    help: bool = False
    method: str | None = None
    words: list[str] = dataclasses.field(default_factory=list)
    flags: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def parse_timeout(text: str) -> float:
    """--timeout's value: a finite number of seconds > 0.  Raises: UsageError."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--timeout wants a positive number of seconds, got {text!r}")
    return value


def split_argv(argv: list[str], environ: Mapping[str, str]) -> Command:
    """Split dcctl's argv into global options, METHOD, words and --key flags.

    Raises:
        UsageError: an option without its value, or an unknown short option.
    """
    cmd = Command(endpoint=environ.get(HOST_ENV) or DEFAULT_ENDPOINT, key=environ.get(KEY_ENV),
                  server_key=environ.get(SERVER_KEY_ENV))
    i = 0
    endpoint_given: str | None = None  # the option that gave the endpoint on the command line
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            cmd.words.extend(argv[i:])
            break
        name, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        # --host (or --hub) before METHOD is the endpoint (-H; A,B,... for
        # several hubs); after it, the method's own option (create_container
        # ... --host H pins a host)
        if name in ("-H", "--timeout", "--key", "--server-key", "--filter") or (
                name.startswith("--") and len(name) > 2 and name not in ("--json", "--wide", "--help")):
            if not eq:
                if i >= len(argv) or argv[i].startswith("--"):
                    if name in ("-H", "--host", "--hub", "--timeout", "--key", "--server-key", "--filter"):
                        raise UsageError(f"option {name} needs a value", hint=f"write {name} VALUE")
                    inline = "true"  # a bare flag (--no-start) at the end or before another flag
                else:
                    inline, i = argv[i], i + 1
            if name == "-H" or (name in ("--host", "--hub") and not cmd.words):
                if endpoint_given is not None:  # a second one silently winning would hide a typo
                    raise UsageError(f"the endpoint is given twice ({endpoint_given} {cmd.endpoint}, {name} {inline})",
                                     hint="give one -H/--hub; several hubs go in one value: -H A,B")
                cmd.endpoint, endpoint_given = inline, name
            elif name == "--timeout":
                cmd.timeout_s = parse_timeout(inline)
            elif name == "--key":
                cmd.key = inline
            elif name == "--server-key":
                cmd.server_key = inline
            elif name == "--filter":
                cmd.filters.append(inline)
            else:
                cmd.flags.append((name[2:], inline))
        elif tok == "--json":
            cmd.json = True
        elif tok == "--wide":
            cmd.wide = True
        elif tok in ("-h", "--help"):
            cmd.help = True
        elif tok == "-t" and cmd.words[:1] == ["build"]:  # dcctl build CONTEXT -t NAME, as docker's
            if i >= len(argv):
                raise UsageError("option -t needs a value", hint="dcctl build CONTEXT -t NAME[:TAG]")
            cmd.flags.append(("t", argv[i]))
            i += 1
        elif tok.startswith("-") and len(tok) > 1 and not _NUMBER_RE.match(tok):
            raise UsageError(f"unknown option {tok}",
                             hint="put -- before words that start with - (dcctl METHOD ARGS -- CMD -x)")
        else:
            cmd.words.append(tok)
            literal = LITERAL_AFTER_WORDS.get(cmd.words[0])
            if literal is not None and len(cmd.words) == literal + 1:
                cmd.words.extend(argv[i:])
                break
    if cmd.words:
        cmd.method = cmd.words.pop(0)
    return cmd


# ------------------------------------------------------------ conversion

def options_index(params: list[Param]) -> int | None:
    """Index of the options-dict parameter (the last one, typed dict), if any."""
    if params and not params[-1].var and "dict" in params[-1].types:
        return len(params) - 1
    return None


def convert_word(method: str, param: Param, word: str) -> Any:
    """Convert one positional word for ``param`` by the wire's one
    coercion (dcctl.wire.coerce: the rules in its module doc).

    Raises:
        UsageError: the word fits none of the parameter's types.
    """
    try:
        return coerce_text(word, param)
    except errors.InvalidArgument as exc:
        raise UsageError(f"{method}: {exc.message}", hint=f"dcctl help {method}") from exc


def build_options(method: str, flags: list[tuple[str, str]]) -> dict:
    """The options dict from ``--key value`` flags (see the module doc)."""
    options: dict[str, Any] = {}
    seen: set[str] = set()  # keys given as flags (not by --options-json)
    repeated: set[str] = set()
    for raw_key, text in flags:
        if raw_key == "options-json":
            base = json_value(text)
            if not isinstance(base, dict):
                raise UsageError(f"--options-json wants a JSON object, got {text!r}")
            options.update(base)
            continue
        key = raw_key.replace("-", "_")
        if key == "env" or (key in MAP_OPTIONS and "=" in text):
            parsed = json_value(text)
            if not isinstance(parsed, dict):
                name, eq, val = text.partition("=")
                if not eq or not name:
                    raise UsageError(f"{method}: --{raw_key} wants NAME=VALUE, got {text!r}")
                parsed = {name: val}
            options.setdefault(key, {}).update(parsed)
            continue
        size = parse_size(text) if key.endswith("_bytes") else None
        value = size if size is not None else json_value(text)
        if key in repeated:
            options[key].append(value)
        elif key in seen:
            options[key] = [options[key], value]
            repeated.add(key)
        else:
            options[key] = value
        seen.add(key)
    return options


def build_call(method: str, params: list[Param], words: list[str],
               flags: list[tuple[str, str]]) -> tuple[list, dict | None, list]:
    """Convert words and flags for ``method``.

    Returns: (positional values, options dict or None, the full wire args).
    Raises: UsageError for missing/extra arguments or options it cannot take.
    """
    opt_i = options_index(params)
    leading = params if opt_i is None else params[:opt_i]
    values: list[Any] = []
    words = list(words)
    named: dict[str, str] = {}
    if opt_i is None and flags:  # no options map: --NAME [VALUE] gives the parameter NAME
        by_name = {p.name: p for p in leading if not p.var and not p.is_list}
        for raw_key, text in flags:
            key = raw_key.replace("-", "_")
            if key not in by_name or key in named:
                break
            named[key] = text
        else:
            flags = []
    for p in leading:
        if p.name in named:
            break
        if not words:
            break
        if p.is_list:
            values.append(list(words))
            words = []
        elif p.var:
            values.extend(convert_word(method, p, w) for w in words)
            words = []
        else:
            values.append(convert_word(method, p, words.pop(0)))
    if words:
        raise UsageError(f"{method}: too many arguments: {' '.join(words)}", hint=f"dcctl help {method}")
    if named:
        for p in leading[len(values):]:
            if p.name in named:
                values.append(convert_word(method, p, named.pop(p.name)))
            elif p.has_default and named:
                values.append(p.default)
            else:
                break
        if named:
            raise UsageError(f"{method}: --{next(iter(named)).replace('_', '-')} given twice or before a "
                             "missing argument", hint=f"usage: {usage(method, params)}")
    missing = [p.name for p in leading[len(values):] if not p.has_default and not p.var]
    if missing:
        raise UsageError(f"{method}: missing argument {missing[0]!r}", hint=f"usage: {usage(method, params)}")
    if flags and opt_i is None:
        raise UsageError(f"{method} takes no --options", hint=f"usage: {usage(method, params)}")
    options = build_options(method, flags) if flags or (opt_i is not None and not params[opt_i].has_default) else None
    wire_args = list(values)
    if options is not None:
        wire_args += [p.default for p in leading[len(values):]] + [options]
    return values, options, wire_args


# ------------------------------------------------------------ help

def usage(method: str, params: list[Param]) -> str:
    """One usage line for ``method``."""
    parts = []
    for i, p in enumerate(params):
        if i == options_index(params):
            parts.append("[--OPTION VALUE ...]")
            continue
        word = p.name.upper() + ("..." if p.is_list or p.var else "")
        parts.append(f"[{word}]" if p.has_default or p.var else word)
    return " ".join(["dcctl", method, *parts])


def method_help(method: str, info: dict) -> str:
    """Usage, parameter list and docstring of one method."""
    params = params_of(info)
    rows = []
    for i, p in enumerate(params):
        note = " = " + output.dumps(p.default, indent=None) if p.has_default else ""
        if i == options_index(params):
            note += "  (--key value flags, or --options-json '{...}')"
        elif p.is_list or p.var:
            note += "  (all remaining words; -- before words starting with -)"
        rows.append((p.name, " | ".join(p.types), note))
    return output.help_text(usage(method, params), rows, info.get("doc") or "")
