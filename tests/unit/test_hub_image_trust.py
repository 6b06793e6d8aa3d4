"""The hub keeps in its registry only the image it asked a host for.

A host's key may be a hostile client's: it can register its host at an
endpoint it serves itself and answer whatever manifest it likes.  Each
path where the hub takes an image from a host into its registry (an upload,
``dcctl image_push FILE NAME``, plain and as a stream; ``image_push HOST
REF``, plain and as a stream; a build) must check that the manifest names
what the operator asked for, and refuse (InvalidImage) keeping nothing.
Before the check, the host below replaced the registry's ``busybox`` under
an upload named ``myapp``.

Real parts: the in-process hub of tests/hubfakes.py (real SQLite store and
registry) reaches the host, served by dcctl.wire.Service, over a real ipc
socket.
"""
from __future__ import annotations

import hashlib
import os
import time

import pytest

from dcctl import errors, wire
from hub.registry import manifest_id
from tests.hubfakes import FakeAgent, FakeFleet

EVIL_LAYER = b"a layer a hostile host wants every host of the fleet to run"
CONTEXT = b"an uploaded archive or build context; the host ignores it"


class ImageHost(FakeAgent):
    """A host that answers every image call with one manifest of its own
    choosing (``answer(name, tag)``), whatever it was asked."""

    def __init__(self, name: str):
        super().__init__(name)
        self.answer("busybox", None)

    def answer(self, name: str, tag: str | None) -> dict:
        digest = hashlib.sha256(EVIL_LAYER).hexdigest()
        m = {"name": name, "tag": tag, "created": time.time(), "layers": [digest], "size_bytes": len(EVIL_LAYER),
             "exposed_ports": [{"proto": "tcp", "port": 80}]}
        m["id"] = manifest_id(m)
        self.manifest = m
        return m

    @wire.expose
    def image_manifest(self, ref: str) -> dict:
        self._enter("image_manifest")
        return {"manifest": self.manifest, "layer_sizes": {self.manifest["layers"][0]: len(EVIL_LAYER)}}

    @wire.expose
    def image_layer_read(self, digest: str, offset: int, length: int) -> bytes:
        self._enter("image_layer_read")
        return EVIL_LAYER[offset:offset + length]

    @wire.expose
    def image_import_upload(self, upload_id: str, name: str, options: dict | None = None) -> dict:
        self._enter("image_import_upload")
        return self.manifest

    @wire.expose(stream=True)
    def image_import_upload_progress(self, upload_id: str, name: str, options: dict | None = None):
        self._enter("image_import_upload_progress")
        yield {"phase": "done", "result": self.manifest}

    @wire.expose(stream=True)
    def image_build_dockerfile(self, context: str, name: str, options: dict | None = None):
        self._enter("image_build_dockerfile")
        m = self.manifest
        yield {"log": "Step 1/1 : FROM busybox"}
        yield {"result": {"image": f"{m['name']}@{m['id'][:12]}", "id": m["id"], "name": m["name"],
                          "tag": m["tag"], "layer": m["layers"][0], "layer_bytes": len(EVIL_LAYER),
                          "size_bytes": len(EVIL_LAYER), "duration_s": 0.1}}


@pytest.fixture
def fleet(tmp_path):
    made = FakeFleet(tmp_path, {"h1": 4})
    made.unserve("h1")
    made.agents["h1"] = ImageHost("h1")
    made.serve("h1")
    made.operators = made.push_image("busybox")  # the operator's busybox, in the registry before the attack
    yield made
    made.close()


def upload(fleet) -> str:
    sha = hashlib.sha256(CONTEXT).hexdigest()
    fleet.hub.image_upload_begin(len(CONTEXT), sha)
    fleet.hub.image_upload_chunk(sha, 0, CONTEXT)
    return sha


def registry_untouched(fleet) -> None:
    """Only the operator's busybox in the registry, and no layer of the host's."""
    assert [m["id"] for m in fleet.hub.image_ls()] == [fleet.operators["id"]]
    layers = os.listdir(fleet.registry.root + "/layers")
    assert hashlib.sha256(EVIL_LAYER).hexdigest() + ".tar" not in layers
    assert os.listdir(fleet.registry.root + "/tmp") == []


def finish(fleet, sha, name):
    return fleet.hub.image_upload_finish(sha, name, {"host": "h1"})


def finish_progress(fleet, sha, name):
    items = list(fleet.hub.image_upload_finish_progress(sha, name, {"host": "h1"}))
    return items[-1]["result"]


def push(fleet, name):
    return fleet.hub.image_push("h1", name)


def push_progress(fleet, name):
    return list(fleet.hub.image_push_progress("h1", name))[-1]["result"]


def build(fleet, sha, name, tag=None):
    items = list(fleet.hub.build(sha, name, {"host": "h1", **({"tag": tag} if tag else {})}))
    return items[-1]["result"]


@pytest.mark.parametrize("via", [finish, finish_progress])
@pytest.mark.parametrize("asked, answered", [("myapp", ("busybox", None)),  # another name: busybox replaced
                                             ("busybox:1.0", ("busybox", None)),  # another tag
                                             ("busybox", ("myapp", "1.0")),  # NAME alone: any tag, not another name
                                             ("myapp:2", ("myapp", "3"))])
def test_an_upload_keeps_nothing_when_the_host_answers_another_image(fleet, via, asked, answered):
    fleet.agents["h1"].answer(*answered)
    sha = upload(fleet)
    with pytest.raises(errors.InvalidImage, match=f"not {asked}"):
        via(fleet, sha, asked)
    registry_untouched(fleet)
    assert fleet.hub.uploads.info(sha)["size_bytes"] == len(CONTEXT)  # the upload stays, for another host
    name, _, tag = asked.partition(":")  # an honest answer for what was asked is kept, the upload removed
    fleet.agents["h1"].answer(name, tag or None)
    stored = via(fleet, sha, asked)
    assert (stored["manifest"]["name"], stored["manifest"]["tag"]) == (name, tag or None)
    assert stored["manifest"]["id"] in {m["id"] for m in fleet.hub.image_ls()}
    with pytest.raises(errors.NoSuchUpload):
        fleet.hub.uploads.info(sha)


@pytest.mark.parametrize("via", [push, push_progress])
@pytest.mark.parametrize("asked", ["myapp", "busybox:1.0", "busybox@" + "0" * 12])
def test_image_push_from_a_host_keeps_nothing_but_the_ref_it_asked_for(fleet, via, asked):
    with pytest.raises(errors.InvalidImage, match="nothing kept"):
        via(fleet, asked)
    registry_untouched(fleet)
    m = fleet.agents["h1"].answer("myapp", "1.0")
    assert via(fleet, "myapp:1.0")["id"] == m["id"]
    assert via(fleet, f"myapp@{m['id'][:8]}")["id"] == m["id"]


def test_a_bad_ref_is_refused_before_the_host_is_asked(fleet):
    with pytest.raises(errors.InvalidArgument):
        push(fleet, "Not A Ref")
    with pytest.raises(errors.InvalidArgument, match="no @id"):
        fleet.hub.image_upload_finish(upload(fleet), "myapp@1234abcd", {"host": "h1"})
    assert ("image_manifest", "") not in fleet.agents["h1"].calls


@pytest.mark.parametrize("name, tag, answered", [("myapp", None, ("busybox", None)),
                                                 ("myapp", "2", ("myapp", None)),
                                                 ("myapp", None, ("myapp", "2"))])
def test_a_build_keeps_nothing_when_the_host_answers_another_image(fleet, name, tag, answered):
    fleet.agents["h1"].answer(*answered)
    with pytest.raises(errors.InvalidImage, match="nothing kept"):
        build(fleet, upload(fleet), name, tag)
    registry_untouched(fleet)
    m = fleet.agents["h1"].answer(name, tag)
    result = build(fleet, upload(fleet), name, tag)
    assert (result["name"], result["id"]) == (name, m["id"])
    assert m["id"] in {x["id"] for x in fleet.hub.image_ls()}


def test_an_upload_named_without_a_tag_keeps_the_archives_own_tag(fleet):
    """``docker save ubuntu:24.04 > u.tar; dcctl image_push u.tar ubuntu``:
    the importer takes the tag from the archive, and the hub keeps it."""
    fleet.agents["h1"].answer("busybox", "1.0")
    sha = upload(fleet)
    stored = finish(fleet, sha, "busybox")["manifest"]
    assert (stored["name"], stored["tag"]) == ("busybox", "1.0")
    assert stored["id"] in {m["id"] for m in fleet.hub.image_ls()}
