"""A built image's log (REGISTRY/builds/<id>.log, hub/buildmethods.py) goes
when the image is removed from the registry (a deploy's prune), so pruned
builds leave no logs behind."""
from __future__ import annotations

import hashlib
import os

from hub.registry import Registry, manifest_id


def test_registry_remove_takes_the_build_log(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    data = b"layer bytes"
    layer = hashlib.sha256(data).hexdigest()
    manifest = {"name": "app", "created": 1.0, "layers": [layer], "size_bytes": len(data)}
    manifest["id"] = manifest_id(manifest)
    reg.receive(manifest, {layer: len(data)}, lambda d, off, n: data[off:off + n], expect=None)
    os.makedirs(tmp_path / "reg" / "builds")
    log = tmp_path / "reg" / "builds" / f"{manifest['id']}.log"
    other = tmp_path / "reg" / "builds" / f"{'0' * 64}.log"
    log.write_text("Step 1/1 : RUN true\n")
    other.write_text("another image's log\n")
    reg.remove("app")
    assert not log.exists() and other.exists()
