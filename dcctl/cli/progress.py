"""dcctl's view of a progress stream (the hub's image_pull): a rich progress
bar with bytes and rate on a terminal, one line per report otherwise (and
one JSON object per line with --json, dcctl.output.render_json).  Items are
{phase "running"|"done", bytes_done, bytes_total, rate_bytes_s, elapsed_s,
host?, result? (with the last)}."""
from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from dcctl import output

__all__ = ["PROGRESS_METHODS", "STREAM_FORMS", "is_progress", "show", "track"]

#: Methods whose stream is progress (the hub's; the agent's imports).
PROGRESS_METHODS = ("image_pull", "image_push_progress", "image_import_progress", "image_upload_finish_progress")
#: A method and its progress-stream form, taken (without --json: there the
#: plain answer stays, and the stream is called by its own name) when the
#: server has it (same arguments; the last item's result is the answer).
STREAM_FORMS = {"image_import": "image_import_progress", "image_upload_finish": "image_upload_finish_progress"}


def is_progress(item: Any) -> bool:
    """Whether ``item`` is a progress report."""
    return isinstance(item, dict) and "bytes_done" in item and "phase" in item


def _size(n: Any) -> str:
    return output.cell_text("x_bytes", n) if isinstance(n, (int, float)) else "?"


def _line(item: dict) -> str:
    total = item.get("bytes_total") or 0
    pct = f" {100.0 * item['bytes_done'] / total:5.1f}%" if total else ""
    where = f"{item['host']}: " if item.get("host") else ""
    step = f"{item['step']} " if item.get("step") else ""
    return (f"{where}{step}{item['phase']} {_size(item['bytes_done'])} of {_size(total)}{pct} "
            f"at {_size(item.get('rate_bytes_s', 0))}/s")


def track(items: Iterable[dict], stream: TextIO | None = None) -> dict | None:
    """Render a progress stream on ``stream`` (default stdout): a rich bar
    per step on a terminal, one line per report otherwise.  Returns: the
    last item (None for an empty stream).  Raises: the stream's errors."""
    stream = stream or sys.stdout
    last: dict | None = None
    if stream.isatty():
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TransferSpeedColumn)
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                      TimeElapsedColumn(), console=Console(file=stream)) as bar:
            task = step = None
            for item in items:
                last = item
                if not is_progress(item):
                    continue
                if task is None or item.get("step") != step:
                    if task is not None:
                        bar.update(task, completed=bar.tasks[-1].total or bar.tasks[-1].completed)
                    step = item.get("step")
                    label = " ".join(str(x) for x in (item.get("host"), step) if x) or "progress"
                    task = bar.add_task(label, total=item["bytes_total"] or None)
                bar.update(task, completed=item["bytes_done"], total=item["bytes_total"] or None)
    else:
        for item in items:
            last = item
            if is_progress(item):
                print(_line(item), file=stream, flush=True)
    return last


def show(items: Iterable[dict], stdout: TextIO | None = None) -> int:
    """Show a progress stream; the final item's result as key: value lines."""
    stdout = stdout or sys.stdout
    last = track(items, stdout)
    result = (last or {}).get("result")
    if isinstance(result, dict):
        manifest = result.get("manifest") or (result if "layers" in result else {})
        summary = {k: v for k, v in result.items() if k != "manifest"} if manifest is not result else {}
        summary.update({"image": manifest.get("name"), "id": manifest.get("id")})
        for line in output.kv_lines(summary):
            print(line, file=stdout)
    return 0
