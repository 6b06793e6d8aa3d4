"""Readable units for people: sizes and ages.

Only for text meant to be read (dcctl's tables, error messages); the wire
always carries plain numbers (bytes, seconds).
"""
from __future__ import annotations

from typing import Any

SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size_text(n: Any) -> str:
    """Bytes as text in powers of 1024: ``512 B``, ``1.5 KiB``, ``256.0 MiB``;
    ``-`` for a value that is not a number."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in SIZE_UNITS:
        if abs(value) < 1024 or unit == SIZE_UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # not reached


def age_text(seconds: Any) -> str:
    """A duration in seconds as one short figure, like kubectl's AGE:
    ``45s``, ``12m``, ``3h``, ``5d``; ``-`` for a value that is not a number."""
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return "-"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 120 * 60:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


__all__ = ["age_text", "size_text"]
