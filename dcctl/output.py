"""How dcctl shows results: readable text by default, JSON with ``--json``.

Readable form (``render``):

- a list of dicts is a table; its columns are the keys in order of first
  appearance, nested values are shown as compact JSON, None as ``-``;
- a dict is ``key: value`` lines, nested dicts and lists of dicts indented
  under their key;
- a list of scalars is one item per line; a scalar is printed plain (bytes
  written as they are); None prints nothing;
- an exec-shaped dict (``exit_code`` plus ``stdout`` and/or ``stderr``, as
  container_exec returns) writes its stdout bytes to stdout and its stderr
  bytes to stderr, and ``render`` returns its exit code (like docker exec).

JSON form (``render_json``): bytes that are valid UTF-8 become a string;
other bytes become ``{"$base64": "<base64 text>"}``; tuples are lists.

Streamed results (an iterator) are shown item by item as they arrive: a dict
item as one ``key=value ...`` line, or one JSON document per line with
``--json``.
"""
from __future__ import annotations

import base64
import collections.abc
import io
import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

#: The key that marks bytes that are not UTF-8 in JSON output.
BASE64_KEY = "$base64"
EXEC_KEYS = ("stdout", "stderr")


def to_jsonable(value: Any) -> Any:
    """``value`` with bytes decoded (or base64-marked) and tuples as lists."""
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError:
            return {BASE64_KEY: base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    """JSON text of ``value`` (see to_jsonable)."""
    compact = (",", ":") if indent is None else None
    return json.dumps(to_jsonable(value), indent=indent, separators=compact, ensure_ascii=False)


def is_exec_result(value: Any) -> bool:
    """True for a container_exec-shaped result: exit_code with stdout/stderr."""
    return (isinstance(value, dict) and "exit_code" in value
            and any(k in value for k in EXEC_KEYS))


def is_stream(value: Any) -> bool:
    """True when ``value`` is a streamed result (an iterator of items)."""
    return isinstance(value, collections.abc.Iterator)


def scalar_text(value: Any) -> str:
    """One value as short text: strings plain, None ``-``, bools lowercase,
    containers as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        plain = to_jsonable(value)
        return plain if isinstance(plain, str) else dumps(plain, indent=None)
    if isinstance(value, (dict, list, tuple)):
        return dumps(value, indent=None)
    return str(value)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list, tuple))


def kv_lines(value: dict, indent: int = 0) -> list[str]:
    """``key: value`` lines for a dict; nested dicts and lists of containers
    are indented two spaces under their key."""
    pad = " " * indent
    out = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            out.append(f"{pad}{key}:")
            out.extend(kv_lines(item, indent + 2))
        elif isinstance(item, (list, tuple)) and item and not all(map(_is_scalar, item)):
            out.append(f"{pad}{key}:")
            for elem in item:
                if isinstance(elem, dict) and elem:
                    sub = kv_lines(elem, indent + 4)
                    out.append(f"{pad}  - {sub[0].lstrip()}")
                    out.extend(sub[1:])
                else:
                    out.append(f"{pad}  - {scalar_text(elem)}")
        elif isinstance(item, (list, tuple)):
            out.append(f"{pad}{key}: {', '.join(scalar_text(e) for e in item) if item else '[]'}")
        elif isinstance(item, dict):
            out.append(f"{pad}{key}: {{}}")
        elif isinstance(item, str) and "\n" in item.rstrip("\n"):  # multi-line text: an indented block
            out.append(f"{pad}{key}: |")
            out.extend(f"{pad}  {line}" for line in item.rstrip("\n").splitlines())
        else:
            text = cell_text(key, item)
            out.append(f"{pad}{key}: {text.rstrip(chr(10))}".rstrip())
    return out


def cell_text(column: str, value: Any) -> str:
    """A table cell: sizes (``*_bytes``) in KiB/MiB/GiB, Unix timestamps
    (``created``, ``last_heartbeat``) as UTC times; else scalar_text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if str(column).endswith("_bytes"):
            return _size(value)
        if column in ("created", "last_heartbeat", "boot_time", "at", "started_at", "registered_at"):
            return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    return scalar_text(value)


def table_text(rows: list[dict], is_tty: bool = False) -> str:
    """A table of ``rows`` (dicts); columns are keys in first-seen order;
    a bold header when ``is_tty``."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold" if is_tty else None)
    for col in columns:
        table.add_column(escape(str(col)), overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell_text(c, row.get(c))) for c in columns))
    buf = io.StringIO()
    # Never fold cells to the terminal's width: long lines wrap like docker ps's.
    console = Console(file=buf, width=100_000, force_terminal=is_tty, no_color=not is_tty,
                      highlight=False, soft_wrap=True)
    console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def _write_bytes(stream: TextIO, data: Any) -> None:
    if data is None:
        return
    if isinstance(data, str):
        data = data.encode("utf-8")
    stream.flush()
    binary = getattr(stream, "buffer", None)
    if binary is not None:
        binary.write(bytes(data))
        binary.flush()
    else:  # a text-only stream (tests): decode leniently
        stream.write(bytes(data).decode("utf-8", "replace"))


def exec_exit_code(result: dict) -> int:
    """The process exit code for an exec-shaped result: exit_code when it is
    an int (modulo 256; a command killed by signal N gives 128+N, as in a
    shell), else 1 (for example when it timed out)."""
    code = result.get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool):
        return 128 - code if code < 0 else code % 256
    return 1


def render_exec(result: dict, stdout: TextIO, stderr: TextIO) -> int:
    """Write an exec result's streams; note truncation and timeouts on
    stderr; return the exit code to exit with."""
    _write_bytes(stdout, result.get("stdout"))
    _write_bytes(stderr, result.get("stderr"))
    for key in EXEC_KEYS:
        if result.get(f"{key}_truncated"):
            print(f"dcctl: note: {key} was truncated", file=stderr)
    if result.get("timed_out"):
        print("dcctl: note: the command timed out", file=stderr)
    return exec_exit_code(result)


def is_fanout_result(value: Any) -> bool:
    """A hub broadcast answer: {summary, results {host: {status, ...}}}."""
    return (isinstance(value, dict) and isinstance(value.get("summary"), dict)
            and isinstance(value.get("results"), dict) and "targeted" in value["summary"])


def _size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def result_digest(result: Any, width: int = 100) -> str:
    """One line that says what a host answered (ops_run: exit code and the
    first output line; hostinfo: load, memory, containers; else compact JSON)."""
    if isinstance(result, dict) and "exit_code" in result and "stdout" in result:
        out = result["stdout"]
        out = out.decode(errors="replace") if isinstance(out, (bytes, bytearray)) else str(out)
        line = (out.strip().splitlines() or [""])[0]
        return f"exit {result['exit_code']}: {line}"[:width]
    if isinstance(result, dict) and isinstance(result.get("metrics"), dict):
        m, cap = result["metrics"], result.get("capacity") or {}
        load = (m.get("load_avg") or [None])[0]
        return (f"load {load if load is None else round(load, 2)}, mem {_size(m.get('memory_used_bytes'))}/"
                f"{_size(m.get('memory_total_bytes'))}, containers {cap.get('containers', '-')}, "
                f"unreserved {_size(cap.get('memory_unreserved_bytes'))}")[:width]
    text = dumps(result, indent=None)
    return text if len(text) <= width else text[: width - 3] + "..."


def render_fanout(result: dict, stdout: TextIO) -> None:
    s = result["summary"]
    print(f"targeted {s['targeted']}: {s['ok']} ok, {s['error']} error, {s['timeout']} timeout "
          f"({s.get('duration_s', 0) * 1000:.0f} ms)", file=stdout)
    rows = []
    for host, r in result["results"].items():
        detail = result_digest(r.get("result")) if r["status"] == "ok" else \
            f"{r.get('error', '')}: {r.get('message', '')}" if r["status"] == "error" else "no answer in time"
        rows.append({"host": host, "status": r["status"], "answer": detail})
    if rows:
        stdout.write(table_text(rows, is_tty=_isatty(stdout)))


def is_route_list(value: Any) -> bool:
    """A route_ls answer: [{name, backends: [...]}]."""
    return isinstance(value, list) and bool(value) and all(
        isinstance(r, dict) and "name" in r and isinstance(r.get("backends"), list) for r in value)


def route_rows(routes: list[dict]) -> list[dict]:
    """One table row per backend (a route without one gets a row of its own)."""
    rows = []
    for r in routes:
        for b in r["backends"] or [{}]:
            addr = f"{b['address']}:{b['port']}" if b.get("address") and b.get("port") else "-"
            rows.append({"name": r["name"], "container": b.get("container", "-"),
                         "container_port": b.get("container_port", "-"), "host": b.get("host") or "-",
                         "address": addr, "healthy": b.get("healthy", False), "status": b.get("status", "-")})
    return rows


def render(result: Any, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Print ``result`` readably; returns the exit code (0, or an exec
    result's exit code)."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if is_exec_result(result):
        return render_exec(result, stdout, stderr)
    if is_fanout_result(result):
        render_fanout(result, stdout)
        summary = result["summary"]
        return 1 if summary.get("error") or summary.get("timeout") else 0
    if isinstance(result, list) and result and all(isinstance(r, dict) and "metrics" in r for r in result):
        stdout.write(table_text([{"host": r.get("host"), "status": r.get("status", "ok"),
                                  "summary": result_digest(r)} for r in result], is_tty=_isatty(stdout)))
        return 0
    if is_route_list(result):
        stdout.write(table_text(route_rows(result), is_tty=_isatty(stdout)))
        return 0
    if is_stream(result):
        for item in result:
            if isinstance(item, dict):
                print(" ".join(f"{k}={scalar_text(v)}" for k, v in item.items()), file=stdout)
            else:
                render(item, stdout, stderr)
            stdout.flush()
        return 0
    if isinstance(result, (list, tuple)) and result and all(isinstance(r, dict) for r in result):
        stdout.write(table_text(list(result), is_tty=_isatty(stdout)))
    elif isinstance(result, (list, tuple)):
        for item in result:
            print(scalar_text(item), file=stdout)
    elif isinstance(result, dict):
        for line in kv_lines(result):
            print(line, file=stdout)
    elif isinstance(result, (bytes, bytearray)):
        _write_bytes(stdout, result)
    elif result is not None:
        print(scalar_text(result), file=stdout)
    return 0


def render_json(result: Any, stdout: TextIO | None = None) -> int:
    """Print ``result`` as JSON (a stream as one JSON document per line)."""
    stdout = stdout or sys.stdout
    if is_stream(result):
        for item in result:
            print(dumps(item, indent=None), file=stdout)
            stdout.flush()
    else:
        print(dumps(result), file=stdout)
    return 0


def method_list_lines(methods: dict[str, str]) -> list[str]:
    """Aligned ``name  first doc line`` lines for {name: doc}."""
    width = max((len(m) for m in methods), default=0)
    return [f"{name.ljust(width)}  {first_line(doc)}" for name, doc in methods.items()]


def help_text(usage: str, rows: list[tuple[str, str, str]], doc: str) -> str:
    """A method's help: the usage line, one ``name  type note`` line per
    parameter, then the docstring."""
    width = max((len(name) for name, _, _ in rows), default=0)
    lines = [f"usage: {usage}", ""] + [f"  {n.ljust(width)}  {t}{note}" for n, t, note in rows]
    return "\n".join(lines + (["", doc.strip()] if doc.strip() else [])) + "\n"


def first_line(doc: str | None) -> str:
    """The first sentence of a docstring (up to its first paragraph's
    period), or ``<undocumented>``."""
    doc = (doc or "").strip()
    if not doc:
        return "<undocumented>"
    para = " ".join(doc.split("\n\n")[0].split())
    end = para.find(". ")
    return para if end < 0 else para[: end + 1]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


__all__ = ["BASE64_KEY", "dumps", "exec_exit_code", "first_line", "help_text", "is_exec_result", "is_stream", "kv_lines",
           "method_list_lines", "render", "render_exec", "render_json", "scalar_text", "table_text",
           "to_jsonable"]
