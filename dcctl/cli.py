"""dcctl: the operator's command line for dcfleet agents and the hub.

    dcctl [-H|--host ENDPOINT] [--json|--wide] [--filter KEY=VALUE] [--timeout SECONDS]
          METHOD [ARGS...] [--KEY VALUE...]
    dcctl [methods]                  list the server's methods (first doc line)
    dcctl help METHOD | dcctl METHOD --help
    dcctl call ENDPOINT [METHOD [ARGS...]] [-j|--json] [-pj|--print-json] [--timeout S]
                    (the stock zerorpc CLI's syntax: string or -j JSON args, pprint or -pj JSON)

ENDPOINT is ``ipc:///path`` or ``tcp://host:port``; default ``$DCCTL_HOST``,
else ipc:///run/dcfleet/agent.sock.  Global options may stand before or after
METHOD; everything after ``--`` is a positional word.

Arguments are converted with the server's ``_zerorpc_inspect`` answer:

- positional words fill the method's parameters in order, by type: ``int``,
  ``float``, ``bool`` (true/false/yes/no/on/off/1/0), ``str``; a parameter
  whose type includes ``None`` takes the words ``none``/``null`` as None; an
  int parameter whose name ends in ``_bytes`` accepts sizes like ``512M``;
- a ``list`` parameter (e.g. ``list | str``) takes ALL remaining words as a
  list of strings: ``dcctl container_exec web -- ls -l``;
- the options parameter (typed ``dict``, last) collects ``--key value`` (or
  ``--key=value``) flags: dashes become underscores; a value that parses as a
  JSON number, bool, list or object is sent as such, anything else as a
  string; keys ending in ``_bytes`` take K/M/G/T suffixes (powers of 1024); a
  repeated key becomes a list; ``--env A=B`` builds a dict; ``--options-json
  '{...}'`` gives a base dict that the flags then update.  Flags always need a
  value (``--privileged true``).  The names host, json, wide, filter, timeout,
  help and options-json are dcctl's own; pass such keys with --options-json.

Output: see dcctl.output (tables, ``key: value`` lines, exec passthrough with
the command's exit code; ``--json`` prints JSON and exits 0 on success).
Listings (container_ls, hosts, image_ls, network_ls, hostinfo, events,
broadcast) show a default view that fits 100 columns; ``--wide`` shows every
column; ``--filter KEY=VALUE`` (repeatable; same key OR, different keys AND)
keeps the matching rows, in the tables and in ``--json``.
``container_enter`` hands the terminal to dcctl.enter.  The call timeout is
--timeout, else an options ``timeout_s`` + 30 s, else 30 s (330 s for
container_exec).

Exit codes: 0 ok; 1 a typed error from the server; 2 a usage error; 3 the
call timed out or the server is unreachable; an exec's own code for
container_exec-shaped results.  Errors print ``dcctl: Name: message`` (and a
``hint:`` line) on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import pprint
import re
import sys
from typing import Any, Callable, Mapping

import zmq

from dcctl import auth, errors, output, upload, wire

DEFAULT_ENDPOINT = "ipc:///run/dcfleet/agent.sock"
HOST_ENV = "DCCTL_HOST"
KEY_ENV = "DCCTL_KEY"  # our key pair (.key_secret) for tcp:// endpoints
SERVER_KEY_ENV = "DCCTL_SERVER_KEY"  # the server's public key (file or Z85)
CONFIG_DIR_ENV = "DCCTL_CONFIG_DIR"  # default ~/.config/dcfleet
#: Call timeouts for methods that run longer than the default by design
#: (container_exec's own default timeout_s is 300 s).  --timeout wins.
METHOD_TIMEOUT_SECONDS = {"container_exec": 330.0, "image_build": 1800.0, "image_pull": 600.0,
                          "image_push": 600.0, "create_container": 660.0, "image_import": 600.0}
#: Extra seconds to wait beyond an options ``timeout_s`` the server honours.
TIMEOUT_MARGIN_SECONDS = 30.0
TRUE_WORDS = {"true", "yes", "on", "1"}
FALSE_WORDS = {"false", "no", "off", "0"}
_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT])(?:I?B)?$", re.IGNORECASE)
_NUMBER_RE = re.compile(r"^-\.?\d")
#: Option keys whose KEY=VALUE flags build a map (--env A=1 --env B=2).
MAP_OPTIONS = ("env", "label")
#: Hub fan-out methods: dcctl's --timeout is also their per-host deadline
#: (options timeout_s), and the call waits that long plus a margin.
DEADLINE_METHODS = ("broadcast", "queue")
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


def _timeout(text: str) -> float:
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
    while i < len(argv):
        tok = argv[i]
        i += 1
        if tok == "--":
            cmd.words.extend(argv[i:])
            break
        name, eq, inline = tok.partition("=") if tok.startswith("--") else (tok, "", "")
        # --host before METHOD is the endpoint (-H); after it, the method's
        # own option (create_container ... --host H pins a host)
        if name in ("-H", "--timeout", "--key", "--server-key", "--filter") or (
                name.startswith("--") and len(name) > 2 and name not in ("--json", "--wide", "--help")):
            if not eq:
                if i >= len(argv) or argv[i].startswith("--"):
                    if name in ("-H", "--host", "--timeout", "--key", "--server-key", "--filter"):
                        raise UsageError(f"option {name} needs a value", hint=f"write {name} VALUE")
                    inline = "true"  # a bare flag (--no-start) at the end or before another flag
                else:
                    inline, i = argv[i], i + 1
            if name == "-H" or (name == "--host" and not cmd.words):
                cmd.endpoint = inline
            elif name == "--timeout":
                cmd.timeout_s = _timeout(inline)
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

@dataclasses.dataclass
class Param:
    """One parameter from ``_zerorpc_inspect``."""

    name: str
    types: tuple[str, ...]
    has_default: bool
    default: Any = None
    var: bool = False  # *args

    @property
    def is_list(self) -> bool:
        return not self.var and any(t in ("list", "tuple") for t in self.types)

    @property
    def takes_none(self) -> bool:
        return "None" in self.types or (self.has_default and self.default is None)


def params_of(info: dict) -> list[Param]:
    """Params of a method's inspect entry ({args: [{name, type, default?}]})."""
    out = []
    for arg in info.get("args") or []:
        name = arg["name"]
        types = tuple(t.strip() for t in str(arg.get("type", "any")).split("|"))
        out.append(Param(name.lstrip("*"), types, "default" in arg, arg.get("default"),
                         var=name.startswith("*")))
    return out


def options_index(params: list[Param]) -> int | None:
    """Index of the options-dict parameter (the last one, typed dict), if any."""
    if params and not params[-1].var and "dict" in params[-1].types:
        return len(params) - 1
    return None


def parse_size(text: str) -> int | None:
    """``512M`` -> 536870912 (K/M/G/T are powers of 1024); None if no suffix."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        return None
    return int(float(m.group(1)) * 1024 ** ("KMGT".index(m.group(2).upper()) + 1))


def _json_value(text: str) -> Any:
    """JSON number/bool/list/object parsed from text, else the text itself."""
    try:
        value = json.loads(text, parse_constant=lambda c: text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool, list, dict)) else text


def convert_word(method: str, param: Param, word: str) -> Any:
    """Convert one positional word for ``param`` (see the module doc).

    Raises:
        UsageError: the word fits none of the parameter's types.
    """
    types = param.types
    if param.takes_none and word.lower() in ("none", "null"):
        return None
    if "int" in types:
        size = parse_size(word) if param.name.endswith("_bytes") else None
        if size is not None:
            return size
        try:
            return int(word, 10)
        except ValueError:
            pass
    if "float" in types:
        try:
            value = float(word)
            if math.isfinite(value):
                return value
        except ValueError:
            pass
    if "bool" in types and word.lower() in TRUE_WORDS | FALSE_WORDS:
        return word.lower() in TRUE_WORDS
    for kind, cls in (("dict", dict), ("list", list)):
        if kind in types and isinstance(_json_value(word), cls):
            return _json_value(word)
    if "any" in types:
        return _json_value(word)
    if "str" in types or not set(types) & {"int", "float", "bool", "dict", "list", "None"}:
        return word
    raise UsageError(f"{method}: argument {param.name!r} must be {' | '.join(types)}, got {word!r}",
                     hint=f"dcctl help {method}")


def build_options(method: str, flags: list[tuple[str, str]]) -> dict:
    """The options dict from ``--key value`` flags (see the module doc)."""
    options: dict[str, Any] = {}
    seen: set[str] = set()  # keys given as flags (not by --options-json)
    repeated: set[str] = set()
    for raw_key, text in flags:
        if raw_key == "options-json":
            base = _json_value(text)
            if not isinstance(base, dict):
                raise UsageError(f"--options-json wants a JSON object, got {text!r}")
            options.update(base)
            continue
        key = raw_key.replace("-", "_")
        if key == "env" or (key in MAP_OPTIONS and "=" in text):
            parsed = _json_value(text)
            if not isinstance(parsed, dict):
                name, eq, val = text.partition("=")
                if not eq or not name:
                    raise UsageError(f"{method}: --{raw_key} wants NAME=VALUE, got {text!r}")
                parsed = {name: val}
            options.setdefault(key, {}).update(parsed)
            continue
        size = parse_size(text) if key.endswith("_bytes") else None
        value = size if size is not None else _json_value(text)
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
    for p in leading:
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


# ------------------------------------------------------------ server access

def fetch_inspect(client: wire.RpcClient) -> dict:
    """The server's ``_zerorpc_inspect`` answer; for servers that cannot
    answer it, methods from ``_zerorpc_list`` with no argument types."""
    try:
        return client.call("_zerorpc_inspect")
    except (errors.CallTimeout, errors.Unreachable):
        raise
    except errors.DcError:
        names = client.call("_zerorpc_list")
        return {"name": "N/A", "methods": {n: {"args": None, "doc": client.call("_zerorpc_help", n)}
                                          for n in names}}


def _print_methods(schema: dict, suffix: str = "") -> int:
    print(f"[{schema.get('name', 'N/A')}]{suffix}")
    docs = {m: i.get("doc") for m, i in (schema.get("methods") or {}).items()}
    print("\n".join(output.method_list_lines(docs)))
    return 0


def config_dir(environ: Mapping[str, str] | None = None) -> str:
    """Where dcctl keeps its key pair and known server keys."""
    environ = os.environ if environ is None else environ
    return environ.get(CONFIG_DIR_ENV) or os.path.join(os.path.expanduser("~"), ".config", "dcfleet")


def known_server_key_path(endpoint: str, environ: Mapping[str, str] | None = None) -> str:
    """CONFIG_DIR/servers/HOST_PORT.key: the known public key of a tcp://
    server (like ssh's known_hosts; ops/fleet writes these)."""
    hostport = endpoint[len("tcp://"):].replace(":", "_").replace("[", "").replace("]", "")
    return os.path.join(config_dir(environ), "servers", f"{hostport}.key")


def client_keys(endpoint: str, key: str | None, server_key: str | None,
                environ: Mapping[str, str] | None = None) -> auth.ClientKeys | None:
    """The CURVE keys for ``endpoint``: --key / $DCCTL_KEY or
    CONFIG_DIR/dcctl.key_secret, and --server-key / $DCCTL_SERVER_KEY or the
    known key of that endpoint.  None for ipc:// endpoints, or when no key
    pair exists (the server then says it requires CURVE)."""
    if not endpoint.startswith("tcp://"):
        return None
    key = key or os.path.join(config_dir(environ), "dcctl.key_secret")
    server_key = server_key or known_server_key_path(endpoint, environ)
    if not os.path.exists(key):
        return None
    if not os.path.exists(server_key) and len(server_key) != 40:
        raise UsageError(f"no known server key for {endpoint}",
                         hint=f"give --server-key FILE|Z85 or ${SERVER_KEY_ENV}, or write it to {server_key}")
    try:
        return auth.ClientKeys.from_files(key, server_key)
    except errors.InvalidArgument as exc:
        raise UsageError(exc.message) from exc


def _connect(endpoint: str, timeout_s: float, key: str | None = None,
             server_key: str | None = None) -> wire.RpcClient:
    try:
        wire.validate_endpoint(endpoint)
    except errors.InvalidArgument as exc:
        raise UsageError(exc.message, hint=f"use -H or ${HOST_ENV}") from exc
    return wire.connect(endpoint, timeout_s=timeout_s, keys=client_keys(endpoint, key, server_key))


def run_keygen(argv: list[str]) -> int:
    """``dcctl keygen [NAME] [--dir DIR]``: a new CURVE key pair
    (default CONFIG_DIR/dcctl.key and .key_secret, mode 0600); prints the
    public key to give to servers (their KEYS_DIR/clients/ROLE/)."""
    p = argparse.ArgumentParser(prog="dcctl keygen")
    p.add_argument("name", nargs="?", default="dcctl")
    p.add_argument("--dir", default=None)
    ns = p.parse_args(argv)
    public_file, secret_file = auth.keygen(ns.dir or config_dir(), ns.name)
    print(f"public key: {auth.load_public(public_file).decode()}")
    print(f"key pair:   {secret_file}")
    print(f"give {public_file} to each server: KEYS_DIR/clients/admin/ (or read/)")
    return 0


def _enter(client: wire.RpcClient, args: list, options: dict) -> int | None:
    """container_enter: hand the terminal to dcctl.enter (None: not there)."""
    try:
        enter = importlib.import_module("dcctl.enter")
    except ModuleNotFoundError as exc:
        if exc.name != "dcctl.enter":
            raise
        return None
    return enter.run(client, args[0], args[1] if len(args) > 1 else None) or 0


def _push(client: wire.RpcClient, args: list, options: dict) -> int | None:
    """image_push FILE NAME[:TAG] with a local file: upload it with progress
    (dcctl.upload); None for the hub's image_push HOST REF."""
    if len(args) != 2 or not all(isinstance(a, str) for a in args) or not upload.looks_local(args[0]):
        return None
    result = upload.push_file(
        lambda method, *a, timeout_s=120.0: client.call(method, *a, timeout_s=timeout_s), args[0], args[1])
    return output.render(result)


#: Methods that take over the terminal: handler(client, args, options) gets
#: the converted positional args and options and returns the exit code, or
#: None to fall back to a plain call.
INTERACTIVE_HANDLERS: dict[str, Callable[[wire.RpcClient, list, dict], int | None]] = {
    "container_enter": _enter,
    "image_push": _push,
}


def call_timeout(cmd: Command, options: dict | None) -> float:
    """--timeout, else the options' timeout_s plus a margin, else the method's default."""
    if cmd.timeout_s is not None:
        if cmd.method in DEADLINE_METHODS:
            return cmd.timeout_s + TIMEOUT_MARGIN_SECONDS
        return cmd.timeout_s
    base = METHOD_TIMEOUT_SECONDS.get(cmd.method or "", wire.DEFAULT_TIMEOUT_SECONDS)
    own = (options or {}).get("timeout_s")
    if isinstance(own, (int, float)) and not isinstance(own, bool) and own > 0:
        return max(base, own + TIMEOUT_MARGIN_SECONDS)
    return base


def run_method(cmd: Command) -> int:
    """Run ``dcctl METHOD ...`` (or list/help) against cmd.endpoint."""
    filters = _filters(cmd.method, cmd.filters) if cmd.method not in (None, "methods", "help") else {}
    with _connect(cmd.endpoint, cmd.timeout_s or wire.DEFAULT_TIMEOUT_SECONDS, cmd.key, cmd.server_key) as client:
        schema = fetch_inspect(client)
        methods = schema.get("methods") or {}
        if cmd.method in (None, "methods"):
            return _print_methods(schema, f" {cmd.endpoint}")
        if cmd.method == "help":
            cmd.method, cmd.help = cmd.words[0], True
        info = methods.get(cmd.method)
        if cmd.help:
            if info is None:
                client.call("_zerorpc_help", cmd.method)  # the server's NoSuchMethod
                raise errors.NoSuchMethod(f"no method {cmd.method!r}")
            sys.stdout.write(method_help(cmd.method, info))
            return 0
        if cmd.method in DEADLINE_METHODS and cmd.timeout_s is not None:
            cmd.flags.append(("timeout-s", repr(cmd.timeout_s)))
        if info is None or info.get("args") is None:  # unknown: let the server say so
            args, options, wire_args = list(cmd.words), None, list(cmd.words)
            if cmd.flags:
                wire_args.append(build_options(cmd.method, cmd.flags))
        else:
            args, options, wire_args = build_call(cmd.method, params_of(info), cmd.words, cmd.flags)
        try:  # the packing boundary: every integer, positional or option
            wire.check_wire_ints(wire_args, f"{cmd.method}:")
        except errors.InvalidArgument as exc:
            raise UsageError(exc.message, hint=exc.hint, name="InvalidArgument") from exc
        wire_args = upload.absolute_paths(cmd.method, cmd.endpoint, wire_args)
        handler = INTERACTIVE_HANDLERS.get(cmd.method)
        if handler is not None:
            code = handler(client, args, options or {})
            if code is not None:
                return code
        result = client.call(cmd.method, *wire_args, timeout_s=call_timeout(cmd, options))
        try:
            result = output.filter_result(cmd.method, result, filters)
        except output.FilterError as exc:
            raise UsageError(str(exc)) from exc
        if cmd.json:
            return output.render_json(result)
        return output.render(result, method=cmd.method, wide=cmd.wide)


def _filters(method: str | None, specs: list[str]) -> dict[str, list[str]]:
    """--filter specs checked before any call (see dcctl.output.parse_filters)."""
    try:
        return output.parse_filters(method, specs)
    except output.FilterError as exc:
        raise UsageError(str(exc), hint=f"dcctl --filter KEY=VALUE {method or 'METHOD'}") from exc


# ------------------------------------------------------------ dcctl call

class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message, hint=f"{self.prog} --help")


def call_parser() -> argparse.ArgumentParser:
    """The parser of ``dcctl call`` (the stock ``zerorpc`` CLI's syntax)."""
    p = _Parser(prog="dcctl call", description="Ad hoc call with the stock zerorpc CLI's syntax: "
                "arguments go as strings as typed (JSON with --json); no METHOD lists the methods.")
    p.add_argument("endpoint", help="ipc:///path or tcp://host:port")
    p.add_argument("method", nargs="?", help="remote method; none lists the methods")
    p.add_argument("params", nargs="*", help="arguments (strings, or JSON with --json)")
    p.add_argument("-j", "--json", action="store_true", help="parse each argument as JSON")
    p.add_argument("-pj", "--print-json", action="store_true", help="print the result as JSON")
    p.add_argument("--timeout", type=_timeout, default=wire.DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS")
    p.add_argument("--key", default=os.environ.get(KEY_ENV), help="our CURVE key pair (.key_secret)")
    p.add_argument("--server-key", default=os.environ.get(SERVER_KEY_ENV), help="the server's public key")
    return p


def run_call(argv: list[str]) -> int:
    """``dcctl call ENDPOINT [METHOD [ARGS...]]``: like ``zerorpc ENDPOINT ...``."""
    try:
        ns = call_parser().parse_args(argv)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    params: list[Any] = list(ns.params)
    if ns.json:
        try:
            params = [json.loads(p) for p in params]
        except ValueError as exc:
            raise UsageError(f"--json: argument is not JSON: {exc}") from exc
    with _connect(ns.endpoint, ns.timeout, ns.key, ns.server_key) as client:
        if ns.method is None:
            return _print_methods(fetch_inspect(client))
        result = client.call(ns.method, *params)
        items = result if output.is_stream(result) else [result]
        for item in items:
            if ns.print_json:  # json.dumps' default separators, as the stock CLI prints
                print(json.dumps(output.to_jsonable(item), ensure_ascii=False))
            else:
                pprint.pprint(item)
    return 0


# ------------------------------------------------------------ entry points

def _report(name: str, message: str, hint: str | None) -> None:
    print(f"dcctl: {name}: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def run(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run dcctl with ``argv`` (default sys.argv[1:]); returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    try:
        if argv[:1] == ["call"]:
            return run_call(argv[1:])
        if argv[:1] == ["keygen"]:
            return run_keygen(argv[1:])
        cmd = split_argv(argv, environ)
        if (cmd.help and cmd.method is None) or (cmd.method == "help" and not cmd.words):
            print(__doc__.strip().replace("``", ""))
            return 0
        return run_method(cmd)
    except UsageError as exc:
        _report(exc.name, str(exc), exc.hint)
        return 2
    except errors.DcError as exc:
        _report(type(exc).__name__, exc.message, exc.hint)
        return 3 if isinstance(exc, (errors.CallTimeout, errors.Unreachable)) else 1
    except zmq.ZMQError as exc:  # zmq refused the endpoint (e.g. tcp://*:PORT, a bind address)
        _report("Unreachable", str(exc), None)
        return 3
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``sys.exit(run(argv))``."""
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
