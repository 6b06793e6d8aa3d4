"""An overlay upper dir packed as a layer (images/layerdiff.py): whiteouts
(0/0 char devices) become .wh.NAME, opaque dirs .wh..wh..opq, modes, owners,
symlinks and hard links are kept; redirect/metacopy xattrs are refused and
leave nothing in the store."""
from __future__ import annotations

import os
import stat
import tarfile

import pytest

from images import layerdiff
from images.errors import InvalidImage
from images.store import ImageStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mknod and trusted.* xattrs need root")


def _upper(root):
    up = root / "upper"
    (up / "srv" / "repl").mkdir(parents=True)
    os.setxattr(up / "srv" / "repl", "trusted.overlay.opaque", b"y")
    (up / "srv" / "repl" / "new").write_text("new\n")
    os.mknod(up / "srv" / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    (up / "srv" / "chg").write_text("changed\n")
    os.chown(up / "srv" / "chg", 12, 34)  # (a chown clears setuid: chmod after it)
    os.chmod(up / "srv" / "chg", 0o4751)
    os.symlink("chg", up / "srv" / "link")
    os.link(up / "srv" / "chg", up / "srv" / "hard")
    return up


def test_upper_dir_becomes_a_layer_with_whiteouts_and_opaque(tmp_path):
    store = ImageStore(str(tmp_path / "store"))
    layer_id, size = layerdiff.diff_layer(store, str(_upper(tmp_path)))
    path = store.export_layer(layer_id)
    assert size == os.path.getsize(path)
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert set(members) == {"srv", "srv/.wh.gone", "srv/chg", "srv/hard", "srv/link", "srv/repl",
                            "srv/repl/.wh..wh..opq", "srv/repl/new"}
    chg = members["srv/chg"]
    assert (stat.S_IMODE(chg.mode), chg.uid, chg.gid) == (0o4751, 12, 34)
    assert members["srv/link"].issym() and members["srv/link"].linkname == "chg"
    assert members["srv/hard"].islnk() and members["srv/hard"].linkname == "srv/chg"
    # unpacked, it is an overlay lower dir again: the whiteout and the opaque mark are back
    unpacked = os.path.join(store.layers_dir, layer_id)
    st = os.lstat(os.path.join(unpacked, "srv", "gone"))
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(os.path.join(unpacked, "srv", "repl"), "trusted.overlay.opaque") == b"y"
    assert store.gc()["removed_layers"] == []  # pinned until the image is committed
    store.unpin(layer_id)
    assert store.gc()["removed_layers"] == [layer_id]


@pytest.mark.parametrize("attr", layerdiff.REFUSED_XATTRS)
def test_redirect_or_metacopy_refused_and_nothing_left(tmp_path, attr):
    store = ImageStore(str(tmp_path / "store"))
    up = _upper(tmp_path)
    os.setxattr(up / "srv" / "chg", attr, b"/elsewhere" if "redirect" in attr else b"")
    with pytest.raises(InvalidImage, match=attr):
        layerdiff.diff_layer(store, str(up))
    assert os.listdir(store.layers_dir) == [] and os.listdir(store.tmp_dir) == []


def test_overlay_features_read_from_module_parameters(tmp_path):
    (tmp_path / "redirect_dir").write_text("N\n")
    (tmp_path / "metacopy").write_text("N\n")
    assert layerdiff.overlay_features_off(str(tmp_path))
    (tmp_path / "metacopy").write_text("Y\n")
    assert not layerdiff.overlay_features_off(str(tmp_path))
