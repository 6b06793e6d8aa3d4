"""dcctl.output: readable and JSON rendering, without a server."""
from __future__ import annotations

import io
import json

from dcctl import output


def render(result):
    out, err = io.StringIO(), io.StringIO()
    code = output.render(result, out, err)
    return code, out.getvalue(), err.getvalue()


def test_to_jsonable_bytes():
    assert output.to_jsonable({"a": b"hi", "b": b"\xff", "c": (1, 2)}) == {
        "a": "hi", "b": {output.BASE64_KEY: "/w=="}, "c": [1, 2]}


def test_table_columns_in_first_seen_order():
    text = output.table_text([{"name": "a", "n": 1}, {"name": "bb", "extra": {"x": [1]}, "n": None}])
    assert text.splitlines() == ["name  n  extra", "a     1  -", 'bb    -  {"x":[1]}']


def test_kv_lines_nested():
    lines = output.kv_lines({"a": 1, "b": {"c": True, "d": {}}, "e": [], "f": [{"g": 1, "h": 2}, "x"],
                             "i": None})
    assert lines == ["a: 1", "b:", "  c: true", "  d: {}", "e: []", "f:", "  - g: 1", "    h: 2",
                     "  - x", "i: -"]


def test_scalars_and_lists():
    assert render("hello") == (0, "hello\n", "")
    assert render(None) == (0, "", "")
    assert render(["a", 1, False]) == (0, "a\n1\nfalse\n", "")
    assert render([]) == (0, "", "")


def test_exec_result():
    code, out, err = render({"exit_code": 300, "stdout": b"o\n", "stderr": b"e\n",
                             "stdout_truncated": True, "timed_out": True})
    assert code == 300 % 256 and out == "o\n"
    assert err.splitlines() == ["e", "dcctl: note: stdout was truncated", "dcctl: note: the command timed out"]
    assert output.exec_exit_code({"exit_code": None, "stdout": b""}) == 1
    code, out, err = render({"exit_code": 0, "stdout": b"started\n", "stderr": b"",
                             "stdout_incomplete": True, "stderr_incomplete": True})
    assert (code, out) == (0, "started\n")
    assert err.splitlines() == ["dcctl: note: a background process still holds the command's stdout/stderr; "
                                "what it writes later is not shown"]
    assert not output.is_exec_result({"exit_code": 0})


def test_stream_rendering():
    code, out, _ = render(iter([{"step": "pull", "done_bytes": 3}, "end"]))
    assert (code, out) == (0, "step=pull done_bytes=3\nend\n")
    buf = io.StringIO()
    output.render_json(iter([{"a": 1}, {"b": b"x"}]), buf)
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == [{"a": 1}, {"b": "x"}]


def test_method_list_lines():
    assert output.method_list_lines({"ab": "First.\nMore.", "c": ""}) == ["ab  First.", "c   <undocumented>"]
