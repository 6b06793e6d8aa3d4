"""``dcctl stats [NAME...] [--no-stream] [--interval SECONDS] [--json]``: a
live table of the running containers' figures, like ``docker stats``.

Against the hub it covers the fleet (its ``hostinfo``: every host's), against
an agent that host.  CPU % is CPU time used between two samples over the time
between them (100 % is one CPU, as Docker counts); memory is the cgroup's use
against its limit (or the host's RAM when it has none).  On a terminal the
table refreshes in place (rich's Live) every --interval seconds (default 2)
until ^C; with --no-stream or --json, or when stdout is not a terminal, one
snapshot (two samples --interval apart, at most 1 s) is printed: a table, or
with --json a list of {name, host, cpu_percent, memory_bytes,
memory_limit_bytes, memory_percent, net_rx_bytes, net_tx_bytes}.  A host that
did not answer (through the hub) is named: a line on stderr (the live
table's caption), and with --json a row {host, status ("error" |
"timeout"), message, unreachable: true} after the containers' rows.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

from dcctl import errors
from dcctl.units import size_text

__all__ = ["sample", "rows", "table", "silent_text", "run"]

COLUMNS = ("NAME", "HOST", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O")


def sample(client, timeout_s: float) -> tuple[float, list[dict], list[dict]]:
    """(monotonic time, [{host, memory_total_bytes, containers [...]}], the
    hosts that did not answer [{host, status ("error" | "timeout"),
    message}]) of one hostinfo call (the hub's: a list of hosts; an agent's:
    one)."""
    info = client.call("hostinfo", timeout_s=timeout_s)
    hosts = info if isinstance(info, list) else [info]
    out, silent = [], []
    for h in hosts:
        if isinstance(h, dict) and h.get("status", "ok") == "ok" and "containers" in h:
            out.append({"host": h.get("host"), "memory_total_bytes": (h.get("metrics") or {}).get("memory_total_bytes"),
                        "containers": h["containers"]})
        elif isinstance(h, dict):
            silent.append({"host": h.get("host"), "status": h.get("status", "error"),
                           "message": h.get("message") or h.get("error") or "no hostinfo"})
    return time.monotonic(), out, silent


def _silent(before: tuple, after: tuple) -> list[dict]:
    """The hosts missing from either sample (their containers are not in
    the rows), by host."""
    seen: dict = {}
    for s in (before, after):
        for h in s[2] if len(s) > 2 else []:
            seen.setdefault(h["host"], h)
    return [seen[h] for h in sorted(seen, key=str)]


def silent_text(silent: list[dict]) -> str:
    """The stderr line naming the hosts that did not answer."""
    from dcctl.output import unreachable_text
    return unreachable_text(silent, "their containers are")


def rows(before: tuple[float, list[dict]], after: tuple[float, list[dict]], names: list[str] | None = None) -> list[dict]:
    """The running containers' figures between two samples, by name."""
    dt = max(1e-6, after[0] - before[0])
    cpu0 = {(h["host"], c["name"]): c.get("cpu_seconds") for h in before[1] for c in h["containers"]}
    out = []
    for h in after[1]:
        for c in h["containers"]:
            if c.get("state") != "running" or (names and c["name"] not in names):
                continue
            prev, now = cpu0.get((h["host"], c["name"])), c.get("cpu_seconds")
            cpu = round(100.0 * max(0.0, now - prev) / dt, 2) if prev is not None and now is not None else None
            limit = c.get("memory_limit_bytes") or h.get("memory_total_bytes")
            mem = c.get("memory_bytes")
            out.append({"name": c["name"], "host": h["host"], "cpu_percent": cpu, "memory_bytes": mem,
                        "memory_limit_bytes": limit,
                        "memory_percent": round(100.0 * mem / limit, 2) if mem is not None and limit else None,
                        "net_rx_bytes": c.get("net_rx_bytes"), "net_tx_bytes": c.get("net_tx_bytes")})
    return sorted(out, key=lambda r: (r["name"], r["host"] or ""))


def _b(n) -> str:
    return size_text(n)


def _cells(r: dict) -> list[str]:
    return [r["name"], r["host"] or "-", "-" if r["cpu_percent"] is None else f"{r['cpu_percent']:.2f}%",
            f"{_b(r['memory_bytes'])} / {_b(r['memory_limit_bytes'])}",
            "-" if r["memory_percent"] is None else f"{r['memory_percent']:.2f}%",
            f"{_b(r['net_rx_bytes'])} / {_b(r['net_tx_bytes'])}"]


def table(rs: list[dict]):
    """A rich Table of the rows."""
    from rich.table import Table
    t = Table(box=None, pad_edge=False, header_style="bold")
    for col in COLUMNS:
        t.add_column(col, justify="right" if col in ("CPU %", "MEM %") else "left", no_wrap=True)
    for r in rs:
        t.add_row(*_cells(r))
    return t


def _plain(rs: list[dict], out: TextIO) -> None:
    cells = [list(COLUMNS)] + [_cells(r) for r in rs]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def run(client, names: list[str], flags: dict, as_json: bool, timeout_s: float, out: TextIO | None = None,
        err: TextIO | None = None) -> int:
    """``dcctl stats``; ``flags``: no_stream (bool), interval (seconds).
    Returns the exit code.  Raises: the calls' errors, UsageError."""
    from dcctl.cli.args import UsageError
    out = out or sys.stdout
    unknown = sorted(set(flags) - {"no_stream", "interval"})
    if unknown:
        raise UsageError(f"stats takes no --{unknown[0].replace('_', '-')}",
                         hint="dcctl stats [NAME...] [--no-stream] [--interval SECONDS] [--json]")
    try:
        interval = float(flags.get("interval", 2.0))
    except (TypeError, ValueError):
        interval = -1.0
    if not 0.1 <= interval <= 3600:
        raise UsageError("stats: --interval takes seconds from 0.1 to 3600")
    live = not (as_json or flags.get("no_stream") in (True, "true") or not out.isatty())
    first = sample(client, timeout_s)
    if not live:
        time.sleep(min(1.0, interval))
        second = sample(client, timeout_s)
        rs, silent = rows(first, second, names), _silent(first, second)
        if as_json:
            import json
            print(json.dumps(rs + [{**h, "unreachable": True} for h in silent]), file=out)
        else:
            _plain(rs, out)
            if silent:
                print(silent_text(silent), file=err or sys.stderr)
        return 0
    from rich.console import Console
    from rich.live import Live
    before = first
    try:
        with Live(table([]), console=Console(file=out), auto_refresh=False) as view:
            while True:
                time.sleep(interval)
                try:
                    now = sample(client, timeout_s)
                except (errors.CallTimeout, errors.Unreachable):
                    continue  # best effort: the next refresh tries again
                t = table(rows(before, now, names))
                if _silent(before, now):
                    t.caption = silent_text(_silent(before, now)).removeprefix("dcctl: ")
                view.update(t, refresh=True)
                before = now
    except KeyboardInterrupt:
        return 0
