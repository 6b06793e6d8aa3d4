"""dcctl's output and usage as a new operator met them (the trial's
findings): real output functions on realistic rows, real argument parsing,
dcctl run in-process against a real wire.Service on a throwaway ipc://
endpoint.  No root needed."""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile

import pytest

from dcctl import cli, errors, output, validate, wire

NOW = 1_760_000_000.0
IMAGE_ID = "3f2a9c0d4e5b6a7988776655443322110ffeeddccbbaa99887766554433221100"
LAYER = "9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b"
README = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "README.md")


def view(method, result, wide=False):
    out, err = io.StringIO(), io.StringIO()
    code = output.render(result, out, err, method=method, wide=wide, now=NOW)
    assert err.getvalue() == "" and code == 0
    return out.getvalue().splitlines()


def assert_fits(lines):
    too_wide = [line for line in lines if len(line) > output.TABLE_WIDTH]
    assert not too_wide, too_wide


# ------------------------------------------------------------ 1. image_ls TAG

def image_row(tag, image_id, hub=False):
    row = {"name": "umociapp", "tag": tag, "id": image_id, "created": NOW - 600, "size_bytes": 5_432_100,
           "layers": [LAYER], "exposed_ports": [{"proto": "tcp", "port": 8080}]}
    if not hub:  # an agent's rows also carry the command
        row["command"] = ["/app/server", "--listen", ":8080"]
    return row


@pytest.mark.parametrize("hub", [False, True])
def test_image_ls_shows_the_tag(hub):
    rows = [image_row(t, f"{i}" * 64, hub) for i, t in enumerate(["1.0", "2.0", "latest"], 1)]
    lines = view("image_ls", rows)
    assert_fits(lines)
    assert lines[0].split()[:3] == ["name", "tag", "id"]
    assert [line.split()[:3] for line in lines[1:]] == [["umociapp", "1.0", "1" * 12], ["umociapp", "2.0", "2" * 12],
                                                        ["umociapp", "latest", "3" * 12]]


# ------------------------------------------------------------ 2. route_ls view

def routes(n_backends=2):
    long_name = "www." + "a-very-long-application-name-for-the-trial." * 2 + "dcf.test"
    return [{"name": long_name, "kind": "http", "listen_port": None,
             "backends": [{"container": f"jerome.awesome.application-backend-{i}", "container_port": 8080,
                           "host": f"dcops-host-{i}", "address": f"10.212.0.{10 + i}", "port": 20983 + i,
                           "healthy": i != 2, "status": "up" if i != 2 else "host_unreachable"}
                          for i in range(1, n_backends + 1)]},
            {"name": "tcp:5432", "kind": "tcp", "listen_port": 5432,
             "backends": [{"container": "shop.db", "container_port": 5432, "host": "dcops-host-3",
                           "address": "10.212.0.13", "port": 21000, "healthy": True, "status": "up"}]}]


def test_route_ls_default_view_fits_and_wide_shows_all():
    assert max(map(len, output.table_text(output.route_rows(routes())).splitlines())) > 150  # the old table
    lines = view("route_ls", routes())
    assert_fits(lines)
    assert lines[0].split() == ["name", "container", "port", "host", "address", "health"]
    assert lines[1].split()[2:] == ["8080", "dcops-host-1", "10.212.0.11:20984", "healthy"]
    assert lines[2].split()[-1] == "host_unreachable"
    assert lines[3].split() == ["tcp:5432", "shop.db", "5432", "dcops-host-3", "10.212.0.13:21000", "healthy"]
    wide = view("route_ls", routes(), wide=True)
    assert wide[0].split() == output.ROUTE_WIDE_HEADERS
    assert routes()[0]["name"] in wide[1] and "jerome.awesome.application-backend-1" in wide[1]


def test_empty_route_ls_prints_its_header():
    for wide in (False, True):
        assert view("route_ls", [], wide=wide) == ["name  container  port  host  address  health"]


# ------------------------------------------------------------ 3. container_ls widths

def container_row(name, i):
    return {"host": f"dcops-host-{i}", "name": name, "state": "running", "image": "busybox", "image_id": IMAGE_ID,
            "address": f"10.217.0.{100 + i}", "created": NOW - 3600,
            "ports": [{"proto": "tcp", "host_port": 20900 + i, "container_port": 80}]}


def test_a_long_name_does_not_cut_every_rows_ports():
    long_name = "jerome.awesome." + "x" * 48
    assert len(long_name) == 63
    rows = [container_row("web", 1), container_row(long_name, 2), container_row("db", 3)]
    lines = view("container_ls", rows)
    assert_fits(lines)
    assert [line.split()[5] for line in lines[1:]] == ["20901->80/tcp", "20902->80/tcp", "20903->80/tcp"]
    assert lines[1].split()[1] == "web" and lines[3].split()[1] == "db"
    cut = lines[2].split()[1]
    assert cut.endswith(output.ELLIPSIS) and long_name.startswith(cut[:-1])
    assert max(map(len, lines)) == output.TABLE_WIDTH  # the name gets all the room the others leave
    # an agent's rows (no host column): the same
    agent = view("container_ls", [{k: v for k, v in r.items() if k != "host"} for r in rows])
    assert_fits(agent)
    assert [line.split()[4] for line in agent[1:]] == ["20901->80/tcp", "20902->80/tcp", "20903->80/tcp"]
    # short names: nothing is cut
    short = view("container_ls", [container_row("web", 1), container_row("db", 3)])
    assert output.ELLIPSIS not in "".join(short)


# ------------------------------------------------------------ 6. the cpus bound

def test_cpus_messages_give_the_bound_that_is_real():
    with pytest.raises(errors.InvalidArgument) as low:  # the hub's check (host not known yet)
        validate.create_options({"cpus": 0})
    assert "at least 0.01" in low.value.message and "4096" not in low.value.message
    with pytest.raises(errors.InvalidArgument) as high:  # an agent's, with its CPU count
        validate.create_options({"cpus": 1000}, max_cpus=2)
    assert "at most 2 (this host's CPU count)" in high.value.message and "got 1000" in high.value.message
    with pytest.raises(errors.InvalidArgument) as hub_high:
        validate.create_options({"cpus": 5000})
    assert "at most the host's CPU count" in hub_high.value.message
    with pytest.raises(errors.InvalidArgument) as low_agent:
        validate.create_options({"cpus": 0.001}, max_cpus=2)
    assert "at least 0.01" in low_agent.value.message
    assert validate.create_options({"cpus": 0.5}, max_cpus=2)["cpus"] == 0.5


# ------------------------------------------------------------ a served stand-in for the hub's surface

class HubSurface:
    """Methods with the hub's signatures (image_push, the upload protocol,
    container_destroy/stop, create_container's option check by
    dcctl.validate), recording what dcctl sent."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.received = bytearray()
        self.fail_finish: str | None = None

    @wire.expose
    def image_push(self, host: str, ref: str) -> dict:
        """Copy an image from a host into the registry."""
        self.calls.append(("image_push", host, ref))
        return {"host": host, "ref": ref}

    @wire.expose
    def image_upload_begin(self, size_bytes: int, sha256: str) -> dict:
        """Begin an upload."""
        self.calls.append(("image_upload_begin", size_bytes, sha256))
        return {"upload_id": sha256, "offset": len(self.received), "complete": False}

    @wire.expose
    def image_upload_chunk(self, upload_id: str, offset: int, data: bytes) -> dict:
        """One chunk."""
        self.calls.append(("image_upload_chunk", offset, len(data)))
        self.received[offset:] = data
        return {"offset": len(self.received)}

    @wire.expose
    def image_upload_finish(self, upload_id: str, name: str, options: dict | None = None) -> dict:
        """Import it (as the hub's: options host, select, format)."""
        opts = validate.options(options, {"host": "", "select": "", "format": ""}, "image_upload_finish")
        self.calls.append(("image_upload_finish", name, opts))
        if self.fail_finish:
            raise errors.InvalidImage(self.fail_finish)
        return {"manifest": {"name": name.partition(":")[0], "tag": "1.0", "id": IMAGE_ID},
                "host": opts.get("host", "host-1"), "bytes": len(self.received)}

    @wire.expose
    def container_destroy(self, name: str, force: bool = False) -> dict:
        """Destroy (force: kill a running container)."""
        self.calls.append(("container_destroy", name, force))
        return {"name": name, "force": force}

    @wire.expose
    def container_stop(self, name: str, timeout_s: float | None = None) -> dict:
        """Stop."""
        self.calls.append(("container_stop", name, timeout_s))
        return {"name": name, "timeout_s": timeout_s}

    @wire.expose
    def create_container(self, image: str, name: str, options: dict | None = None) -> dict:
        """Options checked by the agent's rules, as the hub does."""
        validate.create_options(options)
        return {"name": name}


@pytest.fixture
def hub():
    tmp = tempfile.mkdtemp(prefix="dcctl-trial-")
    surface = HubSurface()
    service = wire.Service(surface, "hub")
    service.bind(f"ipc://{tmp}/hub.sock")
    task = service.start()
    yield surface, f"ipc://{tmp}/hub.sock", tmp
    service.stop()
    task.kill()
    shutil.rmtree(tmp, ignore_errors=True)


def run(capsys, ep, *argv):
    code = cli.run(list(argv), environ={cli.HOST_ENV: ep})
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------ 4, 5. error lines and exit codes

def test_error_lines_and_exit_codes_are_as_the_readme_says(capsys, hub):
    surface, ep, _ = hub
    code, out, err = run(capsys, ep, "create_container", "busybox", "web", "--cpus", "0")
    assert code == 1 and err.splitlines() == ["dcctl: InvalidArgument: cpus must be at least 0.01, got 0"]
    code, out, err = run(capsys, ep, "create_container", "busybox", "web", "--env", "NOEQUALS")
    assert code == 2 and err.splitlines() == ["dcctl: UsageError: create_container: --env wants NAME=VALUE, "
                                              "got 'NOEQUALS'"]
    code, out, err = run(capsys, ep, "create_container", "busybox", "web", "extra")
    assert code == 2 and err.splitlines() == ["dcctl: UsageError: create_container: too many arguments: extra",
                                              "hint: dcctl help create_container"]
    readme = " ".join(open(README).read().split())
    assert "then a second line `hint: ...` when the error carries a hint" in readme
    assert "1 for a typed error from the server. That includes an argument or option the server refuses" in readme
    assert "2 for a usage error dcctl finds before it calls" in readme and "`--env` without `=`" in readme


# ------------------------------------------------------------ 7. container_destroy NAME --force

def test_parameters_by_flag_for_methods_without_options(capsys, hub):
    surface, ep, _ = hub
    assert run(capsys, ep, "container_destroy", "web", "--force")[0] == 0
    assert run(capsys, ep, "container_destroy", "web", "--force", "false")[0] == 0
    assert run(capsys, ep, "container_destroy", "web")[0] == 0
    assert run(capsys, ep, "container_stop", "web", "--timeout-s", "5")[0] == 0
    assert surface.calls == [("container_destroy", "web", True), ("container_destroy", "web", False),
                             ("container_destroy", "web", False), ("container_stop", "web", 5.0)]
    code, out, err = run(capsys, ep, "container_destroy", "web", "--nosuch")
    assert code == 2 and "takes no --options" in err
    readme = open(README).read()
    assert "container_destroy\n  NAME --force" in readme and "NAME force`" not in readme


# ------------------------------------------------------------ 8. image_push FILE NAME

def archive(tmp, size=3 * 1024 * 1024 + 17):
    path = os.path.join(tmp, "app.tar")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    return path


def test_image_push_checks_the_name_before_uploading(capsys, hub):
    surface, ep, tmp = hub
    code, out, err = run(capsys, ep, "image_push", archive(tmp), "Bad Name!")
    assert code == 2 and err.startswith("dcctl: InvalidArgument: ") and "Bad Name!" in err
    assert "usage: dcctl image_push FILE[:TAG] NAME[:TAG]" in err
    assert surface.calls == [] and not surface.received


def test_image_push_options_json_and_the_users_path_in_errors(capsys, hub):
    surface, ep, tmp = hub
    path = archive(tmp)
    code, out, err = run(capsys, ep, "image_push", path, "umociapp:1.0", "--host", "host-2", "--json")
    assert code == 0, err
    assert json.loads(out)["host"] == "host-2" and json.loads(out)["bytes"] == os.path.getsize(path)
    assert surface.calls[-1] == ("image_upload_finish", "umociapp:1.0", {"host": "host-2"})
    assert bytes(surface.received) == open(path, "rb").read()

    surface.received.clear()
    surface.fail_finish = ("cannot read /var/lib/dcfleet/agent/images/tmp/upload-k3x_9aQz as an image: "
                           "not a tar archive")
    code, out, err = run(capsys, ep, "image_push", path, "umociapp:1.0")
    assert code == 1
    assert err.splitlines()[-1] == f"dcctl: InvalidImage: cannot read {path} as an image: not a tar archive"
    assert "upload-" not in err

    code, out, err = run(capsys, ep, "image_push", path, "umociapp:1.0", "--nosuch", "x")
    assert code == 2 and "image_push FILE takes no --nosuch" in err and "--host" in err
    code, out, err = run(capsys, ep, "image_push", path)
    assert code == 2 and "usage: dcctl image_push FILE[:TAG] NAME[:TAG] [--host HOST]" in err
    # a host name as the first word is still the hub's image_push HOST REF
    assert run(capsys, ep, "image_push", "host-1", "busybox")[0] == 0
    assert surface.calls[-1] == ("image_push", "host-1", "busybox")


def test_image_push_help_shows_both_forms(capsys, hub):
    surface, ep, tmp = hub
    code, out, err = run(capsys, ep, "help", "image_push")
    assert code == 0
    assert out.splitlines()[:2] == ["usage: dcctl image_push HOST REF",
                                    "   or: dcctl image_push FILE[:TAG] NAME[:TAG] [--host HOST] [--format FORMAT]"
                                    "  (FILE: a local archive or layout to upload)"]
