"""dcctl: the operator's command line for dcfleet agents and the hub.

    dcctl [-H|--host ENDPOINT] [--json|--wide] [--filter KEY=VALUE] [--timeout SECONDS]
          METHOD [ARGS...] [--KEY VALUE...]
    dcctl [methods]                  list the server's methods (first doc line)
    dcctl help METHOD | dcctl METHOD --help
    dcctl stats [NAME...] [--no-stream] [--interval SECONDS]
                                     running containers' CPU, memory and network, live (dcctl.cli.stats)
    dcctl call ENDPOINT [METHOD [ARGS...]] [-j|--json] [-pj|--print-json] [--timeout S]
                    (the stock zerorpc CLI's syntax: string or -j JSON args, pprint or -pj JSON)

ENDPOINT is ``ipc:///path`` or ``tcp://host:port``; default ``$DCCTL_HOST``,
else ipc:///run/dcfleet/agent.sock.  Global options may stand before or after
METHOD; everything after ``--`` is a positional word.

Arguments are converted with the server's ``_zerorpc_inspect`` answer:

- positional words fill the method's parameters in order, by type, with the
  wire's one coercion (dcctl.wire.coerce; the hub's broadcast and queue use
  it too): ``int`` (decimal digits, a sign), ``float`` (finite), ``bool``
  (true/false/yes/no/on/off/1/0), ``str``; a parameter whose type includes
  ``None`` takes the words ``none``/``null`` as None; an int parameter whose
  name ends in ``_bytes`` accepts sizes like ``512M``;
- a ``list`` parameter (e.g. ``list | str``) takes ALL remaining words as a
  list of strings: ``dcctl container_exec web -- ls -l``;
- the options parameter (typed ``dict``, last) collects ``--key value`` (or
  ``--key=value``) flags: dashes become underscores; a value that parses as a
  JSON number, bool, list or object is sent as such, anything else as a
  string; keys ending in ``_bytes`` take K/M/G/T suffixes (powers of 1024); a
  repeated key becomes a list; ``--env A=B`` builds a dict; ``--options-json
  '{...}'`` gives a base dict that the flags then update.  A bare flag (at
  the end, or before another flag) is ``true`` (``--no-start``);
- a method without an options map takes ``--NAME VALUE`` (or a bare
  ``--NAME``: true) for its parameter NAME, the earlier optional ones taking
  their defaults: ``dcctl container_destroy web --force``.  The names host, json, wide, filter, timeout,
  help and options-json are dcctl's own; pass such keys with --options-json.

Output: see dcctl.output (tables, ``key: value`` lines, exec passthrough with
the command's exit code; ``--json`` prints JSON and exits 0 on success).
Listings (container_ls, hosts, image_ls, network_ls, hostinfo, events,
route_ls, broadcast) show a default view that fits 100 columns; ``--wide`` shows every
column; ``--filter KEY=VALUE`` (repeatable; same key OR, different keys AND)
keeps the matching rows, in the tables and in ``--json``.
``container_enter`` hands the terminal to dcctl.enter.  The call timeout is
--timeout, else an options ``timeout_s`` + 30 s, else 30 s (330 s for
container_exec).

Exit codes: 0 ok; 1 a typed error from the server; 2 a usage error; 3 the
call timed out or the server is unreachable; an exec's own code for
container_exec-shaped results.  An error prints one line ``dcctl: Name:
message`` on stderr, then ``hint: ...`` on a second line when the error
carries a hint; never a traceback.
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

from dcctl import errors, wire  # noqa: F401  (wire: for callers of cli.wire)
from dcctl.cli.args import (LITERAL_AFTER_WORDS, MAP_OPTIONS, Command, Param, UsageError, build_call,
                            build_options, convert_word, method_help, options_index, params_of, parse_size,
                            parse_timeout, split_argv, usage)
from dcctl.cli.commands import (DEADLINE_METHODS, INTERACTIVE_HANDLERS, METHOD_TIMEOUT_SECONDS,
                                TIMEOUT_MARGIN_SECONDS, call_parser, call_timeout, client_keys, fetch_inspect,
                                run_call, run_keygen, run_method)
from dcctl.output import safe_text
from dcctl.wire.clientconfig import (CONFIG_DIR_ENV, DEFAULT_ENDPOINT, HOST_ENV, KEY_ENV, SERVER_KEY_ENV,
                                     config_dir, known_server_key_path)

__all__ = ["run", "main", "UsageError", "Command", "Param", "split_argv", "params_of", "options_index",
           "parse_size", "parse_timeout", "convert_word", "build_options", "build_call", "usage", "method_help",
           "fetch_inspect", "client_keys", "run_keygen", "call_timeout", "run_method", "call_parser",
           "run_call", "INTERACTIVE_HANDLERS", "METHOD_TIMEOUT_SECONDS", "TIMEOUT_MARGIN_SECONDS",
           "DEADLINE_METHODS", "MAP_OPTIONS", "LITERAL_AFTER_WORDS", "DEFAULT_ENDPOINT", "HOST_ENV", "KEY_ENV",
           "SERVER_KEY_ENV", "CONFIG_DIR_ENV", "config_dir", "known_server_key_path"]


# ------------------------------------------------------------ entry points

def _report(name: str, message: str, hint: str | None) -> None:
    """An error on stderr; a server's words with their terminal controls
    escaped (dcctl.output.safe_text)."""
    print(f"dcctl: {safe_text(str(name))}: {safe_text(str(message))}", file=sys.stderr)
    if hint:
        print(f"hint: {safe_text(str(hint))}", file=sys.stderr)


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
        if cmd.method == "stats" and not cmd.help:  # a client-side view over hostinfo (dcctl.cli.stats)
            from dcctl.cli import stats
            from dcctl.cli.commands import _connect
            with _connect(cmd.endpoint, cmd.timeout_s or wire.DEFAULT_TIMEOUT_SECONDS, cmd.key,
                          cmd.server_key) as client:
                return stats.run(client, list(cmd.words), build_options("stats", cmd.flags), cmd.json,
                                 cmd.timeout_s or 30.0)
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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``sys.exit(run(argv))``.  Ctrl-C (SIGINT) ends
    dcctl even when it was started with SIGINT ignored (a command started
    in the background by a non-interactive shell inherits SIG_IGN, and
    Python then never raises KeyboardInterrupt: a live ``stats``,
    ``logs --follow`` or ``events --follow`` could not be stopped by it), as
    Docker's CLI does."""
    import signal
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(run(argv))
