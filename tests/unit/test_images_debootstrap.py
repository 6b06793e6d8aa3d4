"""Debian image: mirror discovery and post-processing offline (through the
``run`` seam), and one real debootstrap build behind the ``slow`` marker."""
from __future__ import annotations

import os
import shutil
import stat

import pytest

from images import ImageError, ImageStore, InvalidImage, build_debian, default_mirror
from images.debootstrap import DEFAULT_INCLUDE
from lxcwrap.run import Completed, ToolTimeout
from tests.unit.test_images_store import snapshot


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "images"))


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_default_mirror_deb822(tmp_path):
    write(tmp_path / "sources.list.d/debian.sources", """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
""")
    write(tmp_path / "sources.list.d/other.list.disabled", "deb http://nope/debian bookworm main\n")
    assert default_mirror("bookworm", str(tmp_path)) == "http://mirror.example/debian"


def test_default_mirror_legacy_list(tmp_path):
    write(tmp_path / "sources.list", """\
# deb http://commented/debian bookworm main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/k.gpg] http://legacy.example/debian/ bookworm main contrib
deb http://security.debian.org/debian-security bookworm-security main
""")
    assert default_mirror("bookworm", str(tmp_path)) == "http://legacy.example/debian"
    assert default_mirror("trixie", str(tmp_path)) == "http://legacy.example/debian"


def test_default_mirror_fallback(tmp_path):
    assert default_mirror("bookworm", str(tmp_path)) == "http://deb.debian.org/debian"


def test_default_mirror_of_this_machine():
    assert default_mirror().startswith(("http://", "https://"))


@pytest.mark.parametrize("kw", [{"name": "Debian"}, {"suite": "../x"}, {"mirror": "ftp://x"},
                                {"mirror": "http://x/ y"}, {"variant": "full"},
                                {"include": ["ok", "bad;rm"]}])
def test_bad_arguments(store, kw):
    def never(argv, timeout_s):
        raise AssertionError("debootstrap must not run")
    with pytest.raises(InvalidImage):
        build_debian(store, **{"mirror": "http://deb.debian.org/debian", **kw}, run=never)


def test_failure_leaves_nothing(store):
    before = snapshot(store.root)

    def failing(argv, timeout_s):
        os.makedirs(os.path.join(argv[-2], "debootstrap"))
        write(os.path.join(argv[-2], "debootstrap/debootstrap.log"), "E: Couldn't download foo\n")
        return Completed(tuple(argv), 1, b"", b"")

    with pytest.raises(ImageError, match="exited 1: E: Couldn't download foo"):
        build_debian(store, mirror="http://deb.debian.org/debian", run=failing)

    def timing_out(argv, timeout_s):
        raise ToolTimeout("debootstrap ran past 1 s and was killed", argv)

    with pytest.raises(ImageError, match="ran past"):
        build_debian(store, mirror="http://deb.debian.org/debian", run=timing_out)
    assert snapshot(store.root) == before


def test_post_processing_through_the_seam(store):
    seen = {}

    def fake_debootstrap(argv, timeout_s):
        seen["argv"] = list(argv)
        root = argv[-2]
        write(os.path.join(root, "usr/lib/systemd/systemd"), "elf")
        os.symlink("usr/sbin", os.path.join(root, "sbin"))
        os.makedirs(os.path.join(root, "usr/sbin"))
        os.symlink("../lib/systemd/systemd", os.path.join(root, "usr/sbin/init"))
        write(os.path.join(root, "etc/machine-id"), "0123456789abcdef\n")
        write(os.path.join(root, "etc/resolv.conf"), "nameserver 169.254.169.254\n")
        write(os.path.join(root, "var/cache/apt/archives/foo.deb"), "deb")
        os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"))
        os.makedirs(os.path.join(root, "dev/pts"))
        if os.geteuid() == 0:
            os.mknod(os.path.join(root, "dev/null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        return Completed(tuple(argv), 0, b"", b"")

    m = build_debian(store, name="deb12", mirror="http://mirror.example/debian",
                     run=fake_debootstrap, timeout_s=5)
    assert seen["argv"] == ["debootstrap", "--variant=minbase",
                            "--include=" + ",".join(DEFAULT_INCLUDE), "bookworm",
                            seen["argv"][-2], "http://mirror.example/debian"]
    assert seen["argv"][-2].startswith(store.tmp_dir)
    assert (m["name"], m["stop_signal"], m["init"], m["command"]) == ("deb12", "SIGRTMIN+3",
                                                                       "/sbin/init", [])
    assert m["templates"] == ["/etc/hostname", "/etc/hosts", "/etc/network/interfaces"]
    layer = store.layer_dirs(m)[0]
    assert os.listdir(os.path.join(layer, "dev")) == []
    assert open(os.path.join(layer, "etc/machine-id")).read() == ""
    assert "169.254" not in open(os.path.join(layer, "etc/resolv.conf")).read()
    assert os.listdir(os.path.join(layer, "var/cache/apt/archives")) == ["partial"]
    assert os.path.islink(os.path.join(layer, "etc/systemd/system/multi-user.target.wants/"
                                              "dcfleet-run.service"))
    assert os.access(os.path.join(layer, "etc/dcfleet/run"), os.X_OK)
    assert os.listdir(store.tmp_dir) == []


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("debootstrap"),
                    reason="needs root and debootstrap")
def test_real_debootstrap_build(store):
    m = build_debian(store)
    layer = store.layer_dirs(m)[0]
    assert os.path.islink(os.path.join(layer, "sbin")) or os.path.exists(os.path.join(layer, "sbin/init"))
    assert os.path.lexists(os.path.join(layer, "usr/sbin/init"))
    assert os.path.isfile(os.path.join(layer, "usr/sbin/ifup"))
    assert os.listdir(os.path.join(layer, "dev")) == []
    assert os.listdir(store.tmp_dir) == []
    assert store.resolve("debian")["id"] == m["id"]
