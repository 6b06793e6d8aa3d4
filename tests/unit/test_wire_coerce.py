"""The one text-to-type coercion (dcctl.wire.coerce) that dcctl and the
hub's broadcast/queue both use: the edge cases of both old rules."""
from __future__ import annotations

import pytest

from dcctl import errors
from dcctl.wire.coerce import Param, coerce_args, coerce_text, json_value, params_of, parse_size


def p(types: str, name: str = "x", **kw) -> Param:
    return Param(name, tuple(t.strip() for t in types.split("|")), **kw)


@pytest.mark.parametrize("types, text, want", [
    ("int", "42", 42), ("int", "-7", -7), ("int", "+3", 3), ("int", "007", 7),
    ("float", "0.5", 0.5), ("float", "-1e3", -1000.0), ("float", ".5", 0.5), ("float", "3", 3.0),
    ("int | float", "2", 2), ("int | float", "2.5", 2.5),
    ("bool", "true", True), ("bool", "Yes", True), ("bool", "ON", True), ("bool", "1", True),
    ("bool", "false", False), ("bool", "no", False), ("bool", "off", False), ("bool", "0", False),
    ("int | None", "none", None), ("int | None", "NULL", None), ("str | None", "null", None),
    ("str", "none", "none"), ("str", "42", "42"), ("str", "", ""),
    ("list | str", "[1, 2]", [1, 2]), ("list | str", "ls", "ls"), ("dict", '{"a": 1}', {"a": 1}),
    ("any", "5", 5), ("any", "true", True), ("any", "[1]", [1]), ("any", "web", "web"), ("any", "NaN", "NaN"),
    ("any", '"quoted"', '"quoted"'), ("any", "null", "null"),
    ("int | str", "12", 12), ("int | str", "1_000", "1_000"), ("int | str", " 5", " 5"),
    ("Request", "anything", "anything"),  # a type outside the rules: the text
])
def test_words_become_the_declared_type(types, text, want):
    got = coerce_text(text, p(types))
    assert got == want and type(got) is type(want)


def test_sizes_only_for_int_parameters_named_bytes():
    assert coerce_text("512M", p("int", "memory_bytes")) == 512 << 20
    assert coerce_text("1.5G", p("int", "memory_bytes")) == 3 << 29
    assert coerce_text("4KiB", p("int", "max_bytes")) == 4096
    assert coerce_text("2tb", p("int", "max_bytes")) == 2 << 40
    assert coerce_text("512M", p("int | str", "count")) == "512M"
    assert parse_size("12") is None and parse_size("1P") is None


@pytest.mark.parametrize("types, text", [
    ("int", "1_000"), ("int", " 5"), ("int", "1.5"), ("int", "0x10"), ("int", ""),
    ("float", "nan"), ("float", "inf"), ("float", "-Infinity"), ("float", "1e400"), ("float", "1_0"),
    ("bool", "y"), ("bool", "maybe"), ("int", "none"), ("dict", "[1]"), ("list", "{}"), ("list", "x"),
])
def test_text_that_fits_no_type_is_an_invalid_argument(types, text):
    with pytest.raises(errors.InvalidArgument, match="argument 'x' must be"):
        coerce_text(text, p(types))


def test_a_default_of_none_takes_the_none_words():
    assert coerce_text("none", p("int", has_default=True, default=None)) is None
    with pytest.raises(errors.InvalidArgument):
        coerce_text("none", p("int", has_default=True, default=3))


def test_args_by_an_inspect_entry_leave_what_fits_nothing():
    info = {"args": [{"name": "name", "type": "str"}, {"name": "port", "type": "int"},
                     {"name": "timeout_s", "type": "float | None", "default": None}, {"name": "*rest", "type": "bool"}]}
    params = params_of(info)
    assert [q.name for q in params] == ["name", "port", "timeout_s", "rest"] and params[3].var
    assert coerce_args(["web", "80", "none", "yes", "off", "x", 7], params) == ["web", 80, None, True, False, "x", 7]
    assert coerce_args(["web", "eighty"], params) == ["web", "eighty"]  # the method's own check answers
    assert coerce_args(["a", "1", "2"], params_of({"args": [{"name": "a"}]})) == ["a", "1", "2"]
    assert coerce_args(["5"], []) == ["5"]


def test_flag_values():
    assert json_value("3") == 3 and json_value("1.5") == 1.5 and json_value("false") is False
    assert json_value('{"a": [1]}') == {"a": [1]} and json_value("x") == "x" and json_value("Infinity") == "Infinity"
