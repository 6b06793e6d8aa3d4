"""One text-to-type coercion: arguments typed as words (dcctl, the stock
zerorpc CLI, the hub's broadcast and queue) become the types a method
declares in its ``_zerorpc_inspect`` entry.

The rules, for a parameter whose inspect type is a union such as
``int | None`` (tried in this order; the first that fits wins):

- ``None`` in the types, or a default of None: ``none`` / ``null`` (any case) is None;
- ``int``: an optional sign and decimal digits (``-12``, ``+3``; no spaces,
  no ``_``); a parameter whose name ends in ``_bytes`` also takes sizes
  ``512M``, ``1.5G``, ``4KiB``, ``2TB`` (K/M/G/T are powers of 1024);
- ``float``: a finite decimal number (``0.5``, ``-1e3``, ``.5``; never
  ``nan`` or ``inf``);
- ``bool``: ``true/yes/on/1`` or ``false/no/off/0``, any case;
- ``dict`` / ``list``: a JSON object / array;
- ``any`` (no annotation): a JSON number, bool, list or object, else the text;
- ``str``, or only types outside these: the text itself.

Text that fits none of them raises InvalidArgument.  Flag values for an
options map (``--key value``) use ``json_value`` (and ``parse_size`` for keys
ending in ``_bytes``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Iterable

from dcctl.errors import InvalidArgument

__all__ = ["TRUE_WORDS", "FALSE_WORDS", "NONE_WORDS", "Param", "params_of", "parse_size", "json_value",
           "coerce_text", "coerce_args"]

TRUE_WORDS = frozenset({"true", "yes", "on", "1"})
FALSE_WORDS = frozenset({"false", "no", "off", "0"})
NONE_WORDS = frozenset({"none", "null"})
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_FLOAT_RE = re.compile(r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)\s*([KMGT])(?:I?B)?$", re.IGNORECASE)
_KNOWN = {"int", "float", "bool", "dict", "list", "tuple", "None"}


@dataclasses.dataclass
class Param:
    """One parameter of a method's ``_zerorpc_inspect`` entry."""

    name: str
    types: tuple[str, ...]  # ("int", "None"), ("any",) when unannotated
    has_default: bool = False
    default: Any = None
    var: bool = False  # *args

    @property
    def is_list(self) -> bool:
        return not self.var and any(t in ("list", "tuple") for t in self.types)

    @property
    def takes_none(self) -> bool:
        return "None" in self.types or (self.has_default and self.default is None)


def params_of(info: dict) -> list[Param]:
    """The Params of an inspect entry ``{args: [{name, type, default?}]}``
    (``*name`` marks a var-positional parameter; no args: [])."""
    out = []
    for arg in info.get("args") or []:
        name = str(arg["name"])
        types = tuple(t.strip() for t in str(arg.get("type", "any")).split("|"))
        out.append(Param(name.lstrip("*"), types, "default" in arg, arg.get("default"), var=name.startswith("*")))
    return out


def parse_size(text: str) -> int | None:
    """``512M`` -> 536870912 (K/M/G/T: powers of 1024; ``KiB``/``KB`` too);
    None when the text has no size suffix."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        return None
    return int(float(m.group(1)) * 1024 ** ("KMGT".index(m.group(2).upper()) + 1))


def json_value(text: str) -> Any:
    """A JSON number, bool, list or object parsed from ``text``, else the
    text itself (``NaN``/``Infinity`` and JSON strings and null stay text)."""
    try:
        value = json.loads(text, parse_constant=lambda c: text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool, list, dict)) else text


def coerce_text(text: str, param: Param) -> Any:
    """``text`` converted for ``param`` by the module's rules.

    Raises:
        InvalidArgument: the text fits none of the parameter's types.
    """
    types = param.types
    word = text.lower()
    if param.takes_none and word in NONE_WORDS:
        return None
    if "int" in types:
        size = parse_size(text) if param.name.endswith("_bytes") else None
        if size is not None:
            return size
        if _INT_RE.match(text):
            return int(text, 10)
    if "float" in types and _FLOAT_RE.match(text) and math.isfinite(float(text)):
        return float(text)
    if "bool" in types and word in TRUE_WORDS | FALSE_WORDS:
        return word in TRUE_WORDS
    for kind, cls in (("dict", dict), ("list", list)):
        if kind in types and isinstance(json_value(text), cls):
            return json_value(text)
    if "any" in types:
        return json_value(text)
    if "str" in types or not set(types) & _KNOWN:
        return text
    raise InvalidArgument(f"argument {param.name!r} must be {' | '.join(types)}, got {text!r}")


def coerce_args(args: Iterable[Any], params: list[Param]) -> list:
    """Positional ``args`` with each string converted for its parameter
    (a var-positional parameter takes the rest); values that are not
    strings, strings beyond the parameters and strings that fit no type are
    left as they are, for the method's own checks to answer."""
    out = []
    fixed = [p for p in params if not p.var]
    var = next((p for p in params if p.var), None)
    for i, value in enumerate(args):
        param = fixed[i] if i < len(fixed) else var
        if isinstance(value, str) and param is not None:
            try:
                value = coerce_text(value, param)
            except InvalidArgument:
                pass
        out.append(value)
    return out
