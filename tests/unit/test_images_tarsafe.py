"""Hostile archives: each kind is refused, leaving the store and the rest of the
filesystem exactly as they were."""
from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from images import ImageStore, InvalidImage, safe_extract
from images.packing import pack_dir
from tests.unit.test_images_store import MTIME, make_tar, snapshot

MiB = 1024 * 1024


@pytest.fixture(autouse=True)
def _fds(no_fd_leak):
    """Every test here is checked for leaked file descriptors."""


@pytest.fixture
def env(tmp_path):
    """A store, an 'outside' dir that hostile members aim at, and a checker."""
    store = ImageStore(str(tmp_path / "images"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")

    def refused(archive, match=None, **kw):
        before, before_out = snapshot(store.root), snapshot(outside)
        with pytest.raises(InvalidImage, match=match):
            store.import_tar(str(archive), "hostile", **kw)
        assert snapshot(store.root) == before, "store changed"
        assert snapshot(outside) == before_out, "something was written outside"
        assert (outside / "victim").read_text() == "original"
        assert store.ls() == []

    return store, outside, refused


def sym(target):
    return {"type": tarfile.SYMTYPE, "linkname": str(target)}


def test_absolute_member_name(env, tmp_path):
    store, outside, refused = env
    refused(make_tar(tmp_path / "t.tar", [("ok", b"1"), (str(outside / "abs"), b"x")]),
            match="absolute")


def test_dotdot_member_name(env, tmp_path):
    store, outside, refused = env
    refused(make_tar(tmp_path / "t.tar", [("a/../../outside/x", b"x")]), match=r"'\.\.'")


def test_symlink_then_write_through_it(env, tmp_path):
    store, outside, refused = env
    # the absolute symlink itself is allowed (read relative to the rootfs root)...
    members = [("link", b"", sym(outside)), ("link/pwned", b"x")]
    # ...but writing through it is not
    refused(make_tar(tmp_path / "t.tar", members), match="symlink or not a directory")
    deep = [("d", b"", {"type": tarfile.DIRTYPE}), ("d/l", b"", sym("..")),
            ("d/l/d/l/victim", b"x")]
    refused(make_tar(tmp_path / "t2.tar", deep), match="symlink")


def test_relative_symlink_escaping_root(env, tmp_path):
    store, outside, refused = env
    refused(make_tar(tmp_path / "t.tar", [("a/b", b"", sym("../../outside"))]),
            match="outside the root")
    refused(make_tar(tmp_path / "t2.tar", [("x", b"", sym("/../etc"))]), match="outside the root")


def test_symlink_replaced_by_file_is_not_written_through(env, tmp_path):
    store, outside, refused = env
    members = [("x", b"", sym(outside / "victim")), ("x", b"new content")]
    m = store.import_tar(make_tar(tmp_path / "t.tar", members), "dup")
    layer = store.layer_dirs(m)[0]
    assert not os.path.islink(os.path.join(layer, "x"))
    assert open(os.path.join(layer, "x"), "rb").read() == b"new content"
    assert (outside / "victim").read_text() == "original"


def test_absolute_symlinks_inside_rootfs_are_fine(env, tmp_path):
    store, outside, refused = env
    members = [("bin/busybox", b"elf"), ("bin/sh", b"", sym("/bin/busybox")),
               ("usr/bin/env", b"", sym("../../bin/busybox"))]
    m = store.import_tar(make_tar(tmp_path / "t.tar", members), "ok")
    assert os.readlink(os.path.join(store.layer_dirs(m)[0], "bin/sh")) == "/bin/busybox"


def test_hard_links_out_or_missing(env, tmp_path):
    store, outside, refused = env
    hl = tarfile.LNKTYPE
    refused(make_tar(tmp_path / "a.tar", [("h", b"", {"type": hl, "linkname": str(outside / "victim")})]),
            match="absolute")
    refused(make_tar(tmp_path / "b.tar", [("h", b"", {"type": hl, "linkname": "../outside/victim"})]),
            match=r"'\.\.'")
    refused(make_tar(tmp_path / "c.tar", [("h", b"", {"type": hl, "linkname": "nothere"})]),
            match="not an earlier file")
    refused(make_tar(tmp_path / "d.tar", [("dir", b"", {"type": tarfile.DIRTYPE}),
                                          ("h", b"", {"type": hl, "linkname": "dir"})]),
            match="not an earlier file")
    # a hard link through an earlier symlink to a host file
    refused(make_tar(tmp_path / "e.tar", [("s", b"", sym(outside)),
                                          ("h", b"", {"type": hl, "linkname": "s/victim"})]),
            match="not an earlier file")


@pytest.mark.parametrize("kind,match", [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"),
                                        (tarfile.FIFOTYPE, "fifo")])
def test_device_nodes_and_fifos(env, tmp_path, kind, match):
    store, outside, refused = env
    refused(make_tar(tmp_path / "t.tar", [("ok", b"1"), ("dev/node", b"", {"type": kind})]),
            match=match)


def test_truncated_garbage_and_empty(env, tmp_path):
    store, outside, refused = env
    one = tmp_path / "one.tar"
    one.write_bytes(b"x")
    refused(one)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    refused(empty)
    only_zeros = tmp_path / "zeros.tar"
    only_zeros.write_bytes(b"\0" * 10240)
    refused(only_zeros, match="no members")
    good = make_tar(tmp_path / "good.tar", [("a", os.urandom(5000)), ("b", b"2")])
    cut = tmp_path / "cut.tar"
    cut.write_bytes(open(good, "rb").read()[:3000])
    refused(cut, match="truncated")
    gz = make_tar(tmp_path / "good.tar.gz", [("a", os.urandom(50000))], "w:gz")
    cutgz = tmp_path / "cut.tar.gz"
    cutgz.write_bytes(open(gz, "rb").read()[:20000])
    refused(cutgz)
    zstd = tmp_path / "z.tar.zst"
    zstd.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 100)
    refused(zstd, match="zstd")


def test_gzip_bomb_capped_by_size(env, tmp_path):
    store, outside, refused = env
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            info = tarfile.TarInfo("zeros")
            info.size = 64 * MiB
            tar.addfile(info, io.BytesIO(bytes(64 * MiB)))
    assert os.path.getsize(bomb) < MiB
    refused(bomb, match="size cap", max_bytes=4 * MiB)


def test_many_small_members_capped(env, tmp_path):
    store, outside, refused = env
    refused(make_tar(tmp_path / "t.tar", [(f"f{i}", b"x") for i in range(50)]),
            match="more than 10 members", max_members=10)


def test_huge_pax_header_refused_without_reading_it(env, tmp_path):
    store, outside, refused = env
    info = tarfile.TarInfo("././@PaxHeader")
    info.type, info.size = tarfile.XHDTYPE, 512 * MiB
    path = tmp_path / "pax.tar.gz"
    with gzip.open(path, "wb") as gz:
        gz.write(info.tobuf(format=tarfile.USTAR_FORMAT))
        gz.write(b"9 a=b\n" * 1000)
    refused(path, match="header record")


def test_long_names(env, tmp_path):
    store, outside, refused = env
    refused(make_tar(tmp_path / "a.tar", [("d/" + "x" * 256, b"1")]), match="255")
    refused(make_tar(tmp_path / "b.tar", [("/".join(["d" * 200] * 21), b"1")]), match="4096")


def test_safe_extract_preserves_metadata(tmp_path):
    members = [("d", b"", {"type": tarfile.DIRTYPE, "mode": 0o1777}),
               ("d/s", b"#!", {"mode": 0o6755}),
               ("d/l", b"", {"type": tarfile.SYMTYPE, "linkname": "s"}),
               ("d/h", b"", {"type": tarfile.LNKTYPE, "linkname": "d/s"})]
    dest = tmp_path / "dest"
    dest.mkdir()
    res = safe_extract(make_tar(tmp_path / "t.tar.xz", members, "w:xz"), str(dest))
    assert res == {"members": 4, "bytes": 2, "compression": "xz"}
    assert os.stat(dest / "d").st_mode & 0o7777 == 0o1777
    assert os.stat(dest / "d").st_mtime == MTIME
    assert os.stat(dest / "d/s").st_mode & 0o7777 == 0o6755
    assert os.lstat(dest / "d/l").st_mtime == MTIME
    assert os.stat(dest / "d/h").st_ino == os.stat(dest / "d/s").st_ino


def test_safe_extract_empties_target_on_refusal(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    bad = make_tar(tmp_path / "t.tar", [("a/b/c", b"1"), ("dev", b"", {"type": tarfile.CHRTYPE})])
    with pytest.raises(InvalidImage, match="'dev'"):
        safe_extract(bad, str(dest))
    assert os.listdir(dest) == []


def test_pack_dir_is_deterministic(tmp_path):
    src = tmp_path / "src"
    (src / "a/b").mkdir(parents=True)
    (src / "a/b/f").write_bytes(b"data")
    os.link(src / "a/b/f", src / "a/g")
    os.symlink("/a/b/f", src / "s")
    for p in (src / "a/b/f", src / "a/b", src / "a"):
        os.utime(p, (MTIME, MTIME))
    one = pack_dir(str(src), str(tmp_path / "1.tar"))
    two = pack_dir(str(src), str(tmp_path / "2.tar"))
    assert one == two
    with tarfile.open(tmp_path / "1.tar") as tar:
        names = [(m.name, m.type) for m in tar]
    assert names == [("a", tarfile.DIRTYPE), ("a/b", tarfile.DIRTYPE), ("a/b/f", tarfile.REGTYPE),
                     ("a/g", tarfile.LNKTYPE), ("s", tarfile.SYMTYPE)]


def test_pack_dir_refuses_what_extract_would_refuse(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    os.symlink("../../etc", src / "a/up")
    with pytest.raises(InvalidImage, match="outside the root"):
        pack_dir(str(src), str(tmp_path / "out.tar"))
