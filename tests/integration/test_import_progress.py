"""image_import as a progress stream on a real agent over its real socket:
a gzipped rootfs tarball big enough to take seconds (many small files and
some incompressible data) reports its unpack as it goes (bytes of the
archive read, its size, a rate), then its pack, then the manifest; the
agent's loop keeps answering other calls (and heartbeats) during it; dcctl
shows it as lines on stderr with the answer as image_import's on stdout,
and as JSON lines with --json image_import_progress.  image_import itself answers as before."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time

import gevent
import pytest

from dcctl import errors
from tests.agentproc import REPO

pytestmark = pytest.mark.lxc

PREFIX = "evtimp"
SMALL_FILES = 12_000
BLOB_BYTES = 48 << 20


@pytest.fixture(scope="module")
def big_tgz(tmp_path_factory):
    """A rootfs tarball of SMALL_FILES small files and BLOB_BYTES of random data."""
    base = tmp_path_factory.mktemp("evtimp")
    path = base / "rootfs.tgz"
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for d in range(SMALL_FILES // 500):
            info = tarfile.TarInfo(f"usr/share/d{d}")
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for i in range(SMALL_FILES):
            data = (f"file {i}\n" * 40).encode()
            info = tarfile.TarInfo(f"usr/share/d{i // 500}/f{i}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, _bytes(data))
        for n in range(4):
            data = os.urandom(BLOB_BYTES // 4)
            info = tarfile.TarInfo(f"opt/blob{n}")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, _bytes(data))
    return str(path)


def _bytes(data: bytes):
    import io
    return io.BytesIO(data)


@pytest.fixture
def agent(shared_agent):
    yield shared_agent
    for img in shared_agent.call("image_ls"):
        if img["name"].startswith(PREFIX):
            shared_agent.call("image_rm", f"{img['name']}@{img['id'][:12]}")


def test_an_import_streams_its_progress_and_the_loop_keeps_answering(agent, big_tgz):
    size = os.path.getsize(big_tgz)
    items, answers = [], []
    with agent.client(timeout_s=120) as client, agent.client(timeout_s=30) as other:
        stream = client.stream("image_import_progress", big_tgz, f"{PREFIX}big")
        for item in stream:
            items.append(item)
            if item.get("step") == "unpack" and 0 < item["bytes_done"] < size and len(answers) < 5:
                started = time.monotonic()
                other.call("image_ls")  # another caller is served while the unpack runs
                answers.append(time.monotonic() - started)
    done = items[-1]
    assert done["phase"] == "done" and done["result"]["name"] == f"{PREFIX}big"
    assert done["result"]["id"] in [i["id"] for i in agent.call("image_ls")]
    running = [i for i in items[:-1] if i["phase"] == "running"]
    unpack = [i for i in running if i.get("step") == "unpack"]
    mid = [i for i in unpack if 0 < i["bytes_done"] < size]
    assert len(mid) >= 2, items  # progress arrived before the end, more than once
    assert all(i["bytes_total"] in (0, size) for i in unpack) and mid[0]["bytes_total"] == size
    assert [i["bytes_done"] for i in unpack] == sorted(i["bytes_done"] for i in unpack)
    assert any(i["rate_bytes_s"] > 0 for i in mid)
    steps = [i.get("step") for i in running if i.get("step")]
    assert "pack" in steps and steps.index("pack") > steps.index("unpack")
    assert answers, "no call was made during the unpack"
    print(f"\nimport of {size / 2**20:.1f} MiB ({SMALL_FILES} files): {done['elapsed_s']:.1f} s, "
          f"{len(running)} progress items; other calls during it answered in at most {max(answers):.3f} s")


def test_the_plain_method_answers_as_before_and_bad_input_is_typed(agent, big_tgz):
    manifest = agent.call("image_import", big_tgz, f"{PREFIX}plain", timeout_s=600)
    assert manifest["name"] == f"{PREFIX}plain" and len(manifest["layers"]) == 1
    with agent.client() as client:
        with pytest.raises(errors.InvalidArgument, match="absolute"):
            list(client.stream("image_import_progress", "rel/path.tgz", f"{PREFIX}x"))
        with pytest.raises(errors.InvalidArgument):
            list(client.stream("image_import_progress", big_tgz, f"{PREFIX}x", {"nosuch": 1}))
    with open(big_tgz, "rb") as f:
        head = f.read(1 << 20)
    broken = big_tgz + ".broken"
    with open(broken, "wb") as f:  # a truncated gzip: InvalidImage, nothing kept
        f.write(head)
    try:
        with agent.client() as client, pytest.raises(errors.InvalidImage):
            list(client.stream("image_import_progress", broken, f"{PREFIX}broken"))
        assert f"{PREFIX}broken" not in [i["name"] for i in agent.call("image_ls")]
    finally:
        os.unlink(broken)


def _dcctl(agent, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO, "DCCTL_HOST": agent.endpoint}
    return subprocess.run([sys.executable, "-m", "dcctl.cli", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=REPO)


def test_dcctl_shows_import_progress_as_lines_and_json_lines(agent, big_tgz):
    """dcctl image_import: progress lines on stderr, the answer on stdout;
    dcctl --json image_import_progress: JSON lines (dcctl --json
    image_import keeps its one JSON answer: test_image_import_options)."""
    shown = _dcctl(agent, "image_import", big_tgz, f"{PREFIX}cli")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stderr.splitlines()
    assert any(line.startswith("unpack running ") for line in lines), shown.stderr
    assert any(line.startswith("pack running ") or line.startswith("pack done ") for line in lines), shown.stderr
    assert f"{PREFIX}cli" in shown.stdout and "running" not in shown.stdout  # the answer, as image_import's
    as_json = _dcctl(agent, "--json", "image_import_progress", big_tgz, f"{PREFIX}json")
    assert as_json.returncode == 0, as_json.stderr
    docs = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(docs) >= 3 and all(d["phase"] == "running" for d in docs[:-1])
    assert docs[-1]["phase"] == "done" and docs[-1]["result"]["name"] == f"{PREFIX}json"
    assert any(d.get("step") == "unpack" and 0 < d["bytes_done"] < d["bytes_total"] for d in docs)


def test_a_hub_with_a_one_second_heartbeat_keeps_a_long_import(agent, big_tgz, tmp_path):
    """The hub's client to an agent beats as the agent does (the wire's
    default), whatever the fleet's heartbeat: with a 1 s hub, a call or a
    relayed stream longer than about 4 s was lost ("no heartbeat": how a
    154 MB rootfs import failed)."""
    from hub.registry import Registry
    from hub.service import HubService
    from hub.store import HubStore
    from hub.streams import relay

    store = HubStore(str(tmp_path / "hub"))
    hub = HubService(store, Registry(str(tmp_path / "hub" / "registry")), heartbeat_s=1.0,
                     missed_heartbeats=100_000)
    try:
        hub.host_register({"name": "evthost", "endpoint": agent.endpoint, "address": "127.0.0.1",
                           "capacity": {"memory_reservable_bytes": 1 << 30, "container_slots": 10}, "boot_id": "boot-evt"})
        items = list(relay(hub.agents, "evthost", "image_import_progress", big_tgz, f"{PREFIX}beat", None))
        assert items[-1]["phase"] == "done" and items[-1]["elapsed_s"] > 4.0, items[-1]
        manifest = hub.agents.call("evthost", "image_import", big_tgz, f"{PREFIX}beat2", timeout_s=600)
        assert manifest["name"] == f"{PREFIX}beat2"
    finally:
        hub.stop()
        store.close()
