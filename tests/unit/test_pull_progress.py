"""image_pull_progress over real sockets between two real image stores: a
12 MiB layer moves in 4 MiB chunks and the stream reports bytes done, the
total and a rate as it goes, then the pull's result; a missing image is
ImageNotFound at the first item."""
from __future__ import annotations

import os
import tarfile
import types

import gevent.lock
import pytest

from agents.errmap import translate
from agents.progress import ProgressMethods
from agents.transfer import Puller
from dcctl import errors, wire
from images.store import ImageStore


class Source:
    def __init__(self, puller):
        self.puller = puller

    @wire.expose(access="read", redact_env=False)
    def image_manifest(self, ref: str) -> dict:
        """Returns: {manifest, layer_sizes}."""
        return self.puller.manifest(ref)

    @wire.expose(access="read")
    def image_layer_read(self, digest: str, offset: int, length: int) -> bytes:
        """Returns: bytes."""
        return self.puller.read_layer(digest, offset, length)


class Agent(ProgressMethods):
    def __init__(self, store, hub):
        self.puller = Puller(store, gevent.lock.BoundedSemaphore(1))
        self.m = types.SimpleNamespace(config=types.SimpleNamespace(hub=hub))
        self.hub_keys = None


@pytest.fixture
def pair(tmp_path):
    src_store = ImageStore(str(tmp_path / "src"))
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "blob").write_bytes(os.urandom(12 << 20))
    tar_path = tmp_path / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(rootfs, arcname=".")
    src_store.import_tar(str(tar_path), "evtblob")
    src_ep, dst_ep = f"ipc://{tmp_path}/src.sock", f"ipc://{tmp_path}/dst.sock"
    services = [wire.Service(Source(Puller(src_store, gevent.lock.BoundedSemaphore(1))), "src", translate=translate),
                wire.Service(Agent(ImageStore(str(tmp_path / "dst")), src_ep), "dst", translate=translate)]
    for svc, ep in zip(services, (src_ep, dst_ep)):
        svc.bind(ep)
        svc.start()
    client = wire.RpcClient(dst_ep, timeout_s=60)
    yield client
    client.close()
    for svc in services:
        svc.stop()


def test_a_pull_reports_bytes_total_and_rate_then_its_result(pair):
    items = list(pair.stream("image_pull_progress", "evtblob"))
    done = items[-1]
    assert done["phase"] == "done" and done["result"]["pulled"] is True
    total = done["result"]["bytes"]
    assert total > 12 << 20 and done["bytes_done"] == done["bytes_total"] == total
    running = [i for i in items[:-1] if i["phase"] == "running"]
    assert running and all(i["bytes_total"] in (0, total) for i in running)
    dones = [i["bytes_done"] for i in items]
    assert dones == sorted(dones) and done["rate_bytes_s"] > 0
    again = list(pair.stream("image_pull_progress", "evtblob"))  # here already: nothing moves
    assert again[-1]["result"]["pulled"] is False and again[-1]["bytes_total"] == 0


def test_a_missing_image_is_image_not_found(pair):
    with pytest.raises(errors.ImageNotFound):
        list(pair.stream("image_pull_progress", "nosuchimage"))


def test_dcctl_shows_the_stream_as_lines_off_a_terminal(pair):
    import io

    from dcctl.cli import progress
    out = io.StringIO()
    assert progress.show(pair.stream("image_pull_progress", "evtblob"), out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("running ") and any(line.startswith("done ") and "100.0%" in line for line in lines)
    assert "pulled: true" in lines and any(line.startswith("image: evtblob") for line in lines)


@pytest.fixture
def source(tmp_path):
    """A host's image protocol (the agent's Puller, its error table) over a
    real ipc socket: (a client, a layer's digest, its size in bytes)."""
    store = ImageStore(str(tmp_path / "src"))
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "file").write_bytes(b"some bytes of a layer")
    tar_path = tmp_path / "rootfs.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(rootfs, arcname=".")
    store.import_tar(str(tar_path), "small")
    puller = Puller(store, gevent.lock.BoundedSemaphore(1))
    digest = puller.manifest("small")["manifest"]["layers"][0]
    endpoint = f"ipc://{tmp_path}/src.sock"
    svc = wire.Service(Source(puller), "src", translate=translate)
    svc.bind(endpoint)
    svc.start()
    client = wire.RpcClient(endpoint, timeout_s=30)
    yield client, digest, puller.manifest("small")["layer_sizes"][digest]
    client.close()
    svc.stop()


def test_a_layer_read_at_or_past_its_end_is_empty_and_a_bad_range_is_typed(source):
    client, digest, size = source
    assert len(client.call("image_layer_read", digest, 0, 1 << 30)) == size  # capped at 4 MiB, all of it here
    for offset in (size, size + 1, 1 << 40, 2 ** 62, 2 ** 63 - 1):  # 2**62 was EINVAL: InternalError
        assert client.call("image_layer_read", digest, offset, 100) == b""
    for offset, length in ((2 ** 63, 1), (2 ** 64 - 1, 1), (-1, 1), (0, -1), (0, 2 ** 64 - 1)):
        with pytest.raises(errors.InvalidArgument, match="offset|length"):
            client.call("image_layer_read", digest, offset, length)
    assert client.call("image_layer_read", digest, size - 3, 100) == client.call("image_layer_read", digest, 0,
                                                                                    size)[-3:]
