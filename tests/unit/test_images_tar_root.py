"""Archives made the common way, ``tar -C DIR -cf X .``, start with the root
entry ``./``: OCI archives, docker-save archives and rootfs tarballs made so
import (the root is the archive's own directory), while a root entry that is
not a directory is still refused."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import tarfile

import pytest

from images import ImageStore, InvalidImage
from images import oci
from tests import ocikit
from tests.unit.test_images_oci import BASE, TOP, layer_tar, write_image


def tar_dot(src: str, out: str, *flags: str) -> str:
    """``tar -C src -cf out .`` (GNU tar, as an operator runs it)."""
    subprocess.run(["tar", *flags, "-C", src, "-cf", out, "."], check=True)
    with tarfile.open(out) as tar:
        assert tar.getnames()[0] in (".", "./"), tar.getnames()[:3]
    return out


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "store"))


@pytest.mark.parametrize("flags", [(), ("-z",)])
def test_oci_archive_of_a_layout_dir(store, tmp_path, flags):
    layout = str(tmp_path / "oci")
    write_image(layout, "v1", [layer_tar(BASE), layer_tar(TOP)])
    want = oci.import_image(ImageStore(str(tmp_path / "ref")), layout, "app", "v1")
    archive = tar_dot(layout, str(tmp_path / "app.tar"), *flags)
    assert oci.detect_format(archive) == "oci-archive"
    got = oci.import_image(store, archive, "app", "v1")
    assert got["id"] == want["id"] and got["exposed_ports"] == want["exposed_ports"]


def test_oci_archive_of_a_umoci_layout(store, tmp_path):
    ocikit.need_tools()
    lay = ocikit.make_umoci_image(str(tmp_path / "work"))  # umoci init --layout, new, repack, config
    archive = tar_dot(lay, str(tmp_path / "app.tar"))
    m = oci.import_image(store, archive, "umo")
    assert m["tag"] == "v1" and m["exposed_ports"] == [{"proto": "tcp", "port": 8080}]


def test_docker_save_archive_of_a_dir(store, tmp_path):
    root = tmp_path / "docker"
    (root / "l1").mkdir(parents=True)
    base = layer_tar(BASE)
    (root / "l1" / "layer.tar").write_bytes(base)
    cfg = json.dumps({"created": "2024-01-01T00:00:00Z", "config": {"Cmd": ["sh"]},
                      "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(base).hexdigest()]}})
    cid = hashlib.sha256(cfg.encode()).hexdigest()
    (root / f"{cid}.json").write_text(cfg)
    (root / "manifest.json").write_text(json.dumps([{"Config": f"{cid}.json", "RepoTags": ["repo/app:7.1"],
                                                      "Layers": ["l1/layer.tar"]}]))
    archive = tar_dot(str(root), str(tmp_path / "d.tar"))
    assert oci.detect_format(archive) == "docker-archive"
    m = oci.import_image(store, archive, "app")
    assert m["tag"] == "7.1" and m["command"] == ["sh"]


def test_rootfs_tarball_and_a_layer_made_with_dot(store, tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("hi\n")
    os.chmod(root, 0o755)
    path = tar_dot(str(root), str(tmp_path / "r.tgz"), "-z")
    m = oci.import_image(store, path, "plain")
    top = os.path.join(store.layers_dir, m["layers"][-1])
    with open(os.path.join(top, "etc", "motd")) as f:
        assert f.read() == "hi\n"
    # an OCI layer tar made with `tar -C DIR -cf layer.tar .` inside a layout
    layer = tar_dot(str(root), str(tmp_path / "layer.tar"))
    with open(layer, "rb") as f:
        data = f.read()
    layout = str(tmp_path / "lay")
    write_image(layout, "v1", [data], {"Cmd": ["sh"]})
    assert oci.import_image(ImageStore(str(tmp_path / "s2")), layout, "lay")["command"] == ["sh"]


def test_a_root_entry_that_is_not_a_directory_is_refused(store, tmp_path):
    layout = str(tmp_path / "oci")
    write_image(layout, "v1", [layer_tar(BASE)])
    archive = str(tmp_path / "evil.tar")
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("./")
        info.type = tarfile.REGTYPE
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
        for name in sorted(os.listdir(layout)):
            tar.add(os.path.join(layout, name), arcname=name)
    with pytest.raises(InvalidImage):
        oci.import_image(store, archive, "evil", fmt="oci-archive")
    assert store.ls() == []
