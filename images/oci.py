"""Images from the ecosystem: OCI image layouts and ``docker save`` archives,
imported into the store and exported from it.

Formats read by ``import_image`` (``detect_format`` tells them apart):

* ``oci``: an OCI image layout directory (``oci-layout``, ``index.json``,
  ``blobs/sha256/...``), as ``skopeo copy ... oci:DIR:TAG`` or umoci write;
* ``oci-archive``: the same layout as a tar (``skopeo ... oci-archive:``),
  and the OCI form ``docker save`` writes since Docker 25 (it also carries a
  legacy ``manifest.json``; the OCI index is read);
* ``docker-archive``: the legacy ``docker save`` form (``manifest.json`` with
  Config / RepoTags / Layers, ``<id>/layer.tar`` members, maybe symlinked);
* ``rootfs``: any other tarball, imported as before (ImageStore.import_tar).

An archive may itself be gzip, xz or bzip2 compressed (``docker save |
gzip``): it is then read from a plain copy in the store's staging area.

What is checked, before anything is kept:

* every blob's size against its descriptor and its sha256 against its
  digest (the legacy form's config against its file name); every layer's
  decompressed tar (plain or gzip; zstd refused) against its ``diff_id``;
* every layer with tarsafe's hostile-archive rules, in layer mode: whiteouts
  ``.wh.NAME`` / ``.wh..wh..opq`` become overlayfs whiteouts in the store's
  layer, a whiteout naming no path in the layer and a path appearing twice
  are refused;
* index, manifest and config JSON at most MAX_JSON_BYTES each; a member or
  a blob named by a manifest must be in the archive (not a symlink out);
* a layout holding several images needs ``select`` (the tag, as in
  skopeo's ``oci:PATH:TAG``): AmbiguousImageRef lists them.

The image config maps onto the manifest: Entrypoint+Cmd -> command, Env ->
env, ExposedPorts -> exposed_ports, StopSignal -> stop_signal (default
SIGTERM); Entrypoint, Cmd, WorkingDir, User, Volumes and Labels are kept in
``config``.  The image's layers, then the dcfleet layer (images.appinit),
make the store image; its init is images.appinit.INIT_PATH.  A failed import
leaves no layer and no manifest.

``export_image`` (images.ociexport, re-exported here) writes an image as an
OCI layout (``oci``), an OCI archive (``oci-archive``) or a legacy
``docker-archive``: the store's canonical layer tars are the layers as they
are (uncompressed; their sha256, the layer id, is both digest and diff_id),
with a config that maps the manifest back.  images.ocilayout holds the
formats' vocabulary and the safe readers of layouts and archives.
"""
from __future__ import annotations

import bz2
import calendar
import contextlib
import gzip
import lzma
import os
import re
import signal
import zlib
from typing import Any, Callable, Mapping

from images import appinit
from images.errors import AmbiguousImageRef, ImageNotFound, InvalidImage, StoreError
from images.manifest import DEFAULT_TAG, validate_name, validate_tag
from images.ociexport import export_image, image_config
from images.ocilayout import (EXPORT_FORMATS, FORMATS, MAX_ARCHIVE_BYTES, MAX_JSON_BYTES, MAX_LAYERS,
                              MT_DOCKER_LIST, MT_DOCKER_MANIFEST, MT_OCI_CONFIG, MT_OCI_INDEX,
                              MT_OCI_LAYER, MT_OCI_MANIFEST, DirSource, Source, TarSource, detect_format,
                              host_arch, split_source)
from images.tarsafe import detect_compression

__all__ = ["FORMATS", "EXPORT_FORMATS", "MAX_JSON_BYTES", "detect_format", "import_image", "export_image",
           "image_config", "split_source", "host_arch", "MT_OCI_INDEX", "MT_OCI_MANIFEST", "MT_OCI_CONFIG",
           "MT_OCI_LAYER"]

_CHUNK_BYTES = 1024**2
_DIGEST_RE = re.compile(r"^sha256:([0-9a-f]{64})$")
_INDEX_TYPES = (MT_OCI_INDEX, MT_DOCKER_LIST)
_MANIFEST_TYPES = (MT_OCI_MANIFEST, MT_DOCKER_MANIFEST)
_LAYER_TYPES = {
    MT_OCI_LAYER: "none", MT_OCI_LAYER + "+gzip": "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
}
_REF_ANNOTATION = "org.opencontainers.image.ref.name"
_CONTAINERD_NAME = "io.containerd.image.name"


# ------------------------------------------------------------------ selection

def _digest(value: Any, what: str) -> str:
    m = _DIGEST_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise InvalidImage(f"{what}: digest {value!r} is not sha256:<64 hex> (only sha256 is supported)")
    return m.group(1)


def _descriptor(desc: Any, what: str) -> tuple[str, int, str]:
    if not isinstance(desc, dict):
        raise InvalidImage(f"{what}: not a descriptor object")
    size = desc.get("size")
    if type(size) is not int or size < 0:
        raise InvalidImage(f"{what}: bad size {size!r}")
    return _digest(desc.get("digest"), what), size, str(desc.get("mediaType") or "")


def _desc_tags(desc: dict) -> list[str]:
    ann = desc.get("annotations") or {}
    tags = []
    if isinstance(ann, dict):
        for key in (_REF_ANNOTATION, _CONTAINERD_NAME):
            value = ann.get(key)
            if isinstance(value, str) and value:
                tags.append(value)
    return tags


def _tag_matches(candidate: str, select: str) -> bool:
    """"24.04" matches "24.04", "ubuntu:24.04", "docker.io/library/ubuntu:24.04"."""
    if candidate == select:
        return True
    last = candidate.rsplit("/", 1)[-1]
    return ":" in last and (last == select or last.rsplit(":", 1)[1] == select)


def _short_tag(candidate: str | None) -> str | None:
    if not candidate:
        return None
    last = candidate.rsplit("/", 1)[-1]
    tag = last.rsplit(":", 1)[1] if ":" in last else last
    try:
        return validate_tag(tag)
    except InvalidImage:
        return None


def _choose(entries: list[tuple[str, list[str]]], select: str | None, where: str) -> int:
    """Index of the entry to import: entries are (identity, tags)."""
    if select is not None:
        hits = [i for i, (_ident, tags) in enumerate(entries) if any(_tag_matches(t, select) for t in tags)]
        if not hits:
            known = sorted({t for _i, tags in entries for t in tags})
            raise ImageNotFound(f"{where}: no image tagged {select!r} (it holds: "
                                f"{', '.join(known) or 'untagged images only'})")
    else:
        hits = list(range(len(entries)))
    if len({entries[i][0] for i in hits}) > 1:
        names = sorted({t for i in hits for t in entries[i][1]} or {entries[i][0][:12] for i in hits})
        raise AmbiguousImageRef(f"{where} holds {len({entries[i][0] for i in hits})} images: name one "
                                f"as PATH:TAG ({', '.join(names)})", names)
    if not hits:
        raise ImageNotFound(f"{where}: holds no image")
    return hits[0]


def _blob(digest: str) -> str:
    return f"blobs/sha256/{digest}"


def _oci_pick(src: Source, select: str | None) -> tuple[dict, str | None]:
    """(the chosen OCI image manifest, its tag) from index.json."""
    if src.exists("oci-layout"):
        layout = src.read_json("oci-layout", "oci-layout")
        if not isinstance(layout, dict) or not str(layout.get("imageLayoutVersion", "")).startswith("1."):
            raise InvalidImage(f"{src.path}: oci-layout: unsupported imageLayoutVersion")
    index = src.read_json("index.json", "index")
    descs = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(descs, list) or not descs:
        raise InvalidImage(f"{src.path}: index.json lists no manifests")
    entries = []
    for i, desc in enumerate(descs):
        digest, _size, _mt = _descriptor(desc, f"{src.path}: index.json manifests[{i}]")
        entries.append((digest, _desc_tags(desc)))
    chosen = descs[_choose(entries, select, src.path)]
    tag = next((t for t in (_short_tag(x) for x in _desc_tags(chosen)) if t), None)
    for depth in range(4):
        digest, size, media = _descriptor(chosen, f"{src.path}: manifest descriptor")
        doc = src.read_json(_blob(digest), "manifest", size, digest)
        if not isinstance(doc, dict):
            raise InvalidImage(f"{src.path}: manifest {digest[:12]} is not an object")
        media = media or str(doc.get("mediaType") or "")
        if media in _INDEX_TYPES or (isinstance(doc.get("manifests"), list) and "layers" not in doc):
            chosen = _platform_pick(doc, src.path)
            continue
        if media and media not in _MANIFEST_TYPES:
            raise InvalidImage(f"{src.path}: manifest {digest[:12]}: unsupported media type {media!r}")
        return doc, tag
    raise InvalidImage(f"{src.path}: indexes nested too deep")


def _platform_pick(index: dict, where: str) -> dict:
    descs = [d for d in index.get("manifests") or () if isinstance(d, dict)]
    arch = host_arch()
    fit = [d for d in descs if isinstance(d.get("platform"), dict)
           and d["platform"].get("os", "linux") == "linux" and d["platform"].get("architecture") == arch]
    if not fit and len(descs) == 1:
        fit = descs
    if not fit:
        raise ImageNotFound(f"{where}: no manifest for linux/{arch} in the image index")
    return fit[0]


# ------------------------------------------------------------------ config mapping

def _env_dict(env: Any, where: str) -> dict:
    out: dict[str, str] = {}
    for item in env or ():
        if not isinstance(item, str) or "=" not in item:
            raise InvalidImage(f"{where}: config Env item {item!r} is not KEY=VALUE")
        key, _sep, value = item.partition("=")
        out[key] = value
    return out


def _ports(exposed: Any, where: str) -> list[dict]:
    out = []
    if not exposed:
        return out
    if not isinstance(exposed, dict):
        raise InvalidImage(f"{where}: config ExposedPorts is not an object")
    for key in exposed:
        port, _sep, proto = str(key).partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp") or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise InvalidImage(f"{where}: exposed port {key!r} is not PORT/tcp or PORT/udp")
        out.append({"proto": proto, "port": int(port)})
    return sorted(out, key=lambda p: (p["proto"], p["port"]))


def _signal_name(value: Any, where: str) -> str:
    if not value:
        return "SIGTERM"
    text = str(value)
    if text.isdigit():
        try:
            return signal.Signals(int(text)).name
        except ValueError:
            raise InvalidImage(f"{where}: StopSignal {value!r} is not a signal") from None
    text = text.upper()
    return text if text.startswith("SIG") else "SIG" + text


def _created(value: Any) -> float:
    if not isinstance(value, str):
        return 0.0
    m = re.match(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not m:
        return 0.0
    secs = calendar.timegm(tuple(int(g) for g in m.groups()[:6]) + (0, 0, 0))
    if m.group(8) != "Z":
        sign = 1 if m.group(8)[0] == "+" else -1
        hh, mm = m.group(8)[1:].split(":")
        secs -= sign * (int(hh) * 3600 + int(mm) * 60)
    frac = float(m.group(7)) if m.group(7) else 0.0
    return max(0.0, round(secs + frac, 6))


def _list(value: Any, where: str, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidImage(f"{where}: config {key} is not a list of strings")
    return value


def _map_config(cfg: Any, where: str) -> dict:
    if not isinstance(cfg, dict):
        raise InvalidImage(f"{where}: the image config is not an object")
    c = cfg.get("config") or {}
    if not isinstance(c, dict):
        raise InvalidImage(f"{where}: config.config is not an object")
    entrypoint = _list(c.get("Entrypoint"), where, "Entrypoint")
    cmd = _list(c.get("Cmd"), where, "Cmd")
    volumes = c.get("Volumes") or {}
    labels = c.get("Labels") or {}
    if not isinstance(volumes, dict) or not isinstance(labels, dict):
        raise InvalidImage(f"{where}: config Volumes or Labels is not an object")
    return {
        "command": entrypoint + cmd,
        "env": _env_dict(c.get("Env"), where),
        "exposed_ports": _ports(c.get("ExposedPorts"), where),
        "stop_signal": _signal_name(c.get("StopSignal"), where),
        "created": _created(cfg.get("created")),
        "config": {"entrypoint": entrypoint, "cmd": cmd,
                   "working_dir": str(c.get("WorkingDir") or ""), "user": str(c.get("User") or ""),
                   "volumes": sorted(str(v) for v in volumes), "labels": {str(k): str(v) for k, v in labels.items()}},
    }


def _diff_ids(cfg: dict, where: str) -> list[str]:
    rootfs = cfg.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or not isinstance(rootfs.get("diff_ids"), list):
        raise InvalidImage(f"{where}: the image config has no rootfs.diff_ids")
    return [_digest(d, f"{where}: rootfs.diff_ids") for d in rootfs["diff_ids"]]


# ------------------------------------------------------------------ import

def _plan(src: Source, fmt: str, select: str | None) -> tuple[dict, list[tuple[str, str, int | None, str]], str | None]:
    """(image config, layers [(rel path, compression, declared size or None,
    digest or None)], tag from the archive)."""
    if fmt in ("oci", "oci-archive"):
        doc, tag = _oci_pick(src, select)
        if doc.get("schemaVersion") != 2:
            raise InvalidImage(f"{src.path}: manifest schemaVersion is not 2")
        cdigest, csize, _mt = _descriptor(doc.get("config"), f"{src.path}: manifest config")
        cfg = src.read_json(_blob(cdigest), "config", csize, cdigest)
        layers = []
        descs = doc.get("layers")
        if not isinstance(descs, list):
            raise InvalidImage(f"{src.path}: manifest has no layer list")
        for i, desc in enumerate(descs):
            digest, size, media = _descriptor(desc, f"{src.path}: layers[{i}]")
            if media not in _LAYER_TYPES:
                raise InvalidImage(f"{src.path}: layers[{i}]: unsupported media type {media!r} "
                                   "(plain or gzip tar layers only)")
            layers.append((_blob(digest), _LAYER_TYPES[media], size, digest))
        return cfg, layers, tag
    doc = src.read_json("manifest.json", "manifest.json")
    if not isinstance(doc, list) or not doc:
        raise InvalidImage(f"{src.path}: manifest.json is not a non-empty list")
    entries = []
    for i, item in enumerate(doc):
        if not isinstance(item, dict) or not isinstance(item.get("Config"), str) \
                or not isinstance(item.get("Layers"), list):
            raise InvalidImage(f"{src.path}: manifest.json[{i}] lacks Config or Layers")
        tags = item.get("RepoTags") or []
        entries.append((item["Config"], [t for t in tags if isinstance(t, str)]))
    item = doc[_choose(entries, select, src.path)]
    config_rel = item["Config"]
    base = config_rel.rsplit("/", 1)[-1]
    hexid = base[:-5] if base.endswith(".json") else base
    cfg = src.read_json(config_rel, "config", None,
                        hexid if re.match(r"^[0-9a-f]{64}$", hexid) else None)
    if not re.match(r"^[0-9a-f]{64}$", hexid):
        raise InvalidImage(f"{src.path}: config {config_rel!r} is not named by its sha256")
    layers = []
    for rel in item["Layers"]:
        if not isinstance(rel, str):
            raise InvalidImage(f"{src.path}: manifest.json Layers holds {rel!r}")
        m = re.match(r"^blobs/sha256/([0-9a-f]{64})$", rel)
        layers.append((rel, "detect", None, m.group(1) if m else None))
    tags = [t for t in item.get("RepoTags") or [] if isinstance(t, str)]
    tag = select or next((t for t in (_short_tag(x) for x in tags) if t), None)
    return cfg, layers, tag


def import_image(store, path: str, name: str, tag: str | None = None, *, select: str | None = None,
                 fmt: str | None = None, rootfs_options: Mapping[str, Any] | None = None,
                 progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Import an OCI layout, OCI archive or docker-save archive (or, as
    before, a rootfs tarball) into the store.

    Args:
        store: the ImageStore.
        path: the layout directory or archive file.
        name: image name.
        tag: image tag; default: ``select``, else the archive's own tag for
            the image, else "latest" (a rootfs tarball keeps no tag).
        select: which image of a layout holding several (its tag, as in
            ``PATH:TAG``).
        fmt: one of FORMATS; default: detect_format(path).
        rootfs_options: manifest fields for a rootfs tarball (exposed_ports,
            env, command, templates, stop_signal, init: ImageStore.import_tar);
            refused for the other formats, whose config says them.
        progress: called as ``progress(step, done_bytes, total_bytes)`` as
            the work goes: "unpack" after each member of each layer (bytes
            of the layer blobs as stored read so far, of their sum; for a
            rootfs tarball, of the tarball: ImageStore.import_tar), "pack"
            for a rootfs tarball's layer being written.

    Returns:
        the new manifest dict (with tag and config; init
        images.appinit.INIT_PATH).

    Raises:
        InvalidImage: hostile, corrupt or inconsistent input (a digest,
            size or diff_id that does not match, a missing blob, a JSON file
            over MAX_JSON_BYTES, a bad whiteout, a duplicate path...).
        AmbiguousImageRef: several images and no select.
        ImageNotFound: select names no image in it.
        StoreError: I/O failure.  In every error case no layer and no
            manifest of this import is left.
    """
    validate_name(name)
    if tag is not None:
        validate_tag(tag)
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InvalidImage(f"unknown image format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "rootfs":
        if select is not None:
            raise InvalidImage(f"{path}: a rootfs tarball holds one image; PATH:TAG is for layouts")
        return store.import_tar(path, name, tag=tag, progress=progress, **dict(rootfs_options or {}))
    if rootfs_options:
        raise InvalidImage(f"{path}: a {fmt} image brings its own config; options "
                           f"{', '.join(sorted(rootfs_options))} are for rootfs tarballs")
    if fmt == "oci":
        return _import_from(store, DirSource(path), fmt, name, tag, select, progress)
    kind = detect_compression(path)
    if kind == "none":
        return _import_from(store, TarSource(path), fmt, name, tag, select, progress)
    with store.staging("archive") as stage:  # docker save | gzip: read it from a plain copy
        plain = _decompress(path, kind, os.path.join(stage, "archive.tar"))
        src = TarSource(plain)
        src.path = path
        return _import_from(store, src, fmt, name, tag, select, progress)


def _decompress(path: str, kind: str, out: str) -> str:
    opener = {"gzip": gzip.open, "xz": lzma.open, "bzip2": bz2.open}[kind]
    total = 0
    try:
        with opener(path, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(_CHUNK_BYTES):
                total += len(chunk)
                if total > MAX_ARCHIVE_BYTES:
                    raise InvalidImage(f"archive {path}: decompresses to more than {MAX_ARCHIVE_BYTES} bytes")
                dst.write(chunk)
    except (EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise InvalidImage(f"archive {path}: corrupt {kind} ({exc})") from exc
    except OSError as exc:
        if exc.errno is None:
            raise InvalidImage(f"archive {path}: corrupt {kind} ({exc})") from exc
        raise StoreError(f"decompressing {path}: {exc.strerror or exc}") from exc
    return out


def _import_from(store, src: Source, fmt: str, name: str, tag: str | None, select: str | None,
                 progress: Callable[[str, int, int], None] | None) -> dict:
    """import_image's work once the source is open (see there)."""
    cfg, layers, archive_tag = _plan(src, fmt, select)
    fields = _map_config(cfg, src.path)
    diff_ids = _diff_ids(cfg, src.path)
    if len(diff_ids) != len(layers):
        raise InvalidImage(f"{src.path}: the manifest lists {len(layers)} layers, the config "
                           f"{len(diff_ids)} diff_ids")
    if len(layers) > MAX_LAYERS:
        raise InvalidImage(f"{src.path}: more than {MAX_LAYERS} layers")
    for rel, _comp, size, digest in layers:  # everything named is there before any work
        if not src.exists(rel):
            raise InvalidImage(f"{src.path}: layer {rel!r} is missing (named by the manifest)")
        if size is not None and src.size(rel) != size:
            raise InvalidImage(f"{src.path}: layer {rel!r} is {src.size(rel)} bytes; its descriptor "
                               f"says {size}")
    made: list[str] = []
    sizes = [src.size(rel) for rel, _c, _s, _d in layers]
    total, base = sum(sizes), 0
    try:
        for i, (rel, _comp, size, digest) in enumerate(layers):
            unpacked = None
            if progress:
                unpacked = lambda _members, done, base=base: progress("unpack", base + done, total)  # noqa: E731
            if digest is not None and not (digest == diff_ids[i] and
                                           detect_compression(rel, lambda rel=rel: src.open(rel)) == "none"):
                # (an uncompressed blob's digest is its diff_id: the unpack
                # below hashes it, one pass instead of two)
                src.verify_blob(rel, digest, size, "layer")
            layer_id = store.add_layer_from_tar(f"{src.path}:{rel}", diff_id=diff_ids[i],
                                                opener=lambda rel=rel: src.open(rel), progress=unpacked)
            made.append(layer_id)
            base += sizes[i]
            if progress:
                progress("unpack", base, total)
        lower = {"layers": list(made)}
        user = fields["config"]["user"]
        user_ids = ""
        if user:
            user_ids = appinit.resolve_user(
                user, appinit.read_image_file(store, lower, "/etc/passwd") if made else None,
                appinit.read_image_file(store, lower, "/etc/group") if made else None)
        app_layer = appinit.build_app_layer(store, lower, command=fields["command"], env=fields["env"],
                                            working_dir=fields["config"]["working_dir"], user_ids=user_ids)
        if not made or made[-1] != app_layer:  # a re-import of an export has it already
            made.append(app_layer)
        return store.commit(name, made, exposed_ports=fields["exposed_ports"], env=fields["env"],
                            command=fields["command"], stop_signal=fields["stop_signal"],
                            init=appinit.INIT_PATH, templates=sorted(appinit.APP_TEMPLATES),
                            created=fields["created"], tag=tag or select or archive_tag or DEFAULT_TAG,
                            config=fields["config"])
    except BaseException:
        referenced = {layer for m in store.ls() for layer in m["layers"]}
        for layer_id in dict.fromkeys(made):
            with contextlib.suppress(StoreError):
                store.drop_layer_if_unused(layer_id, referenced)
        raise
    finally:
        for layer_id in made:
            store.unpin(layer_id)
