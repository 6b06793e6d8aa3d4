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

Listings (``VIEWS``): the results of container_ls, hosts, image_ls,
network_ls, hostinfo, events, route_ls and broadcast have a default view in the
manner of ``docker ps``: chosen columns, 12-character ids, ports as
``20983->80/tcp``, readable sizes and ages, every line at most
``TABLE_WIDTH`` (100) columns (long cells are cut with ``…``), and the header
even when there are no rows.  route_ls shows one row per backend (name,
container, port, host, address:port, health), fitted the same way.  ``wide=True`` (``dcctl --wide``) shows every
key of every row, uncut, as the generic table above.  ``--json`` always
prints the full data.

Filters (``parse_filters``, ``filter_result``; ``dcctl --filter KEY=VALUE``)
keep the rows of a listing that match, with Docker's semantics: values of
the same key are alternatives (OR), different keys must all match (AND), and
a key the listing does not know is refused.  ``name`` matches a part of the
name, ``id`` a prefix, ``label`` ``KEY`` or ``KEY=VALUE``, ``image`` the image
name or an id prefix; other keys match the whole value (case-insensitive).
"""
from __future__ import annotations

import base64
import collections.abc
import dataclasses
import io
import json
import re
import shlex
import sys
import time
from typing import Any, Callable, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dcctl.units import age_text, size_text

#: The key that marks bytes that are not UTF-8 in JSON output.
BASE64_KEY = "$base64"
EXEC_KEYS = ("stdout", "stderr")
#: The widest line a default view prints, in columns.
TABLE_WIDTH = 100
#: How many characters of an id a default view shows (as docker ps).
SHORT_ID_CHARS = 12
ELLIPSIS = "\u2026"
#: A flexible column keeps its first item (one port mapping) up to this
#: many characters before other columns are cut.
FIRST_ITEM_MAX_CHARS = 20


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


#: Characters a terminal acts on that text from a host or a container must
#: not carry to the operator's screen: C0 controls but tab and newline, DEL,
#: C1 controls (ESC and CSI start escape sequences), and the bidirectional
#: overrides and isolates (text shown in another order than it is).
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def safe_text(text: str) -> str:
    """``text`` with each terminal control character (_UNSAFE) shown as its
    escape (``\\x1b``, ``\\u202e``), so a value a host or a container chose
    (an event field, a name, an error message) cannot move the cursor,
    clear the screen or set the title when dcctl prints it.  Bytes written
    as they are (exec output, logs) are not touched: like ``docker logs``."""
    return _UNSAFE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


def scalar_text(value: Any) -> str:
    """One value as short text: strings plain (terminal controls escaped:
    safe_text), None ``-``, bools lowercase, containers as compact JSON."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, (bytes, bytearray)):
        plain = to_jsonable(value)
        return safe_text(plain) if isinstance(plain, str) else dumps(plain, indent=None)
    if isinstance(value, (dict, list, tuple)):
        return safe_text(dumps(value, indent=None))
    return str(value)


def _is_scalar(value: Any) -> bool:
    return not isinstance(value, (dict, list, tuple))


def kv_lines(value: dict, indent: int = 0) -> list[str]:
    """``key: value`` lines for a dict; nested dicts and lists of containers
    are indented two spaces under their key, and so is a list of scalars
    that would not fit on one TABLE_WIDTH line, one item per line."""
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
            line = f"{pad}{key}: {', '.join(scalar_text(e) for e in item) if item else '[]'}"
            if len(line) <= TABLE_WIDTH:
                out.append(line)
            else:  # a long list of scalars (layer digests): one per line
                out.append(f"{pad}{key}:")
                out.extend(f"{pad}  - {scalar_text(e)}" for e in item)
        elif isinstance(item, dict):
            out.append(f"{pad}{key}: {{}}")
        elif isinstance(item, str) and "\n" in item.rstrip("\n"):  # multi-line text: an indented block
            out.append(f"{pad}{key}: |")
            out.extend(f"{pad}  {line}" for line in item.rstrip("\n").splitlines())
        else:
            text = cell_text(key, item)
            out.append(f"{pad}{key}: {text.rstrip(chr(10))}".rstrip())
    return [safe_text(line) for line in out]  # keys and block lines too (values are already)


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
    a bold header when ``is_tty``.  Cells are never cut (the wide view)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    return grid_text([str(c) for c in columns], [[cell_text(c, row.get(c)) for c in columns] for row in rows],
                     is_tty)


def fit_cells(headers: list[str], rows: list[list[str]], width: int = TABLE_WIDTH,
              flexible: list[int] | None = None, last: list[int] | None = None) -> list[list[str]]:
    """``rows`` with cells cut (ending in ``…``) until a line of the table
    (columns two spaces apart) fits in ``width`` columns.  Each column is
    as wide as its widest cell.  When a line is too wide, the columns at
    the indices in ``flexible`` (ports, labels, free text) are cut first,
    but not below their first item (``20983->80/tcp`` of a list, at most
    FIRST_ITEM_MAX_CHARS); then the
    columns in ``last`` (the name) are cut; then the flexible ones below
    their first item; then any column, widest first.  Headers are never
    cut, so a table whose headers alone are too wide stays so."""
    flexible, last = list(flexible or []), list(last or [])
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    floors = [max(len(h), 4) for h in headers]
    first_item = {j: min(FIRST_ITEM_MAX_CHARS, max([floors[j]] + [len(r[j].split(", ")[0]) for r in rows]))
                  for j in flexible}
    excess = sum(widths) + 2 * max(0, len(headers) - 1) - width
    passes = [(flexible, first_item), (last, {}), (flexible, {}),
              ([j for j in range(len(headers)) if j not in last], {}), (last, {})]
    for group, group_floors in passes:
        while excess > 0:
            shrinkable = [j for j in group if widths[j] > group_floors.get(j, floors[j])]
            if not shrinkable:
                break
            i = max(shrinkable, key=lambda j: widths[j])
            widths[i] -= 1
            excess -= 1
    return [[cut_text(c, widths[i]) for i, c in enumerate(r)] for r in rows]


def cut_text(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, ending in ``…`` when cut; a
    list (``a, b, c``) is cut after its last whole item that fits."""
    if len(text) <= width:
        return text
    head = text[: width - 1]
    sep = head.rfind(", ")
    return (head[: sep + 2] if sep > 0 else head) + ELLIPSIS


def grid_text(headers: list[str], rows: list[list[str]], is_tty: bool = False) -> str:
    """Aligned columns two spaces apart under ``headers`` (bold when
    ``is_tty``); lines carry no trailing spaces."""
    table = Table(box=None, show_edge=False, pad_edge=False, header_style="bold" if is_tty else None)
    for col in headers:
        table.add_column(escape(safe_text(col)), overflow="fold")
    for row in rows:  # every cell, whichever view made it (image, ports, command, labels...): safe_text
        table.add_row(*(escape(safe_text(c)) for c in row))
    buf = io.StringIO()
    # Never fold cells to the terminal's width: long lines wrap like docker ps's.
    console = Console(file=buf, width=100_000, force_terminal=is_tty, no_color=not is_tty,
                      highlight=False, soft_wrap=True)
    console.print(table)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


# ------------------------------------------------------------ listing views

def short_id(value: Any) -> str:
    """The first SHORT_ID_CHARS characters of an id (``-`` for none)."""
    return str(value)[:SHORT_ID_CHARS] if value else "-"


def ports_text(ports: Any) -> str:
    """Port mappings as docker ps shows them: ``20983->80/tcp, 20984->53/udp``;
    exposed ports ({proto, port}) as ``80/tcp``."""
    if not isinstance(ports, (list, tuple)):
        return scalar_text(ports)
    out = []
    for p in ports:
        if isinstance(p, dict) and "host_port" in p:
            out.append(f"{p.get('host_port')}->{p.get('container_port')}/{p.get('proto')}")
        elif isinstance(p, dict) and "port" in p:
            out.append(f"{p.get('port')}/{p.get('proto')}")
        else:
            out.append(scalar_text(p))
    return ", ".join(out) if out else "-"


def labels_text(labels: Any) -> str:
    """{k: v} as ``k=v,k2=v2`` (``-`` for none)."""
    if isinstance(labels, dict):
        return ",".join(f"{k}={v}" for k, v in labels.items()) or "-"
    return scalar_text(labels)


def _ago(ts: Any, now: float) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    return age_text(now - ts)


def _command_text(cmd: Any) -> str:
    if isinstance(cmd, (list, tuple)) and all(isinstance(c, str) for c in cmd):
        return shlex.join(cmd) if cmd else "-"
    return scalar_text(cmd)


def _state_text(row: dict) -> str:
    state = scalar_text(row.get("state"))
    return f"{state} (oom)" if row.get("oom_killed") else state


def _image_text(row: dict) -> str:
    return row.get("image") or short_id(row.get("image_id"))


def _fraction(used: Any, total: Any, fmt: Callable[[Any], str] = scalar_text) -> str:
    if used is None and total is None:
        return "-"
    return f"{fmt(used)}/{fmt(total)}"


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of a default view: its header, its text for a row (given
    the row and the time now, Unix s) and, when set, the row key whose
    presence in some row makes the column appear (a hub's ``host``);
    ``flexible`` columns are cut first when a line is too wide."""

    header: str
    text: Callable[[dict, float], str]
    only_with: str | None = None
    flexible: bool = False


def _col(header: str, key: str | None = None, fmt: Callable[[Any], str] | None = None,
         only_with: str | None = None, flexible: bool = False) -> Column:
    key = key or header
    fmt = fmt or scalar_text
    return Column(header, lambda row, now: fmt(row.get(key)), only_with, flexible)


def _release_image(ref: Any) -> str:
    """``name@id`` with the id cut to 12 hex digits."""
    if isinstance(ref, str) and "@" in ref:
        name, _, image_id = ref.partition("@")
        return f"{name}@{image_id[:12]}"
    return scalar_text(ref)


def _hostinfo_fields(row: dict) -> tuple[dict, dict]:
    return row.get("metrics") or {}, row.get("capacity") or {}


def _load_text(row: dict) -> str:
    load = (_hostinfo_fields(row)[0].get("load_avg") or [None])[0]
    return "-" if not isinstance(load, (int, float)) else f"{load:.2f}"


def _event_detail(row: dict) -> str:
    return " ".join(f"{k}={scalar_text(v)}" for k, v in row.items() if k not in EVENT_COLUMNS)


#: An event's keys shown in its own columns (or repeated: container = name, kind = type), not in its detail.
EVENT_COLUMNS = ("index", "at", "kind", "type", "host", "name", "container", "source", "agent_index",
                 "agent_at")


#: Default views by method: the columns shown without --wide.
VIEWS: dict[str, tuple[Column, ...]] = {
    "container_ls": (
        _col("host", only_with="host"), _col("name"), Column("state", lambda r, now: _state_text(r)),
        Column("image", lambda r, now: _image_text(r)), _col("address"),
        _col("ports", fmt=ports_text, flexible=True), Column("age", lambda r, now: _ago(r.get("created"), now)),
    ),
    "hosts": (
        _col("name"), _col("state"), _col("address"),
        Column("containers", lambda r, now: _fraction(r.get("containers"), r.get("container_slots"))),
        Column("reserved", lambda r, now: _fraction(r.get("memory_reserved_bytes"),
                                                    r.get("memory_reservable_bytes"), size_text)),
        Column("heartbeat", lambda r, now: f"{_ago(r.get('last_heartbeat'), now)} ago"
               if r.get("last_heartbeat") else "-"),
        _col("labels", fmt=labels_text, flexible=True),
    ),
    "image_ls": (
        _col("name"), _col("tag"), _col("id", fmt=short_id), Column("age", lambda r, now: _ago(r.get("created"), now)),
        _col("size", "size_bytes", size_text),
        Column("layers", lambda r, now: str(len(r["layers"])) if isinstance(r.get("layers"), list) else "-"),
        _col("ports", "exposed_ports", ports_text, flexible=True),
        _col("command", fmt=_command_text, only_with="command", flexible=True),
    ),
    "network_ls": (
        _col("host"), _col("address"), _col("bridge"), _col("subnet"),
        _col("port_range", fmt=lambda v: "-".join(map(str, v)) if isinstance(v, list) else scalar_text(v)),
        Column("mappings", lambda r, now: str(len(r.get("mappings") or []))),
        Column("containers", lambda r, now: str(len(r.get("addresses") or {}))),
        _col("error", only_with="error", flexible=True),
    ),
    "hostinfo": (
        _col("host"), _col("status"), Column("load", lambda r, now: _load_text(r)),
        Column("memory", lambda r, now: _fraction(_hostinfo_fields(r)[0].get("memory_used_bytes"),
                                                  _hostinfo_fields(r)[0].get("memory_total_bytes"), size_text)),
        Column("disk_free", lambda r, now: size_text(_hostinfo_fields(r)[0].get("disk_free_bytes"))),
        Column("containers", lambda r, now: _fraction(_hostinfo_fields(r)[1].get("containers"),
                                                      _hostinfo_fields(r)[1].get("container_slots"))),
        Column("unreserved", lambda r, now: size_text(_hostinfo_fields(r)[1].get("memory_unreserved_bytes"))),
        Column("uptime", lambda r, now: age_text(_hostinfo_fields(r)[0].get("uptime_s"))),
    ),
    "events": (
        _col("index", only_with="index"), _col("at", fmt=lambda v: cell_text("at", v)), _col("kind"), _col("host"),
        _col("name"),
        Column("detail", lambda r, now: _event_detail(r) or "-", flexible=True),
    ),
    # route_ls: one row per backend (route_rows flattens the answer first)
    "route_ls": (
        _col("name", flexible=True), _col("container", flexible=True), _col("port", "container_port"),
        _col("host"), _col("address"),
        Column("health", lambda r, now: "healthy" if r.get("healthy") is True else _unhealthy(r)),
    ),
    # deploys (hub/apps.py) and volumes
    "releases": (
        _col("version"), _col("state"), _col("image", fmt=lambda v: _release_image(v)),
        Column("replicas", lambda r, now: scalar_text((r.get("config") or {}).get("replicas"))),
        Column("age", lambda r, now: _ago(r.get("created"), now)),
        _col("deploy_s"), _col("rollback_of", fmt=lambda v: f"v{v}" if v else "-"),
        _col("error", flexible=True, fmt=lambda v: scalar_text(v) if v else "-"),
    ),
    "apps": (
        _col("app"), _col("version"), _col("image", fmt=lambda v: _release_image(v)),
        _col("replicas"), _col("releases"), _col("deploying"),
        _col("routes", fmt=lambda v: ",".join(v) if isinstance(v, list) else scalar_text(v), flexible=True),
    ),
    "volume_ls": (
        _col("host", only_with="host"), _col("name"), _col("size", "size_bytes", size_text),
        _col("used_by", fmt=lambda v: ",".join(v) if isinstance(v, list) and v else "-", flexible=True),
        Column("age", lambda r, now: _ago(r.get("created"), now)),
    ),
}
#: route_ls --wide: every key of route_rows, uncut.
ROUTE_WIDE_HEADERS = ["name", "kind", "listen_port", "container", "container_port", "host", "address", "healthy",
                      "status", "routed"]
#: The columns of a broadcast's per-host table.
FANOUT_HEADERS = ["host", "status", "answer"]


def view_text(method: str, rows: list[dict], is_tty: bool = False, now: float | None = None,
              width: int = TABLE_WIDTH) -> str:
    """The default view of ``method``'s listing ``rows`` (see VIEWS): fitted
    to ``width`` columns; the header alone when there are no rows."""
    now = time.time() if now is None else now
    cols = [c for c in VIEWS[method] if c.only_with is None or any(c.only_with in r for r in rows)]
    cells = [[c.text(r, now) for c in cols] for r in rows]
    headers = [c.header for c in cols]
    flexible = [i for i, c in enumerate(cols) if c.flexible]
    last = [i for i, c in enumerate(cols) if c.header == "name"]
    return grid_text(headers, fit_cells(headers, cells, width, flexible, last), is_tty)


# ------------------------------------------------------------ filters

class FilterError(ValueError):
    """A --filter the listing cannot take (unknown key, no KEY=VALUE, or a
    result that is not a listing); dcctl makes it a usage error."""


def _lower(v: Any) -> str:
    return scalar_text(v).lower()


def _match_exact(key: str) -> Callable[[dict, str], bool]:
    return lambda row, want: _lower(row.get(key)) == want.lower()


def _match_name(row: dict, want: str) -> bool:
    return want.lower() in _lower(row.get("name"))


def _match_id(row: dict, want: str) -> bool:
    return bool(row.get("id")) and str(row["id"]).lower().startswith(want.lower())


def _match_label(row: dict, want: str) -> bool:
    labels = row.get("labels") or {}
    key, eq, value = want.partition("=")
    return isinstance(labels, dict) and key in labels and (not eq or str(labels[key]) == value)


def _match_image(row: dict, want: str) -> bool:
    name, _, prefix = want.partition("@")
    image_id = str(row.get("image_id") or "").lower()
    if prefix:
        return row.get("image") == name and image_id.startswith(prefix.lower())
    return row.get("image") == want or (len(want) >= 4 and image_id.startswith(want.lower()))


#: Filter keys by method: key -> match(row, value).
FILTERS: dict[str, dict[str, Callable[[dict, str], bool]]] = {
    "container_ls": {"name": _match_name, "state": _match_exact("state"), "image": _match_image,
                     "host": _match_exact("host")},
    "hosts": {"name": _match_name, "state": _match_exact("state"), "label": _match_label},
    "image_ls": {"name": _match_name, "id": _match_id},
    "network_ls": {"host": _match_exact("host")},
    "hostinfo": {"host": _match_exact("host"), "status": _match_exact("status")},
    "events": {"kind": _match_exact("kind"), "type": _match_exact("kind"), "event": _match_exact("kind"),
               "host": _match_exact("host"), "name": _match_name, "container": _match_name,
               "image": _match_exact("image")},
    "broadcast": {"host": _match_exact("host"), "status": _match_exact("status")},
}


def parse_filters(method: str | None, specs: list[str]) -> dict[str, list[str]]:
    """``["state=running", "name=web"]`` -> {key: [values]} for ``method``.

    Raises:
        FilterError: the method has no filterable listing, a spec is not
            KEY=VALUE, or KEY is not one of the method's filter keys.
    """
    if not specs:
        return {}
    known = FILTERS.get(method or "")
    if known is None:
        raise FilterError(f"{method} has no listing to filter; --filter works on {', '.join(sorted(FILTERS))}")
    out: dict[str, list[str]] = {}
    for spec in specs:
        key, eq, value = spec.partition("=")
        if not eq or not key:
            raise FilterError(f"--filter wants KEY=VALUE, got {spec!r}")
        if key not in known:
            raise FilterError(f"{method} cannot filter on {key!r}; keys: {', '.join(sorted(known))}")
        out.setdefault(key, []).append(value)
    return out


def _keep(method: str, row: dict, filters: dict[str, list[str]]) -> bool:
    known = FILTERS[method]
    return all(any(known[k](row, v) for v in values) for k, values in filters.items())


def filter_result(method: str | None, result: Any, filters: dict[str, list[str]]) -> Any:
    """``result`` with only the rows that pass ``filters`` (from
    parse_filters): a list's rows, or a broadcast's per-host results.

    Raises:
        FilterError: ``result`` is not a listing (an agent answers
            network_ls and hostinfo with one host's map).
    """
    if not filters:
        return result
    if method == "broadcast" and is_fanout_result(result):
        kept = {h: r for h, r in result["results"].items() if _keep(method, {"host": h, **r}, filters)}
        return {**result, "results": kept}
    if isinstance(result, list) and all(isinstance(r, dict) for r in result):  # hosts that did not answer stay
        return [r for r in result if _is_unreachable_row(r) or _keep(method, r, filters)]
    raise FilterError(f"{method} here answers with one map, not a listing; drop --filter")


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
    held = [key for key in EXEC_KEYS if result.get(f"{key}_incomplete")]
    if held:
        print(f"dcctl: note: a background process still holds the command's {'/'.join(held)}; "
              "what it writes later is not shown", file=stderr)
    if result.get("timed_out"):
        print("dcctl: note: the command timed out", file=stderr)
    return exec_exit_code(result)


def is_fanout_result(value: Any) -> bool:
    """A hub broadcast answer: {summary, results {host: {status, ...}}}."""
    return (isinstance(value, dict) and isinstance(value.get("summary"), dict)
            and isinstance(value.get("results"), dict) and "targeted" in value["summary"])


_size = size_text


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


def render_fanout(result: dict, stdout: TextIO, wide: bool = False) -> None:
    """A broadcast's summary line and its per-host table (host, status,
    answer), fitted to TABLE_WIDTH unless ``wide``."""
    s = result["summary"]
    print(f"targeted {s['targeted']}: {s['ok']} ok, {s['error']} error, {s['timeout']} timeout "
          f"({s.get('duration_s', 0) * 1000:.0f} ms)", file=stdout)
    rows = []
    for host, r in result["results"].items():
        detail = result_digest(r.get("result"), width=10_000 if wide else TABLE_WIDTH) if r["status"] == "ok" \
            else f"{r.get('error', '')}: {r.get('message', '')}" if r["status"] == "error" else "no answer in time"
        rows.append([host, r["status"], detail])
    if rows or not wide:
        stdout.write(grid_text(FANOUT_HEADERS, rows if wide else fit_cells(FANOUT_HEADERS, rows, flexible=[2]),
                               is_tty=_isatty(stdout)))


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
            rows.append({"name": r["name"], "kind": r.get("kind", "-"), "listen_port": r.get("listen_port"),
                         "container": b.get("container", "-"),
                         "container_port": b.get("container_port", "-"), "host": b.get("host") or "-",
                         "address": addr, "healthy": b.get("healthy", False), "status": b.get("status", "-"),
                         "routed": b.get("routed", b.get("healthy", False))})
    return rows


def _unhealthy(row: dict) -> str:
    """A backend's health cell when the hub does not vouch for it: its
    status, and ``(routed)`` when the routers still serve it (a lost host's
    backend: their health checks decide)."""
    text = scalar_text(row.get("status"))
    return f"{text} (routed)" if row.get("routed") is True else text


def network_text(result: dict, is_tty: bool = False, width: int = TABLE_WIDTH) -> str:
    """An agent's network_ls: its bridge, subnet, gateway and port range as
    ``key: value`` lines, then one row per container (address and ports)."""
    lines = [f"{k}: {'-'.join(map(str, v)) if k == 'port_range' and isinstance(v, list) else scalar_text(v)}"
             for k, v in result.items() if k not in ("mappings", "addresses")]
    ports: dict[str, list] = {}
    for m in result.get("mappings") or []:
        ports.setdefault(m.get("container"), []).append(m)
    names = list(result.get("addresses") or {}) + [n for n in ports if n not in (result.get("addresses") or {})]
    rows = [[str(n), scalar_text((result.get("addresses") or {}).get(n)), ports_text(ports.get(n, []))]
            for n in names]
    headers = ["container", "address", "ports"]
    return "\n".join(lines) + "\n\n" + grid_text(headers, fit_cells(headers, rows, width, [2]), is_tty)


def _is_unreachable_row(row: Any) -> bool:
    return isinstance(row, dict) and row.get("unreachable") is True


def unreachable_text(rows: list[dict], missing: str = "its rows are") -> str:
    """The stderr line naming the hosts of a fleet listing that did not
    answer (rows {host, status, message, unreachable: true}: the hub's
    volume_ls, dcctl stats)."""
    hosts = ", ".join(f"{r.get('host')} ({r.get('status', 'error')}: {r.get('message') or 'no answer'})"
                      for r in rows)
    return f"dcctl: no answer from {len(rows)} host(s), {missing} not shown: {hosts}"


def render(result: Any, stdout: TextIO | None = None, stderr: TextIO | None = None, *,
           method: str | None = None, wide: bool = False, now: float | None = None) -> int:
    """Print ``result`` readably; returns the exit code (0, or an exec
    result's exit code).  ``method`` (the method that answered) picks its
    listing's default view (VIEWS) unless ``wide``; ``now`` (Unix s, default
    the clock) is what ages are counted from."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    if isinstance(result, list) and any(_is_unreachable_row(r) for r in result):
        code = render([r for r in result if not _is_unreachable_row(r)], stdout, stderr, method=method, wide=wide,
                      now=now)
        stdout.flush()
        print(unreachable_text([r for r in result if _is_unreachable_row(r)]), file=stderr)
        return code
    if is_exec_result(result):
        return render_exec(result, stdout, stderr)
    if is_fanout_result(result):
        render_fanout(result, stdout, wide)
        summary = result["summary"]
        return 1 if summary.get("error") or summary.get("timeout") else 0
    if method == "route_ls" and isinstance(result, list) and (is_route_list(result) or not result):
        rows = route_rows(result)
        stdout.write(view_text(method, rows, is_tty=_isatty(stdout), now=now) if not wide or not rows
                     else grid_text(ROUTE_WIDE_HEADERS, [[cell_text(c, r[c]) for c in ROUTE_WIDE_HEADERS]
                                                         for r in rows], _isatty(stdout)))
        return 0
    if method in VIEWS and isinstance(result, list) and all(isinstance(r, dict) for r in result) and (
            not wide or not result):
        stdout.write(view_text(method, result, is_tty=_isatty(stdout), now=now))
        return 0
    if method == "network_ls" and isinstance(result, dict) and not wide:
        stdout.write(network_text(result, is_tty=_isatty(stdout)))
        return 0
    if isinstance(result, list) and result and all(isinstance(r, dict) and "metrics" in r for r in result):
        stdout.write(table_text([{"host": r.get("host"), "status": r.get("status", "ok"),
                                  "summary": result_digest(r)} for r in result], is_tty=_isatty(stdout)))
        return 0
    if is_route_list(result) and not wide:
        stdout.write(table_text(route_rows(result), is_tty=_isatty(stdout)))
        return 0
    if is_stream(result):
        for item in result:
            if isinstance(item, dict):
                print(safe_text(" ".join(f"{k}={scalar_text(v)}" for k, v in item.items())), file=stdout)
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


def method_list_lines(methods: dict[str, str], width: int = TABLE_WIDTH) -> list[str]:
    """Aligned ``name  first doc line`` lines for {name: doc}, each cut to
    ``width`` columns (ending in ``…``)."""
    name_width = max((len(m) for m in methods), default=0)
    lines = [f"{name.ljust(name_width)}  {first_line(doc)}" for name, doc in methods.items()]
    return [line if len(line) <= width else line[: width - 1] + ELLIPSIS for line in lines]


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


__all__ = ["BASE64_KEY", "FILTERS", "FilterError", "TABLE_WIDTH", "VIEWS", "dumps", "exec_exit_code", "filter_result",
           "cut_text", "first_line", "fit_cells", "grid_text", "help_text", "is_exec_result", "is_stream", "kv_lines",
           "method_list_lines", "network_text", "parse_filters", "ports_text", "render", "render_exec", "route_rows",
           "render_json", "scalar_text", "short_id", "table_text", "to_jsonable", "view_text"]
