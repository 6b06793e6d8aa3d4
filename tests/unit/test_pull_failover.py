"""An agent's pull from its hubs moves past a hub that cannot be reached
(Puller.pull_from_any): real image stores, a real source server and a
dead endpoint, over ipc."""
from __future__ import annotations

import io
import tarfile

import gevent
import gevent.lock
import pytest

from agents.transfer import Puller
from dcctl import errors, wire
from images.store import ImageStore


class Source:
    """A hub's two image methods, over a real store."""

    def __init__(self, puller: Puller):
        self.puller = puller

    @wire.expose(access="read")
    def image_manifest(self, ref: str) -> dict:
        return self.puller.manifest(ref)

    @wire.expose(access="read")
    def image_layer_read(self, digest: str, offset: int, length: int) -> bytes:
        return self.puller.read_layer(digest, offset, length)


def _tar(path: str) -> str:
    with tarfile.open(path, "w") as tar:
        data = b"hello from the source\n"
        info = tarfile.TarInfo("etc/hello")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def source(tmp_path):
    store = ImageStore(str(tmp_path / "src"))
    manifest = store.import_tar(_tar(str(tmp_path / "root.tar")), "ffl-img")
    svc = wire.Service(Source(Puller(store, gevent.lock.BoundedSemaphore(1))), "ffl-source")
    endpoint = f"ipc://{tmp_path}/source.sock"
    svc.bind(endpoint)
    svc.start()
    yield endpoint, manifest
    svc.stop()


def test_a_dead_first_hub_is_passed_over_and_the_image_comes_from_the_next(source, tmp_path):
    endpoint, manifest = source
    dead = f"ipc://{tmp_path}/dead.sock"
    open(dead[len("ipc://"):], "w").close()  # a killed hub's socket file stays: nothing listens
    puller = Puller(ImageStore(str(tmp_path / "dst")), gevent.lock.BoundedSemaphore(1))
    with gevent.Timeout(20):
        got = puller.pull_from_any("ffl-img", [dead, endpoint])
    assert got["pulled"] and got["manifest"]["id"] == manifest["id"]
    with pytest.raises(errors.Unreachable):
        puller.pull_from_any("ffl-img", [dead])
    with pytest.raises(errors.InvalidArgument):
        puller.pull_from_any("ffl-img", [])
