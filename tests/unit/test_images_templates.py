"""Templates rendered at container create: sandboxed, strict, no escapes."""
from __future__ import annotations

import os
import stat
import tarfile

import pytest

from images import ImageStore, InvalidImage, ensure_busybox, render_templates
from images.templates import render_text
from tests.unit.test_images_store import make_tar, snapshot

CONTEXT = {"name": "jerome.web", "hostname": "web", "address": "10.0.3.17", "prefixlen": 24,
           "gateway": "10.0.3.1", "host": "host-a", "exposed_ports": [{"proto": "tcp", "port": 80}],
           "env": {"A": "1"}}


@pytest.fixture(autouse=True)
def _fds(no_fd_leak):
    """Every test here is checked for leaked file descriptors."""


@pytest.fixture
def store(tmp_path):
    return ImageStore(str(tmp_path / "images"))


def image(store, tmp_path, files, templates, extra=()):
    """Import an image whose files are {path: text}; templates listed as given."""
    members = [(p, t.encode(), {"mode": 0o640}) for p, t in files.items()] + list(extra)
    return store.import_tar(make_tar(tmp_path / "img.tar", members), "tmpl", templates=templates)


def test_busybox_templates_render(store, tmp_path):
    m = ensure_busybox(store)
    dest = tmp_path / "rootfs"
    dest.mkdir()
    written = render_templates(store, m, str(dest), CONTEXT)
    assert written == [str(dest / p.lstrip("/")) for p in m["templates"]]
    assert (dest / "etc/hostname").read_text() == "web\n"
    hosts = (dest / "etc/hosts").read_text()
    assert "127.0.0.1\tlocalhost" in hosts and "10.0.3.17\tweb" in hosts
    ifaces = (dest / "etc/network/interfaces").read_text()
    assert "address 10.0.3.17/24" in ifaces and "gateway 10.0.3.1" in ifaces
    html = (dest / "var/www/index.html").read_text()
    assert "Hello from jerome.web on host host-a" in html and "tcp/80" in html
    assert stat.S_IMODE(os.stat(dest / "etc/hostname").st_mode) == 0o644


def test_mode_kept_and_html_autoescaped(store, tmp_path):
    m = image(store, tmp_path, {"etc/motd": "hi {{ name }}\n", "www/i.html": "<b>{{ name }}</b>"},
              ["/etc/motd", "/www/i.html"])
    dest = tmp_path / "d"
    dest.mkdir()
    render_templates(store, m, str(dest), dict(CONTEXT, name="<x>"))
    assert (dest / "etc/motd").read_text() == "hi <x>\n"
    assert (dest / "www/i.html").read_text() == "<b>&lt;x&gt;</b>"
    assert stat.S_IMODE(os.stat(dest / "etc/motd").st_mode) == 0o640


def test_strict_undefined_names_file_and_line(store, tmp_path):
    m = image(store, tmp_path, {"etc/ok": "{{ name }}", "etc/conf": "a\nb\nvalue={{ nameserver }}\n"},
              ["/etc/ok", "/etc/conf"])
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(InvalidImage, match=r"template /etc/conf line 3: .*'nameserver' is undefined"):
        render_templates(store, m, str(dest), CONTEXT)
    assert os.listdir(dest) == []  # nothing written, not even the good template


@pytest.mark.parametrize("source,match", [
    ("{{ ''.__class__ }}", "unsafe"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ("{{ cycler.__init__.__globals__ }}", "undefined|unsafe"),
    ("{{ env.__class__ }}", "unsafe"),
    ("{{ 9 ** 99999999 }}", "too large"),
    ("{{ 'x' * 999999999 }}", "too large"),
    ("{% include '/etc/passwd' %}", "TemplateNotFound"),
    ("{% for x in range(10**9) %}{% endfor %}", "Range too big"),
    ("{% if %}", "line 1: TemplateSyntaxError"),
])
def test_sandbox(source, match):
    with pytest.raises(InvalidImage, match=match):
        render_text(source, "/etc/x", CONTEXT)


def test_output_is_capped():
    with pytest.raises(InvalidImage, match="output over"):
        render_text("{% for i in range(99999) %}{{ 'y' * 1000 }}{% endfor %}", "/etc/x", {})


def test_path_traversal_refused(store, tmp_path):
    m = image(store, tmp_path, {"etc/hostname": "{{ hostname }}"}, ["/etc/hostname"])
    dest = tmp_path / "d"
    dest.mkdir()
    for bad in ("/etc/../../outside", "etc/hostname", "/"):
        with pytest.raises(InvalidImage):
            render_templates(store, dict(m, templates=[bad]), str(dest), CONTEXT)
    assert os.listdir(dest) == []


def test_symlink_in_destination_not_followed(store, tmp_path):
    m = image(store, tmp_path, {"etc/hostname": "{{ hostname }}", "var/www/x": "{{ name }}"},
              ["/etc/hostname", "/var/www/x"])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("original")
    before = snapshot(outside)
    dest = tmp_path / "d"
    (dest / "etc").mkdir(parents=True)
    os.symlink(outside / "victim", dest / "etc/hostname")   # final component: replaced
    render_templates(store, dict(m, templates=["/etc/hostname"]), str(dest), CONTEXT)
    assert not os.path.islink(dest / "etc/hostname")
    assert (dest / "etc/hostname").read_text() == "web"
    os.symlink(outside, dest / "var")                       # directory on the way: refused
    with pytest.raises(InvalidImage, match="symlink"):
        render_templates(store, m, str(dest), CONTEXT)
    assert snapshot(outside) == before and (outside / "victim").read_text() == "original"


def test_symlinked_template_source_is_not_read(store, tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("host secret {{ name }}")
    link = ("etc/hostname", b"", {"type": tarfile.SYMTYPE, "linkname": str(secret)})
    # commit refuses to list a symlink as a template...
    with pytest.raises(InvalidImage, match="not a regular file"):
        image(store, tmp_path, {"etc/other": "x"}, ["/etc/hostname"], extra=[link])
    # ...and render_templates refuses it even in a hand-made manifest
    m = image(store, tmp_path, {"etc/other": "x"}, ["/etc/other"], extra=[link])
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(InvalidImage, match="/etc/hostname"):
        render_templates(store, dict(m, templates=["/etc/hostname"]), str(dest), CONTEXT)
    assert os.listdir(dest) == []


def test_missing_template(store, tmp_path):
    m = image(store, tmp_path, {"etc/a": "x"}, ["/etc/a"])
    dest = tmp_path / "d"
    dest.mkdir()
    with pytest.raises(InvalidImage, match="/etc/nope: not found"):
        render_templates(store, dict(m, templates=["/etc/nope"]), str(dest), CONTEXT)


def test_an_imported_rootfs_gets_the_network_identity_templates(store, tmp_path):
    from images.rootfs import NETWORK_TEMPLATES
    dirs = [("etc", b"", {"type": tarfile.DIRTYPE, "mode": 0o755})]
    # a rootfs exported from a built image: the templates' literal text, no templates listed
    m = image(store, tmp_path, {"etc/hostname": "{{ hostname }}\n", "etc/hosts": "127.0.0.1 builder\n"},
              [], extra=dirs)
    assert m["templates"] == []
    dest = tmp_path / "d"
    dest.mkdir()
    written = render_templates(store, m, str(dest), CONTEXT, NETWORK_TEMPLATES)
    assert (dest / "etc/hostname").read_text() == "web\n"
    assert "10.0.3.17\tweb" in (dest / "etc/hosts").read_text()
    assert stat.S_IMODE(os.stat(dest / "etc/hostname").st_mode) == 0o640  # the image's own mode
    # no /etc/network in the image: nothing is made there
    assert not (dest / "etc/network").exists()
    assert sorted(written) == [str(dest / "etc/hostname"), str(dest / "etc/hosts")]


def test_an_images_own_templates_win_over_the_defaults(store, tmp_path):
    from images.rootfs import NETWORK_TEMPLATES
    m = image(store, tmp_path, {"etc/hostname": "own-{{ name }}\n", "etc/network/interfaces": "x\n"},
              ["/etc/hostname"])
    dest = tmp_path / "d"
    dest.mkdir()
    render_templates(store, m, str(dest), CONTEXT, NETWORK_TEMPLATES)
    assert (dest / "etc/hostname").read_text() == "own-jerome.web\n"
    assert "address 10.0.3.17/24" in (dest / "etc/network/interfaces").read_text()


def test_defaults_never_shadow_a_symlinked_directory(store, tmp_path):
    from images.rootfs import NETWORK_TEMPLATES
    m = image(store, tmp_path, {"real/hostname": "x\n"}, [],
              extra=[("etc", b"", {"type": tarfile.SYMTYPE, "linkname": "real"})])
    dest = tmp_path / "d"
    dest.mkdir()
    assert render_templates(store, m, str(dest), CONTEXT, NETWORK_TEMPLATES) == []
    assert os.listdir(dest) == []


def test_a_kept_compiled_template_renders_each_context_and_still_includes_nothing():
    """Templates are compiled once and kept (a create renders the same few
    each time): the kept one renders each call's own context, a template
    that includes itself is refused on every render, and a large one is
    not kept but renders the same."""
    assert render_text("{{ hostname }}\n", "/etc/hostname", {"hostname": "a"}) == "a\n"
    assert render_text("{{ hostname }}\n", "/etc/hostname", {"hostname": "b"}) == "b\n"
    for _ in range(2):
        with pytest.raises(InvalidImage, match="TemplateNotFound"):
            render_text("{% include '/etc/self' %}", "/etc/self", {})
    big = "{{ name }}" + "x" * 20000
    assert render_text(big, "/etc/big", {"name": "n"}) == "n" + "x" * 20000
    assert render_text("<{{ v }}>", "/var/www/i.html", {"v": "<b>"}) == "<&lt;b&gt;>"
    assert render_text("<{{ v }}>", "/etc/i.conf", {"v": "<b>"}) == "<<b>>"
