"""The hub registry's refs on real files: a bare name is name:latest.

An operator's trial: ``dcctl build ./evil -t busybox:frevil`` then
``create_container busybox`` ran the evil build, and ``deploy frapp frapp``
deployed frapp:v2, because a bare name took the newest image of any tag.
Manifests are written where the registry keeps them (ROOT/manifests);
resolve reads them back from disk.  Runs without root.
"""
from __future__ import annotations

import json
import os

import gevent
import pytest

from dcctl import errors
from hub.registry import Registry, manifest_id


def _put(root: str, name: str, created: float, tag: str | None = None) -> dict:
    body = {"name": name, "created": created, "layers": ["a" * 64], "size_bytes": 1, "exposed_ports": [],
            "env": {}, "command": None, "stop_signal": "SIGPWR", "init": "/sbin/init", "templates": [],
            "parent": None}
    if tag is not None:
        body["tag"] = tag
    body["id"] = manifest_id(body)
    with open(os.path.join(root, "manifests", body["id"] + ".json"), "w") as f:
        json.dump(body, f)
    return body


def _resolve(reg: Registry, ref: str) -> dict:
    return gevent.spawn(reg.resolve, ref).get(timeout=10)


def test_bare_name_is_latest_not_newest(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    root = reg.root
    latest = _put(root, "busybox", 1.0)             # untagged: latest
    tagged_latest = _put(root, "frapp", 1.0, "latest")
    evil = _put(root, "busybox", 2.0, "frevil")     # newer, another tag
    v2 = _put(root, "frapp", 3.0, "v2")
    assert _resolve(reg, "busybox")["id"] == latest["id"]
    assert _resolve(reg, "frapp")["id"] == tagged_latest["id"]
    assert _resolve(reg, "frapp:v2")["id"] == v2["id"]
    assert _resolve(reg, "busybox:frevil")["id"] == evil["id"]
    assert _resolve(reg, "busybox@" + evil["id"][:12])["id"] == evil["id"]  # an id, whatever its tag
    assert _resolve(reg, "frapp@" + v2["id"][:8])["id"] == v2["id"]  # rollback's name@id
    _put(root, "only", 1.0, "v1")
    with pytest.raises(errors.ImageNotFound) as err:
        _resolve(reg, "only")
    assert "only:latest" in str(err.value) and "v1" in (err.value.hint or "")
    with pytest.raises(errors.ImageNotFound):
        _resolve(reg, "busybox:nope")
