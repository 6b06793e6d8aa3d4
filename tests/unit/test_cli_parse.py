"""dcctl's command-line splitting and argument conversion, without a server."""
from __future__ import annotations

import pytest

from dcctl import cli
from dcctl.cli import Param, UsageError


def params(*args: dict) -> list[Param]:
    return cli.params_of({"args": list(args)})


EXEC = params({"name": "name", "type": "str"}, {"name": "command", "type": "list | str"},
              {"name": "options", "type": "dict | None", "default": None})


def test_split_argv_globals_anywhere_and_double_dash():
    cmd = cli.split_argv(["--json", "container_exec", "web", "-H", "tcp://h:1", "--env", "A=B",
                          "--timeout=2.5", "--", "ls", "--all"], {})
    assert (cmd.endpoint, cmd.json, cmd.timeout_s, cmd.method) == ("tcp://h:1", True, 2.5, "container_exec")
    assert cmd.words == ["web", "ls", "--all"]
    assert cmd.flags == [("env", "A=B")]


def test_split_argv_wide_and_filters_are_dcctl_own():
    cmd = cli.split_argv(["--wide", "container_ls", "--filter", "state=running", "--filter=name=a=b"], {})
    assert (cmd.method, cmd.wide, cmd.filters, cmd.flags, cmd.words) == (
        "container_ls", True, ["state=running", "name=a=b"], [], [])
    with pytest.raises(UsageError, match="--filter needs a value"):
        cli.split_argv(["container_ls", "--filter", "--wide"], {})


def test_split_argv_endpoint_from_env_and_default():
    assert cli.split_argv([], {cli.HOST_ENV: "ipc:///x"}).endpoint == "ipc:///x"
    assert cli.split_argv([], {}).endpoint == cli.DEFAULT_ENDPOINT
    assert cli.split_argv([], {}).method is None


def test_an_endpoint_given_twice_is_a_usage_error_not_the_last_one_silently():
    for argv in (["-H", "tcp://a:1", "-H", "tcp://b:1", "hub_info"],
                 ["--hub", "tcp://a:1", "-H", "tcp://b:1", "hub_info"],
                 ["--hub=tcp://a:1", "--host", "tcp://b:1", "hub_info"]):
        with pytest.raises(UsageError, match="endpoint is given twice.*tcp://a:1.*tcp://b:1"):
            cli.split_argv(argv, {})
    # the environment's is overridden by one given on the command line, and --host after METHOD pins a host
    cmd = cli.split_argv(["-H", "tcp://a:1", "create_container", "busybox", "x", "--host", "h2"],
                         {cli.HOST_ENV: "ipc:///e"})
    assert cmd.endpoint == "tcp://a:1" and cmd.flags == [("host", "h2")]


def test_negative_numbers_are_words():
    assert cli.split_argv(["add", "-5", "-0.5"], {}).words == ["-5", "-0.5"]


@pytest.mark.parametrize("word, types, expected", [
    ("42", "int", 42), ("-3", "int", -3), ("1.5", "float", 1.5), ("2", "float", 2.0),
    ("yes", "bool", True), ("0", "bool", False), ("OFF", "bool", False),
    ("none", "int | None", None), ("null", "str | None", None), ("none", "str", "none"),
    ("7", "int | str", 7), ("x", "int | str", "x"), ('{"a": 1}', "dict", {"a": 1}),
    ("[1]", "list", [1]), ("3", "any", 3), ("word", "any", "word"), ("p", "Path", "p"),
])
def test_convert_word(word, types, expected):
    got = cli.convert_word("m", params({"name": "x", "type": types})[0], word)
    assert got == expected and type(got) is type(expected)


def test_convert_word_size_for_bytes_params():
    p = params({"name": "max_bytes", "type": "int"})[0]
    assert cli.convert_word("m", p, "64K") == 65536


@pytest.mark.parametrize("word, types", [("x", "int"), ("1.5", "int"), ("maybe", "bool"),
                                         ("nan", "float"), ("x", "dict")])
def test_convert_word_rejects(word, types):
    with pytest.raises(UsageError, match="must be"):
        cli.convert_word("m", params({"name": "x", "type": types})[0], word)


@pytest.mark.parametrize("text, expected", [
    ("1K", 1024), ("512M", 512 << 20), ("2G", 2 << 30), ("1T", 1 << 40), ("1.5k", 1536),
    ("4MiB", 4 << 20), ("10", None), ("M", None), ("1X", None),
])
def test_parse_size(text, expected):
    assert cli.parse_size(text) == expected


def test_build_options():
    got = cli.build_options("m", [
        ("options-json", '{"keep": 1, "x": 0}'), ("x", "5"), ("mem-limit-bytes", "1G"),
        ("name", "web"), ("flag", "false"), ("ports", "[1, 2]"), ("v", "a"), ("v", "b"), ("v", "c"),
        ("env", "A=1"), ("env", '{"B": "2"}'), ("inf", "Infinity"), ("q", '"quoted"'), ("n", "null"),
    ])
    assert got == {"keep": 1, "x": 5, "mem_limit_bytes": 1 << 30, "name": "web", "flag": False,
                   "ports": [1, 2], "v": ["a", "b", "c"], "env": {"A": "1", "B": "2"},
                   "inf": "Infinity", "q": '"quoted"', "n": "null"}


def test_build_options_rejects_non_object_options_json():
    with pytest.raises(UsageError, match="JSON object"):
        cli.build_options("m", [("options-json", "[1]")])


def test_build_call_list_param_and_options():
    values, options, wire_args = cli.build_call("container_exec", EXEC, ["web", "cat", "/etc/hosts"], [])
    assert (values, options, wire_args) == (["web", ["cat", "/etc/hosts"]], None, ["web", ["cat", "/etc/hosts"]])
    _, options, wire_args = cli.build_call("container_exec", EXEC, ["web", "ls"], [("timeout-s", "5")])
    assert wire_args == ["web", ["ls"], {"timeout_s": 5}]


def test_build_call_required_options_dict_is_sent_empty():
    ps = params({"name": "name", "type": "str"}, {"name": "options", "type": "dict"})
    assert cli.build_call("m", ps, ["a"], [])[2] == ["a", {}]


def test_build_call_var_args():
    ps = params({"name": "*ports", "type": "int"})
    assert cli.build_call("m", ps, ["1", "2"], [])[2] == [1, 2]
    assert cli.usage("m", ps) == "dcctl m [PORTS...]"


def test_usage_line():
    assert cli.usage("container_exec", EXEC) == "dcctl container_exec NAME COMMAND... [--OPTION VALUE ...]"


def test_call_timeout_rules():
    cmd = cli.split_argv(["hostinfo"], {})
    assert cli.call_timeout(cmd, None) == cli.wire.DEFAULT_TIMEOUT_SECONDS
    cmd = cli.split_argv(["container_exec"], {})
    assert cli.call_timeout(cmd, {}) == 330.0
    assert cli.call_timeout(cmd, {"timeout_s": 600}) == 630.0
    cmd = cli.split_argv(["--timeout", "3", "container_exec"], {})
    assert cli.call_timeout(cmd, {"timeout_s": 600}) == 3.0
