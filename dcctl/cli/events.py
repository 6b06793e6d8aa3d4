"""``dcctl events [--follow] [--since TIME|INDEX] [--filter KEY=VALUE ...]``:
the hub's fleet events (hub/events.py).

Without --follow: the hub's ``events`` (a list): a table, or with --json
one JSON list of ``{index, at, type, ...}``.  With --follow: the hub's
``events_follow`` stream, one line per event as it comes (a JSON object
per line with --json) until interrupted.  --since: an index (digits below
1000000000: the events after it; give the last index seen to resume with
nothing lost or repeated), Unix seconds (``@UNIX``, or a bare number of 10
digits or more, or one with a fraction, as Docker's ``--since 1796131100``),
an ISO 8601 time or a duration ago (``10m``); default: from the oldest kept.  --filter goes to the hub (keys container, host,
type, image; the same key ORs, different keys AND).
"""
from __future__ import annotations

import sys
from typing import TextIO

from dcctl import output
from dcctl.cli.args import Command, UsageError

__all__ = ["run_events", "event_line"]

_TRUE = ("true", "yes", "on", "1")


def _options(cmd: Command) -> tuple[str, bool]:
    since, follow = "0", False
    for name, value in cmd.flags:
        if name == "since":
            since = value
        elif name == "follow":
            if value.lower() not in _TRUE + ("false", "no", "off", "0"):
                raise UsageError(f"--follow takes no value (got {value!r})")
            follow = value.lower() in _TRUE
        else:
            raise UsageError(f"events takes no --{name}", hint="dcctl events [--follow] [--since TIME|INDEX] "
                                                             "[--filter KEY=VALUE ...]")
    if cmd.words:
        raise UsageError(f"events takes no arguments (got {' '.join(cmd.words)})",
                         hint="dcctl events --since INDEX")
    return since, follow


def event_line(event: dict) -> str:
    """One event as a line: index, UTC time, type, host, container, detail."""
    when = output.cell_text("at", event.get("at"))
    detail = " ".join(f"{k}={output.scalar_text(v)}" for k, v in event.items() if k not in output.EVENT_COLUMNS)
    parts = [str(event.get("index", "-")), when, str(event.get("type") or event.get("kind")),
             f"host={event.get('host') or '-'}", f"name={event.get('container') or event.get('name') or '-'}"]
    return "  ".join(parts + ([detail] if detail else []))


def run_events(client, cmd: Command, stdout: TextIO | None = None) -> int:
    """Run ``dcctl events ...`` on ``client`` (the hub); returns the exit code.
    Raises: UsageError; the hub's errors (InvalidArgument, EventsExpired, SlowConsumer)."""
    stdout = stdout or sys.stdout
    since, follow = _options(cmd)
    if not follow:
        result = client.call("events", since, list(cmd.filters), timeout_s=cmd.timeout_s)
        if cmd.json:
            return output.render_json(result, stdout)
        return output.render(result, method="events", wide=cmd.wide, stdout=stdout)
    with client.stream("events_follow", since, list(cmd.filters)) as items:
        for event in items:
            print(output.dumps(event, indent=None) if cmd.json else event_line(event), file=stdout)
            stdout.flush()
    return 0
