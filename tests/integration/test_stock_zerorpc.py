"""The stock ``zerorpc`` 0.6.3 CLI (Python 3.9, see tests/zerorpc39.py)
against a wire.Service in its own process: listing proves our
``_zerorpc_inspect`` answers the way the stock client expects."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from dcctl import errors, wire
from tests import zerorpc39

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SERVER = '''
import sys
from dcctl import errors, wire

class Sample:
    @wire.expose
    def add(self, a: int, b: int) -> int:
        """Add two integers.

        Returns: a + b.
        """
        return a + b

    @wire.expose
    def greet(self, name: str, punctuation: str = "!") -> dict:
        """Greet someone by name."""
        return {"greeting": "hello " + name + punctuation, "sizes": [1, 2]}

    @wire.expose
    def fail(self, name: str) -> None:
        """Always raises NoSuchContainer."""
        raise errors.NoSuchContainer("no container %r" % name)

service = wire.Service(Sample(), "sample")
service.bind(sys.argv[1])
service.run()
'''


@pytest.fixture(scope="module")
def zerorpc_exe():
    """The stock CLI's path (builds the 3.9 venv on first use)."""
    try:
        return zerorpc39.ensure_zerorpc39()
    except zerorpc39.Python39Missing as exc:
        pytest.skip(str(exc))


@pytest.fixture
def server_endpoint(request):
    """A Sample service in a child process on a fresh ipc:// endpoint."""
    tmp = tempfile.mkdtemp(prefix="dcctl-stock-")
    endpoint = f"ipc://{tmp}/sample.sock"
    proc = subprocess.Popen([sys.executable, "-c", SERVER, endpoint], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": REPO},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def finish():
        proc.kill()
        proc.wait(timeout=10)
        proc.stderr.close()
        shutil.rmtree(tmp, ignore_errors=True)

    request.addfinalizer(finish)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
        if os.path.exists(f"{tmp}/sample.sock"):
            try:
                with wire.connect(endpoint, timeout_s=2) as client:
                    client.call("_zerorpc_ping")
                return endpoint
            except errors.DcError:
                pass
        time.sleep(0.05)
    pytest.fail("the sample server did not answer in 30 s")


def test_stock_cli_lists_methods_with_docs(zerorpc_exe, server_endpoint):
    done = zerorpc39.stock_zerorpc(server_endpoint)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[sample]"
    assert [line.split(None, 1) for line in lines[1:]] == [
        ["add", "Add two integers."], ["fail", "Always raises NoSuchContainer."],
        ["greet", "Greet someone by name."]]


def test_stock_cli_inspect_shows_signatures(zerorpc_exe, server_endpoint):
    done = zerorpc39.stock_zerorpc(server_endpoint, "-?")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[sample]", "add(a, b)", "fail(name)", "greet(name, punctuation=!)"]


def test_stock_cli_calls_with_json_args(zerorpc_exe, server_endpoint):
    done = zerorpc39.stock_zerorpc(server_endpoint, "add", "1", "2", "--json")
    assert (done.returncode, done.stdout) == (0, "3\n"), done.stderr


def test_stock_cli_calls_with_string_args(zerorpc_exe, server_endpoint):
    done = zerorpc39.stock_zerorpc(server_endpoint, "greet", "bob", "?")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "{'greeting': 'hello bob?', 'sizes': [1, 2]}\n"
    done = zerorpc39.stock_zerorpc(server_endpoint, "greet", "bob", "-pj")
    assert done.stdout == '{"greeting": "hello bob!", "sizes": [1, 2]}'


def test_stock_cli_error_has_no_server_traceback(zerorpc_exe, server_endpoint):
    done = zerorpc39.stock_zerorpc(server_endpoint, "fail", "web")
    assert done.returncode != 0
    assert 'File "' not in done.stderr.split("zerorpc.exceptions.RemoteError")[-1]  # no server frames


def test_stock_cli_error_names_the_error(zerorpc_exe, server_endpoint):
    done = zerorpc39.stock_zerorpc(server_endpoint, "fail", "web")
    assert "NoSuchContainer" in done.stderr and "no container 'web'" in done.stderr


def dcctl_call(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dcctl.cli", "call", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})


@pytest.mark.parametrize("args", [(), ("add", "1", "2", "--json"), ("greet", "bob", "?"),
                                  ("greet", "bob", "-pj")])
def test_dcctl_call_answers_as_the_stock_cli(zerorpc_exe, server_endpoint, args):
    """``dcctl call`` is the documented ad hoc client: same syntax, same
    output as the stock CLI where that one runs (Python 3.9)."""
    stock = zerorpc39.stock_zerorpc(server_endpoint, *args)
    ours = dcctl_call(server_endpoint, *args)
    assert stock.returncode == ours.returncode == 0, (stock.stderr, ours.stderr)
    if args:
        assert ours.stdout.strip() == stock.stdout.strip()
    else:  # the listing: same names and first doc lines
        assert [line.split(None, 1) for line in ours.stdout.splitlines()] == \
            [line.split(None, 1) for line in stock.stdout.splitlines()]


def test_stock_cli_on_this_python_crashes_on_calls(server_endpoint):
    """What the README says of the stock CLI that set-up installs into
    python3 (3.10+): it lists methods, and every call dies in the CLI
    itself (collections.Iterator); a 3.9 one or ``dcctl call`` works."""
    if sys.version_info < (3, 10):
        pytest.skip("the stock CLI works on Python <= 3.9")
    cli = [sys.executable, "-c", "import sys; from zerorpc.cli import main; sys.exit(main())"]
    listing = subprocess.run([*cli, server_endpoint], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "add" in listing.stdout, listing.stderr
    called = subprocess.run([*cli, server_endpoint, "add", "1", "2", "--json"], capture_output=True, text=True,
                            timeout=60)
    assert called.returncode != 0 and "collections' has no attribute 'Iterator'" in called.stderr
    assert dcctl_call(server_endpoint, "add", "1", "2", "--json").stdout == "3\n"
