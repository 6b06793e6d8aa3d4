"""pack_dir writes the bytes tarfile itself would (the layer id is their
sha256, so they must never drift): compared with TarFile.addfile over the
same walk, on a tree with every kind of entry."""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile

import pytest

from images import packing
from images.tarsafe import OPAQUE_XATTR


def reference_pack(src_dir: str, out_path: str) -> str:
    """The canonical tar through tarfile (as pack_dir wrote it before)."""
    seen: dict = {}
    with open(out_path, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                          errors="surrogateescape") as tar:
            for path, st, kind in packing._walk(src_dir):
                if kind != "entry":
                    info = tarfile.TarInfo(path)
                    info.mode, info.uid, info.gid, info.mtime = 0, 0, 0, 0
                    info.uname = info.gname = ""
                    tar.addfile(info)
                    continue
                info = packing._info(path, st)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(os.path.join(src_dir, path))
                    tar.addfile(info)
                elif (st.st_dev, st.st_ino) in seen:
                    info.type, info.linkname = tarfile.LNKTYPE, seen[(st.st_dev, st.st_ino)]
                    tar.addfile(info)
                else:
                    if st.st_nlink > 1:
                        seen[(st.st_dev, st.st_ino)] = path
                    info.size = st.st_size
                    with open(os.path.join(src_dir, path), "rb") as f:
                        tar.addfile(info, f)
    with open(out_path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts need root")
def test_pack_dir_bytes_equal_tarfiles(tmp_path):
    root = tmp_path / "tree"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "d" / "small").write_bytes(b"x" * 700)
    (root / "d" / "big").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "d" / "empty").write_bytes(b"")
    os.link(root / "d" / "small", root / "hard")
    os.symlink("d/small", root / "sym")
    long_name = "n" * 120 + "/" + "m" * 150
    (root / long_name).parent.mkdir()
    (root / long_name).write_bytes(b"long")
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    (root / "\u00e9t\u00e9").write_bytes(b"utf-8 name")
    os.mknod(root / "d" / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    os.setxattr(root / "d" / "sub", OPAQUE_XATTR, b"y")
    os.chmod(root / "d" / "small", 0o4755)
    os.chown(root / "d" / "big", 1234, 5678)
    ours = packing.pack_dir(str(root), str(tmp_path / "ours.tar"))
    theirs = reference_pack(str(root), str(tmp_path / "theirs.tar"))
    assert ours == (theirs, os.path.getsize(tmp_path / "theirs.tar"))
    assert (tmp_path / "ours.tar").read_bytes() == (tmp_path / "theirs.tar").read_bytes()
