"""ImageStore on real files: import, refs, layers, remove, gc, crash leftovers."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile

import pytest

import images
from images import (AmbiguousImageRef, ImageExists, ImageInUse, ImageNotFound, ImageStore,
                    InvalidImage, StoreError)
from images.manifest import manifest_id

MTIME = 1_700_000_000


# ---------------------------------------------------------------- helpers (shared)

def snapshot(root) -> dict:
    """Every path under root -> (type, size, mode), for before/after checks."""
    out = {}
    root = str(root)
    for top, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size if not os.path.isdir(path) else 0)
    return out


def add_member(tar, name, data=b"", *, type=tarfile.REGTYPE, linkname="", mode=0o644, size=None):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = type, linkname, mode, MTIME
    if type == tarfile.REGTYPE:
        info.size = len(data) if size is None else size
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)


def make_tar(path, members, mode="w") -> str:
    """members: list of (name, data) or (name, data, kwargs) tuples."""
    with tarfile.open(str(path), mode, format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            name, data, kw = m if len(m) == 3 else (*m, {})
            add_member(tar, name, data, **kw)
    return str(path)


ROOTFS = [
    ("bin", b"", {"type": tarfile.DIRTYPE, "mode": 0o755}),
    ("bin/tool", b"#!/bin/sh\necho hi\n", {"mode": 0o4755}),
    ("bin/sh", b"", {"type": tarfile.SYMTYPE, "linkname": "/bin/tool"}),
    ("bin/tool2", b"", {"type": tarfile.LNKTYPE, "linkname": "bin/tool"}),
    ("etc", b"", {"type": tarfile.DIRTYPE, "mode": 0o755}),
    ("etc/hostname", b"{{ hostname }}\n"),
]


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "images"))


@pytest.fixture(autouse=True)
def _fds(no_fd_leak):
    """Every test here is checked for leaked file descriptors (tests/unit/conftest.py)."""


# ---------------------------------------------------------------- API surface

def test_exported_members():
    assert images.__all__ == [
        "ImageStore", "ensure_busybox", "build_debian", "default_mirror", "render_templates",
        "safe_extract", "command_file_text", "env_file_text", "COMMAND_PATH", "ENV_PATH",
        "RUN_PATH", "ImageError", "ImageNotFound", "AmbiguousImageRef", "InvalidImage",
        "ImageInUse", "ImageExists", "StoreError"]
    for name in images.__all__:
        assert hasattr(images, name)


def test_error_tree():
    for cls in (images.ImageNotFound, images.AmbiguousImageRef, images.InvalidImage,
                images.ImageInUse, images.ImageExists, images.StoreError):
        assert issubclass(cls, images.ImageError)
    assert issubclass(ImageNotFound, LookupError)
    assert issubclass(AmbiguousImageRef, ValueError) and issubclass(InvalidImage, ValueError)


def test_imports_no_gevent_nor_other_packages():
    """images/ uses the wire layer's shared grammar (refs, the env-key rule)
    and nothing else of dcctl: no gevent, ZeroMQ, zerorpc, hub, agents, lxcwrap."""
    code = ("import sys, images, images.store, images.busybox, images.templates, "
            "images.debootstrap, images.tarsafe\n"
            "shared = {'dcctl', 'dcctl.errors', 'dcctl.validate', 'dcctl.wire', 'dcctl.wire.refs'}\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('gevent', 'zmq', 'zerorpc', 'lxcwrap', 'agents', 'hub') "
            "or (m.split('.')[0] == 'dcctl' and m not in shared)]\n"
            "assert not bad, bad\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


# ---------------------------------------------------------------- import_tar

@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz", "w:bz2"])
def test_import_tar_each_compression(store, tmp_path, mode):
    path = make_tar(tmp_path / "rootfs.tar", ROOTFS, mode)
    m = store.import_tar(path, "base", exposed_ports=[{"proto": "tcp", "port": 80}],
                         env={"A": "1"}, command=["/bin/sh"], templates=["/etc/hostname"])
    assert set(m) == {"id", "name", "created", "layers", "size_bytes", "exposed_ports", "env",
                      "command", "stop_signal", "init", "templates", "parent"}
    assert m["id"] == manifest_id(m) and len(m["layers"]) == 1
    assert m["size_bytes"] == os.path.getsize(store.export_layer(m["layers"][0]))
    assert (m["stop_signal"], m["init"], m["parent"]) == ("SIGPWR", "/sbin/init", None)
    [layer] = store.layer_dirs(m)
    st = os.lstat(os.path.join(layer, "bin/tool"))
    assert st.st_mode & 0o7777 == 0o4755 and st.st_mtime == MTIME and st.st_nlink == 2
    assert os.readlink(os.path.join(layer, "bin/sh")) == "/bin/tool"
    assert os.path.samefile(os.path.join(layer, "bin/tool"), os.path.join(layer, "bin/tool2"))
    assert store.get(m["id"]) == m and store.ls() == [m]
    assert os.listdir(store.tmp_dir) == []
    with open(os.path.join(store.manifests_dir, m["id"] + ".json")) as f:
        assert json.load(f) == m


def test_same_content_same_layer_id(store, tmp_path):
    a = make_tar(tmp_path / "a.tar.gz", ROOTFS, "w:gz")
    b = make_tar(tmp_path / "b.tar.xz", list(reversed(ROOTFS[4:])) + ROOTFS[:4], "w:xz")
    # no directory entries at all: implied dirs must still pack the same way
    c = make_tar(tmp_path / "c.tar", [("x/y/z", b"1")])
    d = make_tar(tmp_path / "d.tar.gz", [("./x/y/z", b"1")], "w:gz")
    ma, mb = store.import_tar(a, "one"), store.import_tar(b, "two")
    assert ma["layers"] == mb["layers"] and ma["id"] != mb["id"]
    assert store.import_tar(c, "c")["layers"] == store.import_tar(d, "d")["layers"]
    assert len([e for e in os.listdir(store.layers_dir) if e.endswith(".tar")]) == 2


def test_layer_roundtrip_is_stable(store, tmp_path):
    m = store.import_tar(make_tar(tmp_path / "r.tar", ROOTFS), "r")
    again = store.add_layer_from_dir(store.layer_dirs(m)[0])
    assert again == m["layers"][0]


def test_import_refuses_bad_fields_before_work(store, tmp_path):
    path = make_tar(tmp_path / "r.tar", ROOTFS)
    before = snapshot(store.root)
    for kw in ({"exposed_ports": [{"proto": "sctp", "port": 1}]}, {"env": {"1X": "a"}},
               {"command": "sh -c x"}, {"stop_signal": "KILL"}, {"init": "sbin/init"},
               {"templates": ["/etc/../etc/shadow"]}):
        with pytest.raises(InvalidImage):
            store.import_tar(path, "ok", **kw)
    with pytest.raises(InvalidImage, match="Bad"):
        store.import_tar(path, "Bad")
    assert snapshot(store.root) == before


def test_import_error_after_layer_leaves_nothing(store, tmp_path):
    path = make_tar(tmp_path / "r.tar", ROOTFS)
    before = snapshot(store.root)
    with pytest.raises(InvalidImage, match="/etc/missing"):
        store.import_tar(path, "r", templates=["/etc/missing"])
    assert snapshot(store.root) == before


def test_disk_full_is_store_error_and_leaves_nothing(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        store = ImageStore(str(mnt / "images"))
        big = make_tar(tmp_path / "big.tar.gz", [("big", os.urandom(3 * 1024 * 1024))], "w:gz")
        before = snapshot(store.root)
        with pytest.raises(StoreError) as err:
            store.import_tar(big, "big")
        assert isinstance(err.value.__cause__, OSError)
        assert snapshot(store.root) == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------- refs

def test_resolve(store, tmp_path):
    path = make_tar(tmp_path / "r.tar", ROOTFS)
    old = store.import_tar(path, "web")
    new = store.import_tar(path, "web")
    other = store.import_tar(path, "db")
    assert store.resolve("web")["id"] == new["id"]
    assert store.resolve("web@" + old["id"][:12])["id"] == old["id"]
    assert store.resolve("db@" + other["id"])["id"] == other["id"]
    assert [m["name"] for m in store.ls()] == ["db", "web", "web"]
    with pytest.raises(ImageNotFound, match="nope"):
        store.resolve("nope")
    with pytest.raises(ImageNotFound):
        store.resolve("db@" + ("0000" if not other["id"].startswith("0000") else "1111"))
    for bad in ("", "Web", "-x", "a..b", "a/b", "web@", "web@abc", "web@XYZW", "web@12345g",
                "x" * 65, None, 42):
        with pytest.raises(InvalidImage):
            store.resolve(bad)
    with pytest.raises(InvalidImage):
        store.get("web")
    with pytest.raises(ImageNotFound):
        store.get("0" * 64)


def test_resolve_bare_name_is_latest(store, tmp_path):
    """A bare name is name:latest, never the newest image of another tag
    (an operator's trial: a later busybox:frevil build took busybox)."""
    path = make_tar(tmp_path / "r.tar", ROOTFS)
    latest = store.import_tar(path, "web")  # untagged: answers to latest
    evil = store.import_tar(path, "web", tag="frevil")
    assert evil["created"] >= latest["created"]
    assert store.resolve("web")["id"] == latest["id"]
    assert store.resolve("web:latest")["id"] == latest["id"]
    assert store.resolve("web:frevil")["id"] == evil["id"]
    assert store.resolve("web@" + evil["id"][:12])["id"] == evil["id"]  # an id, whatever its tag
    only = store.import_tar(path, "app", tag="v2")
    with pytest.raises(ImageNotFound, match="app:latest.*v2"):
        store.resolve("app")
    assert store.resolve("app:v2")["id"] == only["id"]


def test_resolve_ambiguous_prefix(store, tmp_path):
    layers = store.import_tar(make_tar(tmp_path / "r.tar", ROOTFS), "seed")["layers"]
    base = store.commit("amb", layers, created=1.0)

    def predicted(created):
        body = {k: v for k, v in base.items() if k != "id"}
        body["created"] = float(created)
        return manifest_id(body)

    seen: dict[str, int] = {}
    for created in range(2, 100_000):
        prefix = predicted(created)[:4]
        if prefix in seen:
            pair = (seen[prefix], created)
            break
        seen[prefix] = created
    a, b = (store.commit("amb", base["layers"], created=c) for c in pair)
    assert a["id"][:4] == b["id"][:4] and a["id"] == predicted(pair[0])
    with pytest.raises(AmbiguousImageRef) as err:
        store.resolve("amb@" + a["id"][:4])
    assert sorted(err.value.candidates) == sorted(["amb@" + a["id"][:12], "amb@" + b["id"][:12]])
    assert a["id"][:12] in str(err.value) and b["id"][:12] in str(err.value)
    assert store.resolve("amb@" + a["id"][:16])["id"] == a["id"]


# ---------------------------------------------------------------- layers

def test_export_import_layer(store, tmp_path):
    m = store.import_tar(make_tar(tmp_path / "r.tar", ROOTFS), "r")
    layer = m["layers"][0]
    tar = store.export_layer(layer)
    other = ImageStore(str(tmp_path / "other"))
    assert other.import_layer(tar, layer) == layer
    assert snapshot(other.layer_dirs(m)[0]) == snapshot(store.layer_dirs(m)[0])
    assert other.import_manifest(m) == m
    with pytest.raises(ImageExists):
        other.import_manifest(m)
    forged = dict(m, command=["evil"])
    with pytest.raises(InvalidImage, match="id does not match"):
        other.import_manifest(forged)
    lying = dict(m, size_bytes=1, created=m["created"] + 1)
    lying["id"] = manifest_id(lying)
    with pytest.raises(InvalidImage, match="size_bytes"):
        other.import_manifest(lying)
    with pytest.raises(InvalidImage, match="exactly the keys"):
        other.import_manifest({k: v for k, v in m.items() if k != "parent"})
    with pytest.raises(ImageNotFound):
        store.export_layer("f" * 64)


def test_import_layer_digest_mismatch_leaves_nothing(store, tmp_path):
    m = store.import_tar(make_tar(tmp_path / "r.tar", ROOTFS), "r")
    tar = store.export_layer(m["layers"][0])
    other = ImageStore(str(tmp_path / "other"))
    before = snapshot(other.root)
    with pytest.raises(StoreError, match="digest mismatch"):
        other.import_layer(tar, "a" * 64)
    assert snapshot(other.root) == before
    with pytest.raises(InvalidImage):
        other.import_layer(tar, "A" * 64)


def test_commit_needs_known_layers(store):
    with pytest.raises(ImageNotFound):
        store.commit("x", ["b" * 64])
    with pytest.raises(InvalidImage):
        store.commit("x", [])
    with pytest.raises(InvalidImage, match="unknown manifest field"):
        store.commit("x", ["b" * 64], colour="red")


def test_multi_layer_order(store, tmp_path):
    low = tmp_path / "low"
    (low / "etc").mkdir(parents=True)
    (low / "etc/a").write_text("low")
    high = tmp_path / "high"
    (high / "etc").mkdir(parents=True)
    (high / "etc/a").write_text("high")
    l1, l2 = store.add_layer_from_dir(str(low)), store.add_layer_from_dir(str(high))
    assert os.path.isdir(low) and os.path.isdir(high)  # copied, not consumed
    m = store.commit("stack", [l1, l2], templates=["/etc/a"], parent=None)
    assert store.layer_dirs(m) == [os.path.join(store.layers_dir, l) for l in (l2, l1)]
    assert store.find_file(m, "/etc/a")[0].endswith(l2)
    assert m["size_bytes"] == sum(os.path.getsize(store.export_layer(l)) for l in (l1, l2))


def test_layer_from_dir_refuses_fifo(store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "fifo")
    before = snapshot(store.root)
    with pytest.raises(InvalidImage, match="fifo"):
        store.add_layer_from_dir(str(src))
    assert snapshot(store.root) == before


# ---------------------------------------------------------------- remove, gc, crash

def test_remove_refused_in_use_then_removes_unshared_layers(store, tmp_path):
    path = make_tar(tmp_path / "r.tar", ROOTFS)
    a = store.import_tar(path, "a")
    b = store.import_tar(path, "b")  # shares the layer
    with pytest.raises(ImageInUse, match="c1, c2") as err:
        store.remove("a", ["c1", "c2"])
    assert err.value.containers == ["c1", "c2"]
    assert store.get(a["id"])
    res = store.remove("a", [])
    assert res == {"id": a["id"], "name": "a", "removed_layers": [], "freed_bytes": 0}
    assert store.layer_dirs(b)
    res = store.remove("b", [])
    assert res["removed_layers"] == b["layers"] and res["freed_bytes"] > 0
    assert os.listdir(store.layers_dir) == [] and store.ls() == []
    with pytest.raises(ImageNotFound):
        store.remove("a", [])


def test_gc(store, tmp_path):
    m = store.import_tar(make_tar(tmp_path / "r.tar", ROOTFS), "r")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x" * 1000)
    loose = store.add_layer_from_dir(str(src))
    os.mkdir(os.path.join(store.tmp_dir, "import-leftover"))
    os.mkdir(os.path.join(store.layers_dir, "c" * 64))  # half-installed: no tar
    res = store.gc()
    assert res["removed_layers"] == [loose] and res["freed_bytes"] >= 1000
    assert os.listdir(store.tmp_dir) == []
    assert sorted(os.listdir(store.layers_dir)) == sorted([m["layers"][0], m["layers"][0] + ".tar"])
    assert store.gc() == {"removed_layers": [], "freed_bytes": 0}


def test_construction_cleans_crash_leftovers(tmp_path):
    root = tmp_path / "images"
    store = ImageStore(str(root))
    m = store.import_tar(make_tar(tmp_path / "r.tar", ROOTFS), "r")
    before = snapshot(root)
    os.makedirs(os.path.join(store.tmp_dir, "import-x", "rootfs", "etc"))
    os.mkdir(os.path.join(store.layers_dir, "d" * 64))
    with open(os.path.join(store.tmp_dir, "write-x"), "w") as f:
        f.write("{partial")
    again = ImageStore(str(root))
    assert snapshot(root) == before and again.resolve("r") == m


def test_staging_removed_on_error(store):
    with pytest.raises(RuntimeError):
        with store.staging("x") as path:
            os.makedirs(os.path.join(path, "a/b"))
            raise RuntimeError("boom")
    assert os.listdir(store.tmp_dir) == []
