"""The busybox base image, built offline from /bin/busybox."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from images import ImageStore, InvalidImage, ensure_busybox
from images.busybox import DEFAULT_COMMAND, busybox_applets
from images.rootfs import command_file_text, env_file_text

BUSYBOX = "/bin/busybox"
pytestmark = pytest.mark.skipif(not os.path.isfile(BUSYBOX), reason="needs busybox-static")


@pytest.fixture(autouse=True)
def _fds(no_fd_leak):
    """Every test here is checked for leaked file descriptors."""


@pytest.fixture
def built(tmp_path):
    store = ImageStore(str(tmp_path / "images"))
    manifest = ensure_busybox(store, BUSYBOX)
    return store, manifest, store.layer_dirs(manifest)[0]


def test_applets_match_busybox_list():
    listed = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True)
    expected = sorted(set(listed.stdout.split()) - {"busybox"})
    assert busybox_applets(BUSYBOX) == expected
    assert "sh" in expected and "httpd" in expected and "init" in expected


def test_not_a_busybox(tmp_path):
    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF nothing here")
    store = ImageStore(str(tmp_path / "images"))
    with pytest.raises(InvalidImage):
        ensure_busybox(store, str(fake))
    with pytest.raises(InvalidImage):
        ensure_busybox(store, str(tmp_path / "missing"))
    assert store.ls() == [] and os.listdir(store.tmp_dir) == []


def test_manifest_fields(built):
    store, m, _layer = built
    assert m["name"] == "busybox" and len(m["layers"]) == 1
    assert m["command"] == DEFAULT_COMMAND == ["httpd", "-f", "-p", "80", "-h", "/var/www"]
    assert m["exposed_ports"] == [{"proto": "tcp", "port": 80}]
    assert (m["stop_signal"], m["init"], m["env"], m["parent"]) == ("SIGUSR1", "/sbin/init", {}, None)
    assert m["templates"] == ["/etc/hostname", "/etc/hosts", "/etc/network/interfaces",
                              "/var/www/index.html"]
    assert store.resolve("busybox") == m


def test_binary_is_a_real_copy_and_applets_link_to_it(built):
    _store, _m, layer = built
    binary = os.path.join(layer, "bin/busybox")
    st = os.lstat(binary)
    assert stat.S_ISREG(st.st_mode) and st.st_mode & 0o777 == 0o755
    with open(binary, "rb") as a, open(BUSYBOX, "rb") as b:
        assert a.read() == b.read()
    for applet in busybox_applets(BUSYBOX):
        assert os.readlink(os.path.join(layer, "bin", applet)) == "busybox"
    assert os.readlink(os.path.join(layer, "sbin/init")) == "/bin/busybox"
    for d, mode in (("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("tmp", 0o1777),
                    ("run", 0o755), ("var/www", 0o755), ("root", 0o700), ("etc", 0o755)):
        assert stat.S_IMODE(os.lstat(os.path.join(layer, d)).st_mode) == mode, d


def test_boot_files(built):
    _store, _m, layer = built
    read = lambda p: open(os.path.join(layer, p.lstrip("/"))).read()  # noqa: E731
    inittab = read("/etc/inittab").splitlines()
    assert "::sysinit:/etc/init.d/rcS" in inittab and "::once:/etc/dcfleet/run" in inittab
    assert not [l for l in inittab if ":respawn:" in l or ":askfirst:" in l]
    assert any(l.startswith("::shutdown:") for l in inittab)
    rcs = read("/etc/init.d/rcS")
    assert "tmpfs /tmp" in rcs and "tmpfs /run" in rcs and "udhcpc" not in rcs
    assert os.stat(os.path.join(layer, "etc/init.d/rcS")).st_mode & 0o111
    assert os.stat(os.path.join(layer, "etc/dcfleet/run")).st_mode & 0o111
    assert read("/etc/passwd").startswith("root:x:0:0:") and read("/etc/group").startswith("root:x:0:")
    assert read("/etc/dcfleet/command") == command_file_text(DEFAULT_COMMAND)
    assert "inet static" in read("/etc/network/interfaces")
    assert "dhcp" not in read("/etc/network/interfaces")


def test_rebuild_gives_same_layer_and_ensure_is_idempotent(built, tmp_path):
    store, m, _layer = built
    assert ensure_busybox(store, BUSYBOX)["id"] == m["id"]
    other = ImageStore(str(tmp_path / "other"))
    assert ensure_busybox(other, BUSYBOX)["layers"] == m["layers"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("chroot"), reason="needs root")
def test_run_script_runs_command_with_env(built, tmp_path):
    _store, _m, layer = built
    root = tmp_path / "rootfs"
    shutil.copytree(layer, root, symlinks=True)
    (root / "etc/dcfleet/command").write_text(command_file_text(["echo", "a  b", "$HOME", "$FOO"]))
    (root / "etc/dcfleet/env").write_text(env_file_text({"FOO": "it's x"}))
    out = subprocess.run([shutil.which("chroot"), str(root), "/etc/dcfleet/run"], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout == "a  b $HOME $FOO\n"  # arguments exactly, nothing expanded
    (root / "etc/dcfleet/command").write_text(command_file_text(["sh", "-c", 'echo "$FOO"']))
    out = subprocess.run([shutil.which("chroot"), str(root), "/etc/dcfleet/run"], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/bin"})
    assert out.stdout == "it's x\n"
    (root / "etc/dcfleet/command").write_text("")
    out = subprocess.run([shutil.which("chroot"), str(root), "/etc/dcfleet/run"], capture_output=True,
                         text=True, timeout=30, env={"PATH": "/bin"})
    assert (out.returncode, out.stdout) == (0, "")


def test_busybox_image_id_is_the_same_on_every_host(tmp_path):
    """Two stores (two hosts) with the same busybox binary build one image id."""
    from images import ImageStore, ensure_busybox
    a = ensure_busybox(ImageStore(str(tmp_path / "a")))
    b = ensure_busybox(ImageStore(str(tmp_path / "b")))
    assert a["id"] == b["id"] and a["layers"] == b["layers"]
