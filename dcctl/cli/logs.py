"""``dcctl container_logs NAME [--follow] [--since T] [--tail N] [--timestamps]``:
the container's records as text (stdout records on stdout, stderr records on
stderr, as ``docker logs`` prints them), each after its time with
--timestamps; with --follow the stream (``container_logs_follow``) until the
container stops or ^C.  With --json: without --follow the answer as it is
(``{lines: [{at, stream, text}], ...}``), with --follow one JSON record a line.
An answer the agent cut to its newest 10,000 records (``truncated``) gets a
notice on stderr in text mode.
"""
from __future__ import annotations

import datetime
import json
import sys
from typing import TextIO

from dcctl import wire

__all__ = ["record_text", "run"]


def record_text(rec: dict, timestamps: bool) -> str:
    """One record as a line: its text, after its time (RFC 3339, UTC, in
    microseconds) with ``timestamps``."""
    if not timestamps:
        return rec["text"]
    at = datetime.datetime.fromtimestamp(rec["at"], datetime.timezone.utc)
    return f"{at.strftime('%Y-%m-%dT%H:%M:%S.%fZ')} {rec['text']}"


def _print(lines: list[dict], timestamps: bool, as_json: bool, out: TextIO, err: TextIO) -> None:
    for rec in lines:
        if as_json:
            print(json.dumps(rec, ensure_ascii=False), file=out)
        else:
            print(record_text(rec, timestamps), file=err if rec["stream"] == "stderr" else out)
    out.flush()
    err.flush()


def _cut_notice(shown: int, what: str = "") -> str:
    """The stderr line of an answer cut to the agent's cap (MAX_RECORDS)."""
    hint = "use --tail/--since" + ("" if what else " or --follow")
    return f"dcctl: showing the last {shown} records{' ' + what if what else ''}; {hint}"


def run(client: wire.RpcClient, name: str, options: dict, as_json: bool, timeout_s: float,
        out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Call container_logs (or container_logs_follow with ``follow``) and
    print the records; returns the exit code (0).  Raises: the call's errors."""
    out, err = out or sys.stdout, err or sys.stderr
    opts = dict(options)
    follow = bool(opts.pop("follow", False))
    timestamps = bool(opts.get("timestamps", False))
    if not follow:
        result = client.call("container_logs", name, opts, timeout_s=timeout_s)
        if as_json:
            print(json.dumps(result, ensure_ascii=False), file=out)
            return 0
        _print(result["lines"], timestamps, False, out, err)
        if result.get("truncated"):
            print(_cut_notice(len(result["lines"])), file=err)
        if result.get("dropped_records"):
            print(f"dcctl: the log writer dropped {result['dropped_records']} records "
                  f"({result['dropped_bytes']} bytes; disk full?)", file=err)
        return 0
    stream = getattr(client, "stream", None)  # a follower waits as long as it takes (no per-item timeout)
    items = stream("container_logs_follow", name, opts) if stream else \
        client.call("container_logs_follow", name, opts, timeout_s=timeout_s)
    try:
        for item in items:
            if item.get("truncated") and not as_json:  # before the records, so it does not scroll away
                print(_cut_notice(item.get("history_records", len(item["lines"])), "written so far, then what comes"),
                      file=err)
            _print(item["lines"], timestamps, as_json, out, err)
    except KeyboardInterrupt:
        return 130
    finally:
        close = getattr(items, "close", None)
        if close:
            close()
    return 0
