"""dcctl's output and usage as a new operator met them (the trial's
findings): real output functions on realistic rows, real argument parsing,
dcctl run in-process against a real wire.Service on a throwaway ipc://
endpoint.  No root needed."""
from __future__ import annotations

import io
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
