"""dcctl end to end against a real wire.Service on a throwaway ipc:// endpoint.

The service runs in a greenlet of the test process; dcctl runs in-process
(``cli.run``) or as a real subprocess (gevent.subprocess, so that the hub
keeps serving while the test waits).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import gevent
import pytest
from gevent import subprocess as gsubprocess

from dcctl import cli, errors, wire
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Sample:
    """A small served object whose methods look like the agent's."""

    @wire.expose
    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Returns: a + b.
        """
        return a + b

    @wire.expose
    def echo(self, name: str, count: int = 1, ratio: float = 0.5, flag: bool = False,
             options: dict | None = None) -> dict:
        """Send the arguments back as a dict."""
        return {"name": name, "count": count, "ratio": ratio, "flag": flag, "options": options}

    @wire.expose
    def maybe(self, limit: int | None = None) -> dict:
        """Take an optional int."""
        return {"limit": limit}

    @wire.expose
    def container_exec(self, name: str, command: list | str, options: dict | None = None) -> dict:
        """Exec-shaped: stdout is the command joined, exit_code from options 'code'."""
        return {"exit_code": int((options or {}).get("code", 0)),
                "stdout": (" ".join(command) + "\n").encode(), "stderr": "warn \u2713\n".encode(),
                "stdout_truncated": False, "stderr_truncated": False, "timed_out": False}

    @wire.expose
    def container_ls(self) -> list:
        """A list of dicts (a table)."""
        return [{"name": "web.app", "state": "RUNNING", "ports": [80, 443]},
                {"name": "db", "state": "STOPPED", "ports": [], "note": {"k": 1}}]

    @wire.expose
    def container_enter(self, name: str, command: list | str | None = None,
                        options: dict | None = None) -> dict:
        """Would open a session (the CLI hands it to dcctl.enter)."""
        return {"token": "t", "name": name, "command": command}

    @wire.expose
    def hostinfo(self) -> dict:
        """Nested dict with bytes."""
        return {"host": "h1", "memory": {"total_bytes": 2048}, "tags": ["a", "b"],
                "raw": b"\xff\x00", "text": b"hello"}

    @wire.expose
    def boom(self, name: str) -> None:
        """Always fails with NoSuchContainer."""
        raise errors.NoSuchContainer(f"no container {name!r}")

    @wire.expose
    def slow(self, seconds: float) -> str:
        """Sleep, then answer."""
        gevent.sleep(seconds)
        return "done"


@pytest.fixture
def endpoint():
    """A fresh ipc:// endpoint served by Sample in this process.  (A short
    directory under /tmp: tmp_path can pass the 107-byte ipc path limit.)"""
    tmp = tempfile.mkdtemp(prefix="dcctl-test-")
    ep = f"ipc://{tmp}/sample.sock"
    service = wire.Service(Sample(), "sample")
    service.bind(ep)
    task = service.start()
    yield ep
    service.stop()
    task.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def run(capsys, *argv, env=None):
    """cli.run in-process; returns (exit code, stdout, stderr)."""
    code = cli.run(list(argv), environ=env or {})
    out, err = capsys.readouterr()
    return code, out, err


def run_subprocess(ep: str, *argv: str) -> gsubprocess.CompletedProcess:
    """dcctl as a real process (bytes output), against ``ep``."""
    env = {**os.environ, "PYTHONPATH": REPO, cli.HOST_ENV: ep}
    return gsubprocess.run([sys.executable, "-c", "from dcctl.cli import main; main()", *argv],
                           capture_output=True, env=env, timeout=60, cwd=REPO)


# --------------------------------------------------------------- conversion

def test_int_args_and_plain_result(capsys, endpoint):
    assert run(capsys, "-H", endpoint, "add", "2", "40") == (0, "42\n", "")


def test_int_float_bool_and_options(capsys, endpoint):
    code, out, err = run(capsys, "-H", endpoint, "--json", "echo", "bob", "3", "1.5", "yes",
                         "--mem-limit-bytes", "512M", "--ports", "[80,443]", "--tag", "a",
                         "--tag", "b", "--env", "A=1", "--env", "B=x=y", "--quiet", "true",
                         "--label", "web", "--retries=2")
    assert code == 0, err
    assert json.loads(out) == {
        "name": "bob", "count": 3, "ratio": 1.5, "flag": True,
        "options": {"mem_limit_bytes": 512 * 1024 ** 2, "ports": [80, 443], "tag": ["a", "b"],
                    "env": {"A": "1", "B": "x=y"}, "quiet": True, "label": "web", "retries": 2}}


def test_options_fill_skipped_optional_params_with_defaults(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "--json", "echo", "bob",
                       "--options-json", '{"a": 1, "b": "x"}', "--b", "y")
    assert code == 0
    assert json.loads(out) == {"name": "bob", "count": 1, "ratio": 0.5, "flag": False,
                               "options": {"a": 1, "b": "y"}}


def test_none_word_for_optional_int(capsys, endpoint):
    assert run(capsys, "-H", endpoint, "--json", "maybe", "null")[1].split() == ["{", '"limit":', "null", "}"]
    assert json.loads(run(capsys, "-H", endpoint, "--json", "maybe", "7")[1]) == {"limit": 7}


def test_list_param_takes_remaining_words_and_exec_passthrough(capsys, endpoint):
    code, out, err = run(capsys, "-H", endpoint, "container_exec", "web", "cat", "/etc/hosts")
    assert (code, out) == (0, "cat /etc/hosts\n")
    assert err.startswith("warn")


def test_bare_flag_means_true(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "--json", "echo", "bob", "--no-start", "--x", "2")
    assert code == 0 and json.loads(out)["options"] == {"no_start": True, "x": 2}


def test_command_words_after_the_command_are_literal(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "container_exec", "web", "ls", "-l", "--json")
    assert code == 0 and out == "ls -l --json\n"


def test_double_dash_passes_dashed_words(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "container_exec", "web", "--code", "3", "--", "ls", "-l")
    assert (code, out) == (3, "ls -l\n")


def test_global_options_after_method(capsys, endpoint):
    code, out, _ = run(capsys, "container_ls", "--json", "--timeout", "5", env={cli.HOST_ENV: endpoint})
    assert code == 0
    assert json.loads(out)[0]["name"] == "web.app"


# --------------------------------------------------------------- output

def test_table_output(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "--wide", "container_ls")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["name", "state", "ports", "note"]
    assert lines[1].split() == ["web.app", "RUNNING", "[80,443]", "-"]
    assert lines[2].split() == ["db", "STOPPED", "[]", '{"k":1}']


def test_listing_default_view_and_filters(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "container_ls")
    assert code == 0
    assert [line.split() for line in out.splitlines()] == [
        ["name", "state", "image", "address", "ports", "age"],
        ["web.app", "RUNNING", "-", "-", "80,", "443", "-"], ["db", "STOPPED", "-", "-", "-", "-"]]
    code, out, _ = run(capsys, "-H", endpoint, "container_ls", "--filter", "name=web", "--filter", "name=db",
                       "--filter=state=stopped", "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["db"]
    code, out, _ = run(capsys, "-H", endpoint, "--filter", "name=nothing", "container_ls")
    assert (code, out.split()) == (0, ["name", "state", "image", "address", "ports", "age"])


@pytest.mark.parametrize("argv, text", [
    (("--filter", "colour=red", "container_ls"), "cannot filter on 'colour'"),
    (("--filter", "state", "container_ls"), "KEY=VALUE"),
    (("container_ls", "--filter"), "needs a value"),
    (("--filter", "name=x", "add", "1", "2"), "no listing to filter"),
    (("--filter", "host=h1", "hostinfo"), "not a listing"),
])
def test_bad_filters_are_usage_errors(capsys, endpoint, argv, text):
    code, out, err = run(capsys, "-H", endpoint, *argv)
    assert (code, out) == (2, "") and err.startswith("dcctl: UsageError: ") and text in err, err


def test_dict_output_and_json_bytes(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "hostinfo")
    assert code == 0
    assert out.splitlines() == ["host: h1", "memory:", "  total_bytes: 2.0 KiB", "tags: a, b",
                                'raw: {"$base64":"/wA="}', "text: hello"]
    code, out, _ = run(capsys, "-H", endpoint, "--json", "hostinfo")
    data = json.loads(out)
    assert data["raw"] == {"$base64": "/wA="} and data["text"] == "hello"


def test_json_exec_result_exits_zero(capsys, endpoint):
    code, out, _ = run(capsys, "-H", endpoint, "--json", "container_exec", "web", "--code", "5", "--", "x")
    assert code == 0
    assert json.loads(out)["exit_code"] == 5


# --------------------------------------------------------------- errors

def test_typed_error_line_and_exit_1(capsys, endpoint):
    assert run(capsys, "-H", endpoint, "boom", "web") == (
        1, "", "dcctl: NoSuchContainer: no container 'web'\n")


def test_unknown_method_is_the_servers_no_such_method(capsys, endpoint):
    code, out, err = run(capsys, "-H", endpoint, "nosuch", "1")
    assert code == 1 and out == ""
    assert err.startswith("dcctl: NoSuchMethod: ") and "nosuch" in err


@pytest.mark.parametrize("argv, text", [
    (["add", "1", "x"], "argument 'b' must be int, got 'x'"),
    (["add", "1"], "missing argument 'b'"),
    (["add", "1", "2", "3"], "too many arguments: 3"),
    (["add", "1", "2", "--x", "1"], "add takes no --options"),
    (["container_start", "web", "-l"], "unknown option -l"),
    (["echo", "bob", "--timeout"], "option --timeout needs a value"),
    (["echo", "bob", "--env", "novalue"], "--env wants NAME=VALUE"),
    (["--timeout", "0", "add", "1", "2"], "--timeout wants a positive number"),
])
def test_usage_errors_exit_2(capsys, endpoint, argv, text):
    code, out, err = run(capsys, "-H", endpoint, *argv)
    assert (code, out) == (2, "")
    first, *rest = err.splitlines()
    assert first.startswith("dcctl: UsageError: ") and text in first
    assert all(line.startswith("hint: ") for line in rest)


@pytest.mark.parametrize("argv", [
    ["echo", "bob", "--memory-bytes", "9999999999999T"],  # 2**63 and more: msgpack cannot carry it
    ["echo", "bob", "--count", "18446744073709551616"],
    ["echo", "bob", "--options-json", '{"deep": {"n": -9223372036854775809}}'],
    ["add", "99999999999999999999999", "1"],
    ["maybe", "18446744073709551616"],
])
def test_integers_out_of_the_wire_range_are_usage_errors(capsys, endpoint, argv):
    code, out, err = run(capsys, "-H", endpoint, *argv)
    assert (code, out) == (2, "")
    assert err.startswith("dcctl: InvalidArgument: ") and "out of range" in err
    assert "Traceback" not in err and "OverflowError" not in err
    code, out, _ = run(capsys, "-H", endpoint, "echo", "bob", "--count", "18446744073709551615", "--json")
    assert code == 0 and '"count": 18446744073709551615' in out


def test_bad_endpoint_is_a_usage_error(capsys):
    code, _, err = run(capsys, "-H", "localhost:80", "hostinfo")
    assert code == 2 and err.startswith("dcctl: UsageError: bad endpoint")


def test_unreachable_exit_3(capsys, tmp_path):
    code, out, err = run(capsys, "-H", f"ipc://{tmp_path}/missing.sock", "hostinfo")
    assert (code, out) == (3, "")
    assert err.startswith("dcctl: Unreachable: ")


def test_timeout_exit_3_with_hint(capsys, endpoint):
    code, _, err = run(capsys, "-H", endpoint, "--timeout", "0.3", "slow", "5")
    lines = err.splitlines()
    assert code == 3
    assert lines[0].startswith("dcctl: CallTimeout: ") and lines[1].startswith("hint: ")


# --------------------------------------------------------------- listing, help

@pytest.mark.parametrize("argv", [[], ["methods"]])
def test_method_listing(capsys, endpoint, argv):
    code, out, _ = run(capsys, *argv, env={cli.HOST_ENV: endpoint})
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == f"[sample] {endpoint}"
    assert "add" in lines[1] and lines[1].endswith("Add two integers.")
    assert any(line.split(None, 1) == ["boom", "Always fails with NoSuchContainer."] for line in lines)


@pytest.mark.parametrize("argv", [["help", "echo"], ["echo", "--help"]])
def test_method_help(capsys, endpoint, argv):
    code, out, _ = run(capsys, "-H", endpoint, *argv)
    assert code == 0
    assert out.splitlines()[0] == "usage: dcctl echo NAME [COUNT] [RATIO] [FLAG] [--OPTION VALUE ...]"
    assert "count    int = 1" in out and "Send the arguments back as a dict." in out


def test_help_of_list_param_and_unknown_method(capsys, endpoint):
    out = run(capsys, "-H", endpoint, "help", "container_exec")[1]
    assert out.startswith("usage: dcctl container_exec NAME COMMAND... [--OPTION VALUE ...]")
    code, _, err = run(capsys, "-H", endpoint, "help", "nosuch")
    assert code == 1 and err.startswith("dcctl: NoSuchMethod:")


def test_global_help_needs_no_server(capsys):
    code, out, _ = run(capsys, "--help", env={cli.HOST_ENV: "ipc:///nonexistent/x.sock"})
    assert code == 0 and "dcctl call ENDPOINT" in out


# --------------------------------------------------------------- interactive hook

def test_interactive_handler_gets_parsed_args(capsys, endpoint, monkeypatch):
    seen = []

    def handler(client, args, options):
        seen.append((client.endpoint, args, options))
        return 4

    monkeypatch.setitem(cli.INTERACTIVE_HANDLERS, "container_enter", handler)
    code, _, _ = run(capsys, "-H", endpoint, "container_enter", "web", "--", "top", "-b")
    assert code == 4
    assert seen == [(endpoint, ["web", ["top", "-b"]], {})]


def test_interactive_handler_can_fall_back_to_a_plain_call(capsys, endpoint, monkeypatch):
    monkeypatch.setitem(cli.INTERACTIVE_HANDLERS, "container_enter", lambda c, a, o: None)
    code, out, _ = run(capsys, "-H", endpoint, "--json", "container_enter", "web")
    assert code == 0 and json.loads(out) == {"token": "t", "name": "web", "command": None}


# --------------------------------------------------------------- dcctl call

def test_call_lists_methods(capsys, endpoint):
    code, out, _ = run(capsys, "call", endpoint)
    lines = out.splitlines()
    assert code == 0 and lines[0] == "[sample]"
    assert lines[1].split(None, 1) == ["add", "Add two integers."]


def test_call_with_json_args(capsys, endpoint):
    assert run(capsys, "call", endpoint, "add", "1", "2", "--json") == (0, "3\n", "")


def test_call_without_json_sends_strings(capsys, endpoint):
    code, _, err = run(capsys, "call", endpoint, "add", "1", "2")
    assert code == 1 and err.startswith("dcctl: InvalidArgument: add: argument 'a' must be int")
    code, out, _ = run(capsys, "call", endpoint, "echo", "bob")
    assert code == 0
    assert out == "{'count': 1, 'flag': False, 'name': 'bob', 'options': None, 'ratio': 0.5}\n"


def test_call_print_json_and_bad_json(capsys, endpoint):
    code, out, _ = run(capsys, "call", endpoint, "hostinfo", "-pj")
    assert code == 0 and json.loads(out)["memory"] == {"total_bytes": 2048}
    assert run(capsys, "call", endpoint, "add", "{", "--json")[0] == 2


# --------------------------------------------------------------- real processes

def test_subprocess_exec_passthrough(endpoint):
    done = run_subprocess(endpoint, "container_exec", "web", "--code", "7", "--", "ls", "-l")
    assert (done.returncode, done.stdout, done.stderr) == (7, b"ls -l\n", "warn \u2713\n".encode())


def test_subprocess_table_and_json(endpoint):
    done = run_subprocess(endpoint, "container_ls", "--wide")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().splitlines()[1].split() == ["web.app", "RUNNING", "[80,443]", "-"]
    done = run_subprocess(endpoint, "add", "1", "2", "--json")
    assert (done.returncode, done.stdout) == (0, b"3\n")


def test_subprocess_errors_have_no_traceback(endpoint, tmp_path):
    done = run_subprocess(endpoint, "boom", "x")
    assert (done.returncode, done.stderr) == (1, b"dcctl: NoSuchContainer: no container 'x'\n")
    done = run_subprocess(f"ipc://{tmp_path}/gone.sock", "hostinfo")
    assert done.returncode == 3 and b"Traceback" not in done.stderr
    assert done.stderr.startswith(b"dcctl: Unreachable: ")


def test_main_exits_with_the_code(endpoint):
    with pytest.raises(SystemExit) as exc:
        cli.main(["-H", endpoint, "boom", "x"])
    assert exc.value.code == 1


def test_ctrl_c_ends_dcctl_even_when_started_with_sigint_ignored(endpoint):
    """A non-interactive shell starts background commands with SIGINT
    ignored, which Python keeps (no KeyboardInterrupt ever): dcctl puts the
    default handler back, so ^C ends a call (or a live view) with 130."""
    import signal
    env = {**os.environ, "PYTHONPATH": REPO, cli.HOST_ENV: endpoint}
    proc = gsubprocess.Popen([sys.executable, "-c", "from dcctl.cli import main; main()", "slow", "600"],
                             stdout=gsubprocess.PIPE, stderr=gsubprocess.PIPE, env=env, cwd=REPO,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        def catches_sigint() -> bool:  # dcctl's handler is in place (SigCgt has SIGINT's bit)
            status = open(f"/proc/{proc.pid}/status").read()
            return bool(int(status.split("SigCgt:")[1].split()[0], 16) & (1 << (signal.SIGINT - 1)))

        wait_for(catches_sigint, 30, "dcctl to take SIGINT")
        gevent.sleep(0.5)  # and on to its call
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
