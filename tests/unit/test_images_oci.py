"""OCI layouts and docker-save archives: import (every check, every hostile
case, nothing half imported) and export, on a real store (root: whiteouts
are 0/0 character devices and opaque xattrs)."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import stat
import tarfile

import pytest

from images import AmbiguousImageRef, ImageNotFound, ImageStore, InvalidImage
from images import oci
from images.appinit import INIT_PATH, resolve_user

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts need root (mknod, trusted xattrs)")


def layer_tar(entries: list[tuple]) -> bytes:
    """entries: (name, data bytes | None for a dir | ("sym", target) | ("dev",))."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif isinstance(data, tuple) and data[0] == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
            elif isinstance(data, tuple) and data[0] == "dev":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


BASE = [("etc", None), ("etc/passwd", b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n"),
        ("etc/group", b"root:x:0:\napps:x:1001:\n"), ("a", None), ("a/b", b"b"), ("a/c", None),
        ("a/c/d", b"d"), ("gone", b"bye"), ("bin", None), ("bin/sh", b"#!fake\n")]
TOP = [("a", None), ("a/.wh..wh..opq", b""), ("a/new", b"new"), (".wh.gone", b""), ("etc", None),
       ("etc/added", b"hi")]
CONFIG = {"Entrypoint": ["/bin/app"], "Cmd": ["--port", "80"], "Env": ["PATH=/bin", "A=1=2"],
          "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "WorkingDir": "/srv", "User": "app",
          "Volumes": {"/data": {}}, "Labels": {"org.example": "yes"}, "StopSignal": "SIGQUIT"}


def _blob(layout: str, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_image(layout: str, tag: str | None, layers: list[bytes], config: dict | None = None, *,
                gz: bool = False, cfg_extra: dict | None = None) -> dict:
    """Add one image to an OCI layout (made if needed); returns its manifest descriptor."""
    os.makedirs(layout, exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    descs = []
    for data in layers:
        blob = gzip.compress(data, mtime=0) if gz else data
        descs.append({"mediaType": oci.MT_OCI_LAYER + ("+gzip" if gz else ""), **_blob(layout, blob)})
    cfg = {"created": "2024-05-06T07:08:09Z", "architecture": oci.host_arch(), "os": "linux",
           "config": config if config is not None else CONFIG,
           "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(d).hexdigest() for d in layers]},
           **(cfg_extra or {})}
    cdesc = {"mediaType": oci.MT_OCI_CONFIG, **_blob(layout, json.dumps(cfg).encode())}
    manifest = {"schemaVersion": 2, "mediaType": oci.MT_OCI_MANIFEST, "config": cdesc, "layers": descs}
    mdesc = {"mediaType": oci.MT_OCI_MANIFEST, **_blob(layout, json.dumps(manifest).encode())}
    if tag:
        mdesc["annotations"] = {"org.opencontainers.image.ref.name": tag}
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as f:
            index = json.load(f)
    index["manifests"].append(mdesc)
    with open(index_path, "w") as f:
        json.dump(index, f)
    return mdesc


def edit_json(path: str, fn) -> None:
    with open(path) as f:
        doc = json.load(f)
    doc = fn(doc) or doc
    with open(path, "w") as f:
        json.dump(doc, f)


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "store"))


def assert_untouched(store: ImageStore) -> None:
    assert store.ls() == []
    assert os.listdir(store.layers_dir) == []
    assert os.listdir(store.tmp_dir) == []


def tar_dir(src: str, out: str) -> str:
    with tarfile.open(out, "w") as tar:
        for name in sorted(os.listdir(src)):
            tar.add(os.path.join(src, name), arcname=name)
    return out


# ---------------------------------------------------------------- import


@pytest.mark.parametrize("gz", [False, True])
def test_layout_imports_with_whiteouts_and_config(store, tmp_path, gz):
    layout = str(tmp_path / "lay")
    write_image(layout, "v1", [layer_tar(BASE), layer_tar(TOP)], gz=gz)
    m = oci.import_image(store, layout, "app")
    assert m["tag"] == "v1" and m["init"] == INIT_PATH and m["stop_signal"] == "SIGQUIT"
    assert m["command"] == ["/bin/app", "--port", "80"]
    assert m["env"] == {"PATH": "/bin", "A": "1=2"}
    assert m["exposed_ports"] == [{"proto": "tcp", "port": 80}, {"proto": "udp", "port": 53}]
    assert m["config"] == {"entrypoint": ["/bin/app"], "cmd": ["--port", "80"], "working_dir": "/srv",
                           "user": "app", "volumes": ["/data"], "labels": {"org.example": "yes"}}
    assert m["created"] == 1714979289.0
    assert len(m["layers"]) == 3  # two image layers and the dcfleet layer
    # the merged view: deleted, hidden by the opaque dir, kept, added
    assert store.find_file(m, "/gone") is None
    assert store.find_file(m, "/a/b") is None and store.find_file(m, "/a/c/d") is None
    assert store.find_file(m, "/a/new") is not None and store.find_file(m, "/etc/added") is not None
    top = store.layer_dirs(m)[1]  # the image's own top layer
    st = os.lstat(os.path.join(top, "gone"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(os.path.join(top, "a"), "trusted.overlay.opaque") == b"y"
    # the store's canonical tar of that layer writes the deletions back as OCI whiteouts
    with tarfile.open(store.export_layer(m["layers"][1])) as tar:
        names = tar.getnames()
    assert names.index("a/.wh..wh..opq") < names.index("a/new") and ".wh.gone" in names
    image = os.path.join(store.layer_dirs(m)[0], "etc", "dcfleet", "image")
    assert open(image).read() == "DCF_WORKDIR=/srv\nDCF_USER=1000:1001\n"
    assert sorted(os.listdir(store.tmp_dir)) == []


def test_same_content_same_id_across_formats_and_reimport_of_an_export(store, tmp_path):
    layout = str(tmp_path / "lay")
    write_image(layout, "v1", [layer_tar(BASE), layer_tar(TOP)])
    a = oci.import_image(store, layout, "app", "v1")
    archive = tar_dir(layout, str(tmp_path / "lay.tar"))
    assert oci.detect_format(archive) == "oci-archive"
    b = oci.import_image(ImageStore(str(tmp_path / "s2")), archive, "app", "v1")
    assert a["id"] == b["id"]
    for fmt in oci.EXPORT_FORMATS:
        out = str(tmp_path / f"out-{fmt}")
        info = oci.export_image(store, "app:v1", out, fmt)
        assert info["id"] == a["id"] and info["tag"] == "v1"
        other = ImageStore(str(tmp_path / f"re-{fmt}"))
        again = oci.import_image(other, out, "app", "v1")
        assert again["id"] == a["id"] and again["layers"] == a["layers"]  # no second dcfleet layer
    assert oci.detect_format(str(tmp_path / "out-docker-archive")) == "docker-archive"


def test_legacy_docker_archive_with_symlinked_layers(store, tmp_path):
    root = tmp_path / "docker"
    root.mkdir()
    base = layer_tar(BASE)
    (root / "l1").mkdir()
    (root / "l1" / "layer.tar").write_bytes(base)
    (root / "l2").mkdir()
    os.symlink("../l1/layer.tar", root / "l2" / "layer.tar")  # docker save repeats layers as links
    cfg = json.dumps({"created": "2024-01-01T00:00:00.5Z", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(base).hexdigest()] * 2}})
    cid = hashlib.sha256(cfg.encode()).hexdigest()
    (root / f"{cid}.json").write_text(cfg)
    (root / "manifest.json").write_text(json.dumps([{"Config": f"{cid}.json", "RepoTags": ["repo/app:7.1"],
                                                      "Layers": ["l1/layer.tar", "l2/layer.tar"]}]))
    archive = tar_dir(str(root), str(tmp_path / "d.tar"))
    assert oci.detect_format(archive) == "docker-archive"
    m = oci.import_image(store, archive, "app")
    assert m["tag"] == "7.1" and m["command"] == ["sh"] and m["created"] == 1704067200.5
    # a config whose name is not its digest is refused
    (root / f"{cid}.json").write_text(cfg + " ")
    with pytest.raises(InvalidImage, match="digest"):
        oci.import_image(ImageStore(str(tmp_path / "s2")), tar_dir(str(root), str(tmp_path / "e.tar")), "app")


def test_docker25_archive_gzipped_with_an_index_and_attestations(store, tmp_path):
    """docker save (Docker 25+) | gzip: index.json points at an image index
    holding the linux manifest and an attestation manifest; manifest.json
    beside it."""
    layout = str(tmp_path / "d25")
    mdesc = write_image(layout, None, [layer_tar(BASE)], config={"Cmd": ["echo", "hi"]})
    attest = {"mediaType": oci.MT_OCI_MANIFEST, **_blob(layout, b"{}"),
              "platform": {"architecture": "unknown", "os": "unknown"}}
    nested = {"schemaVersion": 2, "mediaType": oci.MT_OCI_INDEX, "manifests": [
        {**mdesc, "platform": {"architecture": oci.host_arch(), "os": "linux"}}, attest]}
    ndesc = {"mediaType": oci.MT_OCI_INDEX, **_blob(layout, json.dumps(nested).encode()),
             "annotations": {"io.containerd.image.name": "docker.io/library/ubuntu:24.04",
                             "org.opencontainers.image.ref.name": "24.04"}}
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [ndesc]}, f)
    with open(os.path.join(layout, "manifest.json"), "w") as f:
        json.dump([{"Config": "blobs/sha256/x", "RepoTags": ["ubuntu:24.04"], "Layers": []}], f)
    plain = tar_dir(layout, str(tmp_path / "u.tar"))
    gz = str(tmp_path / "u.tar.gz")
    with open(plain, "rb") as src, gzip.open(gz, "wb") as dst:
        dst.write(src.read())
    assert oci.detect_format(gz) == "oci-archive"
    m = oci.import_image(store, gz, "ubuntu")
    assert m["tag"] == "24.04" and m["command"] == ["echo", "hi"]
    assert oci.import_image(ImageStore(str(tmp_path / "s2")), plain, "ubuntu", select="24.04")["id"] == m["id"]
    assert os.listdir(store.tmp_dir) == []
    with open(gz, "r+b") as f:  # a corrupt gzip is refused, nothing kept
        f.seek(-30, 2)
        f.write(b"\0" * 20)
    s3 = ImageStore(str(tmp_path / "s3"))
    with pytest.raises(InvalidImage):
        oci.import_image(s3, gz, "ubuntu", fmt="oci-archive")
    assert_untouched(s3)


def test_rootfs_tarball_still_imports(store, tmp_path):
    path = tmp_path / "r.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("etc/motd")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    assert oci.detect_format(str(path)) == "rootfs"
    m = oci.import_image(store, str(path), "plain", "t1")
    assert m["tag"] == "t1" and m["init"] == "/sbin/init" and len(m["layers"]) == 1
    assert store.resolve("plain:t1")["id"] == m["id"]
    with pytest.raises(ImageNotFound):
        store.resolve("plain:latest")


def test_several_images_need_a_tag(store, tmp_path):
    layout = str(tmp_path / "lay")
    write_image(layout, "one", [layer_tar(BASE)])
    write_image(layout, "two", [layer_tar(BASE), layer_tar(TOP)])
    with pytest.raises(AmbiguousImageRef) as err:
        oci.import_image(store, layout, "app")
    assert err.value.candidates == ["one", "two"]
    assert_untouched(store)
    with pytest.raises(ImageNotFound, match="three"):
        oci.import_image(store, layout, "app", select="three")
    path, select = oci.split_source(layout + ":two")
    assert (path, select) == (layout, "two")
    m = oci.import_image(store, path, "app", select=select)
    assert m["tag"] == "two" and len(m["layers"]) == 3


def test_user_resolution():
    passwd = b"root:x:0:0::/:/bin/sh\nweb:x:33:34::/:/bin/sh\n"
    group = b"root:x:0:\nstaff:x:50:\n"
    assert resolve_user("", passwd, group) == ""
    assert resolve_user("web", passwd, group) == "33:34"
    assert resolve_user("web:staff", passwd, group) == "33:50"
    assert resolve_user("4242", passwd, group) == "4242:0"
    assert resolve_user("33:7", passwd, group) == "33:7"
    with pytest.raises(InvalidImage, match="nobody"):
        resolve_user("nobody", passwd, group)
    with pytest.raises(InvalidImage, match="wheel"):
        resolve_user("web:wheel", passwd, group)


# ---------------------------------------------------------------- hostile input

def _blob_path(layout: str, desc: dict) -> str:
    return os.path.join(layout, "blobs", "sha256", desc["digest"].split(":")[1])


def _layer_desc(layout: str, mdesc: dict, i: int) -> dict:
    with open(_blob_path(layout, mdesc)) as f:
        return json.load(f)["layers"][i]


def _hostile_layer(entries):
    def make(layout):
        write_image(layout, "v1", [layer_tar(BASE), layer_tar(entries)])
    return make


def _lying_size(layout):
    mdesc = write_image(layout, "v1", [layer_tar(BASE)])
    path = _blob_path(layout, mdesc)
    edit_json(path, lambda m: m["layers"][0].update(size=m["layers"][0]["size"] - 512))
    _refresh_index(layout, path)


def _refresh_index(layout, manifest_path):
    """Re-point index.json at an edited manifest blob (digest and size)."""
    data = open(manifest_path, "rb").read()
    new = _blob(layout, data)
    os.unlink(manifest_path)
    edit_json(os.path.join(layout, "index.json"), lambda i: i["manifests"][0].update(new))


def _changed_blob(layout):
    mdesc = write_image(layout, "v1", [layer_tar(BASE), layer_tar(TOP)])
    path = _blob_path(layout, _layer_desc(layout, mdesc, 1))
    data = bytearray(open(path, "rb").read())
    data[600] ^= 1
    open(path, "wb").write(bytes(data))


def _changed_gzip_blob(layout):
    mdesc = write_image(layout, "v1", [layer_tar(BASE), layer_tar(TOP)], gz=True)
    path = _blob_path(layout, _layer_desc(layout, mdesc, 1))
    data = bytearray(open(path, "rb").read())
    data[-12] ^= 1
    open(path, "wb").write(bytes(data))


def _wrong_diff_id(layout):
    mdesc = write_image(layout, "v1", [layer_tar(BASE), layer_tar(TOP)])
    with open(_blob_path(layout, mdesc)) as f:
        cdesc = json.load(f)["config"]
    cpath = _blob_path(layout, cdesc)
    edit_json(cpath, lambda c: c["rootfs"]["diff_ids"].__setitem__(1, "sha256:" + "0" * 64))
    data = open(cpath, "rb").read()
    new = _blob(layout, data)
    os.unlink(cpath)
    mpath = _blob_path(layout, mdesc)
    edit_json(mpath, lambda m: m["config"].update(new))
    _refresh_index(layout, mpath)


def _missing_blob(layout):
    mdesc = write_image(layout, "v1", [layer_tar(BASE), layer_tar(TOP)])
    os.unlink(_blob_path(layout, _layer_desc(layout, mdesc, 1)))


def _huge_config(layout):
    write_image(layout, "v1", [layer_tar(BASE)], cfg_extra={"pad": "x" * (oci.MAX_JSON_BYTES + 1)})


def _huge_index(layout):
    write_image(layout, "v1", [layer_tar(BASE)])
    edit_json(os.path.join(layout, "index.json"), lambda i: i.update(pad="x" * (oci.MAX_JSON_BYTES + 1)))


def _escaping_blob_link(layout):
    mdesc = write_image(layout, "v1", [layer_tar(BASE)])
    path = _blob_path(layout, _layer_desc(layout, mdesc, 0))
    os.unlink(path)
    os.symlink("/etc/passwd", path)


HOSTILE = {
    "declared size lies": (_lying_size, "descriptor says"),
    "blob does not match its digest": (_changed_blob, "does not match its digest|diff_id mismatch"),
    "gzip blob does not match its digest": (_changed_gzip_blob, "does not match its digest"),
    "layer does not match its diff_id": (_wrong_diff_id, "diff_id mismatch"),
    "missing blob": (_missing_blob, "missing"),
    "config over the cap": (_huge_config, "cap"),
    "index over the cap": (_huge_index, "cap"),
    "blob symlinked out of the layout": (_escaping_blob_link, "outside the layout"),
    "duplicate path": (_hostile_layer([("x", b"1"), ("x", b"2")]), "appears twice"),
    "duplicate dir": (_hostile_layer([("d", None), ("d", None)]), "appears twice"),
    "file over a parent dir": (_hostile_layer([("p/q", b"1"), ("p", b"2")]), "would replace a directory"),
    "symlink over a parent dir": (_hostile_layer([("p/q", b"1"), ("p", ("sym", "q"))]), "would replace a directory"),
    "whiteout and entry": (_hostile_layer([(".wh.x", b""), ("x", b"2")]), "appears twice"),
    "whiteout of ..": (_hostile_layer([("a", None), ("a/.wh..", b"")]), "names no path"),
    "whiteout of .": (_hostile_layer([(".wh..", b"")]), "names no path"),
    "whiteout of nothing": (_hostile_layer([("a/.wh.", b"")]), "names no path"),
    "whiteout through ..": (_hostile_layer([("../.wh.etc", b"")]), "'..'"),
    "aufs marker": (_hostile_layer([(".wh..wh.plnk", b"")]), "names no path"),
    "whiteout as a symlink": (_hostile_layer([(".wh.x", ("sym", "y"))]), "regular file"),
    "absolute path": (_hostile_layer([("/etc/evil", b"1")]), "absolute"),
    "symlink escape": (_hostile_layer([("up", ("sym", "../../../etc"))]), "outside the root"),
    "write through a symlink": (_hostile_layer([("bin", None), ("lnk", ("sym", "/bin")), ("lnk/x", b"1")]),
                                "symlink"),
    "device node": (_hostile_layer([("dev", None), ("dev/mem", ("dev",))]), "device"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layouts_are_refused_and_leave_nothing(store, tmp_path, case):
    make, message = HOSTILE[case]
    layout = str(tmp_path / "lay")
    make(layout)
    with pytest.raises(InvalidImage, match=message):
        oci.import_image(store, layout, "evil")
    assert_untouched(store)


def test_a_failure_after_good_layers_keeps_shared_ones(store, tmp_path):
    """A later layer fails: the new earlier layers go, a layer another image
    already uses stays."""
    good = str(tmp_path / "good")
    write_image(good, "v1", [layer_tar(BASE)], config={})
    kept = oci.import_image(store, good, "good")
    bad = str(tmp_path / "bad")
    write_image(bad, "v1", [layer_tar(BASE), layer_tar([("n", b"new")]), layer_tar([("x", b"1"), ("x", b"2")])])
    with pytest.raises(InvalidImage, match="twice"):
        oci.import_image(store, bad, "bad")
    assert [m["id"] for m in store.ls()] == [kept["id"]]
    assert sorted(e for e in os.listdir(store.layers_dir) if e.endswith(".tar")) == \
        sorted(f"{layer}.tar" for layer in kept["layers"])
    assert os.listdir(store.tmp_dir) == []


def test_hostile_outer_archive(store, tmp_path):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("oci-layout")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
        info = tarfile.TarInfo("../index.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(InvalidImage, match="leaves the archive"):
        oci.import_image(store, str(path), "evil", fmt="oci-archive")
    assert_untouched(store)


def test_bad_names_and_formats(store, tmp_path):
    with pytest.raises(InvalidImage):
        oci.import_image(store, str(tmp_path), "Bad Name")
    with pytest.raises(InvalidImage, match="not an OCI image layout"):
        oci.import_image(store, str(tmp_path), "ok")
    with pytest.raises(InvalidImage, match="format"):
        oci.export_image(store, "x", str(tmp_path / "o"), "zip")
