"""The hub's loop keeps answering while its registry stores a large layer
(PITFALLS: a blocking call stops heartbeats).

A real dc-hub (a subprocess, ipc endpoint under tmp) pushes a 512 MiB layer
from a source host served in this process (the agent side of the image
protocol, ``image_manifest`` and ``image_layer_read``, on a real ipc
socket); meanwhile ``hub_info`` pings must each answer within a generous
bound.  Before the registry moved its file work, hashing and fsync to the
thread pool, the loop stalled for the hash, write and fsync of each chunk
and for the final fsync of the whole layer.  Runs without root.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time

import gevent
import pytest
from gevent import subprocess as gsubprocess

from dcctl import errors, wire
from hub.registry import CHUNK_BYTES, manifest_id
from hub.store import HubStore

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAYER_BYTES = 512 << 20
PING_BOUND_SECONDS = 0.5  # generous: a free loop answers in tens of milliseconds


class Source:
    """A host's image protocol over one layer file (what agents serve)."""

    def __init__(self, path: str, manifest: dict):
        self.path, self.manifest = path, manifest

    @wire.expose(access="read")
    def image_manifest(self, ref: str) -> dict:
        """{manifest, layer_sizes}."""
        return {"manifest": self.manifest, "layer_sizes": {self.manifest["layers"][0]: LAYER_BYTES}}

    @wire.expose(access="read")
    def image_layer_read(self, digest: str, offset: int, length: int) -> bytes:
        """Bytes of the layer from ``offset``."""
        def read() -> bytes:
            with open(self.path, "rb") as f:
                f.seek(offset)
                return f.read(min(length, CHUNK_BYTES))
        return gevent.get_hub().threadpool.apply(read)


def _layer(path: str) -> str:
    sha, block = hashlib.sha256(), os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(LAYER_BYTES >> 20):
            piece = block[i % 256:] + block[:i % 256]  # no two MiB alike
            sha.update(piece)
            f.write(piece)
    return sha.hexdigest()


@pytest.fixture
def hub_with_source(tmp_path):
    layer = str(tmp_path / "layer.tar")
    digest = _layer(layer)
    manifest = {"name": "big", "created": 1.0, "layers": [digest], "size_bytes": LAYER_BYTES}
    manifest["id"] = manifest_id(manifest)
    source = wire.Service(Source(layer, manifest), name="source")
    source.bind(f"ipc://{tmp_path}/source.sock")
    serving = source.start()
    state = tmp_path / "hub"
    store = HubStore(str(state))  # the source is a registered, alive host
    store.upsert_host("src", f"ipc://{tmp_path}/source.sock", "", {}, {"container_slots": 1})
    store.close()
    hub_ep = f"ipc://{tmp_path}/hub.sock"
    with open(tmp_path / "hub.log", "ab") as log:
        proc = gsubprocess.Popen([sys.executable, "-m", "hub.main", "--listen", hub_ep, "--state-dir", str(state),
                                  "--heartbeat-s", "60"], cwd=REPO, stdout=log, stderr=log,
                                 env={**os.environ, "PYTHONPATH": REPO})
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with wire.connect(hub_ep, timeout_s=2) as c:
                    c.call("hub_info")
                break
            except errors.DcError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"hub did not come up: {(tmp_path / 'hub.log').read_text()[-2000:]}")
                gevent.sleep(0.1)
        yield hub_ep, manifest, state
    finally:
        proc.kill()
        proc.wait()
        source.stop()
        serving.kill()
        os.unlink(layer)  # pytest keeps tmp dirs of recent runs: not 1 GiB each
        shutil.rmtree(state / "registry", ignore_errors=True)


def test_hub_answers_while_it_stores_a_large_layer(hub_with_source):
    hub_ep, manifest, state = hub_with_source
    with wire.connect(hub_ep, timeout_s=300) as slow, wire.connect(hub_ep, timeout_s=30) as fast:
        push = gevent.spawn(slow.call, "image_push", "src", "big")
        worst, pings = 0.0, 0
        while not push.ready():
            started = time.monotonic()
            fast.call("hub_info")
            worst = max(worst, time.monotonic() - started)
            pings += 1
            gevent.sleep(0.05)
        assert push.get()["id"] == manifest["id"]
    layer = state / "registry" / "layers" / f"{manifest['layers'][0]}.tar"
    assert layer.stat().st_size == LAYER_BYTES
    assert pings >= 5, "the push ended before the loop could be watched"
    print(f"\nworst hub_info round trip during a {LAYER_BYTES >> 20} MiB push: {worst * 1000:.0f} ms "
          f"({pings} pings)")
    assert worst < PING_BOUND_SECONDS


def test_errors_from_the_pool_stay_typed_and_nothing_partial_is_kept(tmp_path):
    from hub.registry import Registry
    reg = Registry(str(tmp_path / "reg"))
    data = os.urandom(3 * CHUNK_BYTES // 2)
    good = hashlib.sha256(data).hexdigest()
    manifest = {"name": "small", "created": 1.0, "layers": [good], "size_bytes": len(data)}
    manifest["id"] = manifest_id(manifest)

    def corrupt(d, offset, length):
        return bytes(length)

    with pytest.raises(errors.StoreError, match="digest mismatch"):
        reg.receive(manifest, {good: len(data)}, corrupt, expect=None)
    with pytest.raises(errors.StoreError, match="ended at"):
        reg.receive(manifest, {good: len(data) + 1}, lambda d, off, n: data[off:off + n], expect=None)
    assert os.listdir(tmp_path / "reg" / "tmp") == [] and os.listdir(tmp_path / "reg" / "layers") == []
    with pytest.raises(errors.ImageNotFound):
        reg.read_layer(good, 0, 10)
    with pytest.raises(errors.ImageNotFound):
        reg.get(manifest["id"])
    assert reg.receive(manifest, {good: len(data)}, lambda d, off, n: data[off:off + n], expect=None) == manifest
    assert reg.read_layer(good, CHUNK_BYTES, CHUNK_BYTES) == data[CHUNK_BYTES:]
    assert reg.get(manifest["id"]) == manifest and reg.ls() == [manifest]
    assert reg.disk_usage_bytes() == len(data)
    assert reg.remove("small") == manifest
    assert reg.ls() == [] and os.listdir(tmp_path / "reg" / "layers") == []
