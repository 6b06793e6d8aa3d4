"""dcctl build's context upload shows bytes sent of the total and a rate
(stderr, off a terminal: the final line), against a real HubService over a
real socket: the context (12 MiB, three chunks) arrives whole on the hub;
the build on a host the hub does not know is then refused (NoSuchHost), and --json output
keeps its contract (no progress line on stdout)."""
from __future__ import annotations

import io
import os

import pytest

from dcctl import errors, wire
from dcctl.build import run_build
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore


@pytest.fixture
def hub(tmp_path):
    store = HubStore(str(tmp_path / "hub"))
    service = HubService(store, Registry(str(tmp_path / "hub" / "registry")), heartbeat_s=0.2, missed_heartbeats=3)
    svc = wire.Service(service, "dc-hub")
    endpoint = f"ipc://{tmp_path}/hub.sock"
    svc.bind(endpoint)
    svc.start()
    client = wire.RpcClient(endpoint, timeout_s=60)
    yield client
    client.close()
    svc.stop()
    service.stop()
    store.close()


@pytest.fixture
def context(tmp_path):
    ctx = tmp_path / "evtctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nCOPY blob /blob\n")
    (ctx / "blob").write_bytes(os.urandom(12 << 20))
    return str(ctx)


def test_the_context_upload_shows_bytes_sent_and_rate(hub, context):
    err, out = io.StringIO(), io.StringIO()
    with pytest.raises(errors.NoSuchHost):
        run_build(hub, [context], [("t", "evtctx:v1"), ("host", "evtnosuch")], False, out=out, err=err)
    lines = err.getvalue().splitlines()
    assert lines[0].startswith("sending context (2 entries")
    final = next(line for line in lines if line.startswith("sending context ["))
    assert "100.0%" in final and "12.0/12.0 MiB" in final and "MiB/s" in final
    assert out.getvalue() == ""


def test_json_output_has_no_progress_line(hub, context):
    err, out = io.StringIO(), io.StringIO()
    with pytest.raises(errors.NoSuchHost):
        run_build(hub, [context], [("t", "evtctx:v1"), ("host", "evtnosuch")], True, out=out, err=err)
    assert out.getvalue() == "" and err.getvalue() == ""
