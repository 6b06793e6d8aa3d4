"""dcctl's commands: ``dcctl METHOD ...`` (with the server's inspect
answer: list, help, convert, call, render), ``dcctl call`` (the stock
zerorpc CLI's syntax) and ``dcctl keygen``; the call timeouts and the
handlers of methods that take over the terminal.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pprint
import sys
from typing import Any, Callable, Mapping

from dcctl import auth, errors, output, upload, wire
from dcctl import build as dcbuild
from dcctl.cli.args import (Command, UsageError, build_call, build_options, method_help, params_of,
                            parse_timeout)
from dcctl.cli import progress
from dcctl.cli.events import run_events
from dcctl.wire import clientconfig, failover
from dcctl.wire.refs import parse_ref

__all__ = ["METHOD_TIMEOUT_SECONDS", "TIMEOUT_MARGIN_SECONDS", "DEADLINE_METHODS", "INTERACTIVE_HANDLERS",
           "fetch_inspect", "client_keys", "run_keygen", "call_timeout", "run_method", "call_parser", "run_call"]

#: Call timeouts for methods that run longer than the default by design
#: (container_exec's own default timeout_s is 300 s).  --timeout wins.
METHOD_TIMEOUT_SECONDS = {"container_exec": 330.0, "image_build": 1800.0, "image_pull": 600.0,
                          "image_push": 600.0, "create_container": 660.0, "image_import": 600.0,
                          "deploy": 3600.0, "rollback": 3600.0, "app_rm": 600.0}
#: Extra seconds to wait beyond an options ``timeout_s`` the server honours.
TIMEOUT_MARGIN_SECONDS = 30.0
#: Hub fan-out methods: dcctl's --timeout is also their per-host deadline
#: (options timeout_s), and the call waits that long plus a margin.
DEADLINE_METHODS = ("broadcast", "queue")


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


def client_keys(endpoint: str, key: str | None, server_key: str | None,
                environ: Mapping[str, str] | None = None) -> auth.ClientKeys | None:
    """The CURVE keys for ``endpoint`` (dcctl.wire.clientconfig.client_keys:
    --key / $DCCTL_KEY or CONFIG_DIR/dcctl.key_secret, and --server-key /
    $DCCTL_SERVER_KEY or the endpoint's known key); None for ipc:// and when
    no key pair exists.  Raises: UsageError (no known server key, a bad key file)."""
    try:
        return clientconfig.client_keys(endpoint, key, server_key, environ)
    except errors.InvalidArgument as exc:
        raise UsageError(exc.message, hint=exc.hint) from exc


def _connect(endpoint: str, timeout_s: float, key: str | None = None,
             server_key: str | None = None) -> wire.RpcClient:
    """A client for ``endpoint``; for ``A,B,...`` (several hubs of one
    fleet) a dcctl.wire.failover.FailoverClient over them."""
    if "," in endpoint:
        try:
            endpoints = failover.split_endpoints(endpoint)
        except errors.InvalidArgument as exc:
            raise UsageError(exc.message, hint=f"use -H or ${clientconfig.HOST_ENV}") from exc
        keys = {ep: client_keys(ep, key, server_key) for ep in endpoints}
        return failover.FailoverClient(endpoints, lambda ep: wire.connect(ep, timeout_s=timeout_s, keys=keys[ep]))
    try:
        wire.validate_endpoint(endpoint)
    except errors.InvalidArgument as exc:
        raise UsageError(exc.message, hint=f"use -H or ${clientconfig.HOST_ENV}") from exc
    return wire.connect(endpoint, timeout_s=timeout_s, keys=client_keys(endpoint, key, server_key))


def run_keygen(argv: list[str]) -> int:
    """``dcctl keygen [NAME] [--dir DIR]``: a new CURVE key pair
    (default CONFIG_DIR/dcctl.key and .key_secret, mode 0600); prints the
    public key to give to servers (their KEYS_DIR/clients/ROLE/)."""
    p = argparse.ArgumentParser(prog="dcctl keygen")
    p.add_argument("name", nargs="?", default="dcctl")
    p.add_argument("--dir", default=None)
    ns = p.parse_args(argv)
    public_file, secret_file = auth.keygen(ns.dir or clientconfig.config_dir(), ns.name)
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


def _push(client: wire.RpcClient, args: list, options: dict, as_json: bool = False) -> int | None:
    """image_push FILE NAME[:TAG] with a local file: upload it with progress
    (dcctl.upload), with ``options`` (upload.PUSH_OPTIONS); the result as
    JSON when ``as_json``.  None for the hub's image_push HOST REF."""
    if len(args) != 2 or not all(isinstance(a, str) for a in args) or not upload.looks_local(args[0]):
        return None
    unknown = sorted(set(options) - set(upload.PUSH_OPTIONS))
    if unknown:
        raise UsageError(f"image_push FILE takes no --{unknown[0].replace('_', '-')}; "
                         f"its options: {', '.join('--' + k for k in upload.PUSH_OPTIONS)}",
                         hint=f"usage: {upload.PUSH_USAGE}")
    try:
        parse_ref(args[1])
    except errors.InvalidArgument as exc:
        raise UsageError(exc.message, hint=f"usage: {upload.PUSH_USAGE}", name="InvalidArgument") from exc
    streamed: list = []

    def on_items(items):  # the finish's progress: JSON lines with --json, else bars on stderr
        streamed.append(True)
        if not as_json:
            return progress.track(items, sys.stderr)
        last = None
        for last in items:
            print(output.dumps(last, indent=None), flush=True)
        return last

    result = upload.push_file(
        lambda method, *a, timeout_s=120.0: client.call(method, *a, timeout_s=timeout_s), args[0], args[1],
        options=options, on_items=on_items)
    if as_json:
        return 0 if streamed else output.render_json(result)
    return output.render(result)


def _push_upload(client: wire.RpcClient, cmd: Command) -> int | None:
    """``dcctl image_push FILE[:TAG] NAME[:TAG] [--host H] [--format F]``:
    the upload form, parsed here rather than by the hub's image_push(host,
    ref) signature; None when the first word is not a local file."""
    if not cmd.words or not upload.looks_local(cmd.words[0]):
        return None
    if len(cmd.words) != 2:
        what = "missing argument 'NAME'" if len(cmd.words) < 2 else f"too many arguments: {' '.join(cmd.words[2:])}"
        raise UsageError(f"image_push: {what}", hint=f"usage: {upload.PUSH_USAGE}")
    return _push(client, list(cmd.words), build_options(cmd.method, cmd.flags), as_json=cmd.json)


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
    filters = _filters(cmd.method, cmd.filters) if cmd.method not in (None, "methods", "help", "events") else {}
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
            text = method_help(cmd.method, info)
            if cmd.method == "image_push":  # dcctl's upload form beside the hub's signature
                first, _, rest = text.partition("\n")
                text = f"{first}\n   or: {upload.PUSH_USAGE}  (FILE: a local archive or layout to upload)\n{rest}"
            sys.stdout.write(text)
            return 0
        plain_method = cmd.method
        # its progress form (dcctl/cli/progress.py); with --json the plain answer, as callers parse it
        # (JSON lines: dcctl --json image_import_progress ...)
        if not cmd.json and progress.STREAM_FORMS.get(cmd.method or "") in methods:
            cmd.method = progress.STREAM_FORMS[cmd.method]
            info = methods[cmd.method]
        if cmd.method in DEADLINE_METHODS and cmd.timeout_s is not None:
            cmd.flags.append(("timeout-s", repr(cmd.timeout_s)))
        if cmd.method == "image_push":
            code = _push_upload(client, cmd)
            if code is not None:
                return code
        if cmd.method == "build" and info is not None:  # the hub's build: pack, upload, stream (dcctl.build)
            try:
                return dcbuild.run_build(client, list(cmd.words), list(cmd.flags), cmd.json)
            except errors.InvalidArgument as exc:
                if exc.hint and "usage:" in exc.hint:
                    raise UsageError(exc.message, hint=exc.hint) from exc
                raise
        if cmd.method == "events" and "filters" in [a.get("name") for a in (info or {}).get("args") or []]:
            # the hub's events (dcctl/cli/events.py)
            return run_events(client, cmd)
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
        wire_args = upload.absolute_paths(cmd.method, client.endpoint, wire_args)
        handler = INTERACTIVE_HANDLERS.get(cmd.method)
        if handler is not None:
            code = handler(client, args, options or {})
            if code is not None:
                return code
        if cmd.method == "container_logs" and len(args) == 1 and not filters:  # text lines, --follow a stream
            from dcctl.cli import logs
            return logs.run(client, args[0], options or {}, cmd.json, call_timeout(cmd, options))
        result = client.call(cmd.method, *wire_args, timeout_s=call_timeout(cmd, options))
        if plain_method != cmd.method and output.is_stream(result) and not cmd.json:
            last = progress.track(result, sys.stderr)  # bars on stderr, the answer as the plain method's
            return output.render((last or {}).get("result"), method=plain_method, wide=cmd.wide)
        if cmd.method in progress.PROGRESS_METHODS and output.is_stream(result) and not cmd.json:
            return progress.show(result)  # a progress bar (dcctl/cli/progress.py)
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
    p.add_argument("--timeout", type=parse_timeout, default=wire.DEFAULT_TIMEOUT_SECONDS, metavar="SECONDS")
    p.add_argument("--key", default=os.environ.get(clientconfig.KEY_ENV), help="our CURVE key pair (.key_secret)")
    p.add_argument("--server-key", default=os.environ.get(clientconfig.SERVER_KEY_ENV), help="the server's public key")
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
