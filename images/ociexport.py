"""Export a store image as an OCI image layout, an OCI archive or a legacy
docker-archive (see images.oci's module doc): the store's canonical layer
tars are the layers as they are (uncompressed; their sha256, the layer id,
is both digest and diff_id), with a config that maps the manifest back."""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import time
from typing import Any, Mapping

from images.errors import InvalidImage, StoreError
from images.manifest import DEFAULT_TAG
from images.ocilayout import (EXPORT_FORMATS, MT_OCI_CONFIG, MT_OCI_INDEX, MT_OCI_LAYER, MT_OCI_MANIFEST,
                              host_arch)

__all__ = ["export_image", "image_config"]

_REF_ANNOTATION = "org.opencontainers.image.ref.name"

def _rfc3339(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts or 0))


def image_config(manifest: Mapping[str, Any]) -> dict:
    """The OCI image config for a store manifest (uncompressed layers: the
    diff_ids are the layer ids)."""
    extra = manifest.get("config") or {}
    conf: dict[str, Any] = {}
    if manifest.get("env"):
        conf["Env"] = [f"{k}={v}" for k, v in sorted(manifest["env"].items())]
    if extra:
        if extra.get("entrypoint"):
            conf["Entrypoint"] = list(extra["entrypoint"])
        if extra.get("cmd"):
            conf["Cmd"] = list(extra["cmd"])
        for key, out in (("working_dir", "WorkingDir"), ("user", "User")):
            if extra.get(key):
                conf[out] = extra[key]
        if extra.get("volumes"):
            conf["Volumes"] = {v: {} for v in extra["volumes"]}
        if extra.get("labels"):
            conf["Labels"] = dict(extra["labels"])
    elif manifest.get("command"):
        conf["Cmd"] = list(manifest["command"])
    if manifest.get("exposed_ports"):
        conf["ExposedPorts"] = {f"{p['port']}/{p['proto']}": {} for p in manifest["exposed_ports"]}
    if manifest.get("stop_signal"):
        conf["StopSignal"] = manifest["stop_signal"]
    created = _rfc3339(manifest.get("created") or 0)
    return {"created": created, "architecture": host_arch(), "os": "linux", "config": conf,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in manifest["layers"]]},
            "history": [{"created": created, "created_by": "dcfleet"} for _ in manifest["layers"]]}


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def _plan_export(store, manifest: Mapping[str, Any], fmt: str) -> list[tuple[str, bytes | str]]:
    """[(path in the output, bytes or a layer file to copy)]."""
    tag = manifest.get("tag") or DEFAULT_TAG
    layers = [(d, store.export_layer(d)) for d in manifest["layers"]]
    config = _json_bytes(image_config(manifest))
    config_digest = hashlib.sha256(config).hexdigest()
    if fmt == "docker-archive":
        out: list[tuple[str, bytes | str]] = [(f"{config_digest}.json", config)]
        for d, path in layers:
            out.append((f"{d}/layer.tar", path))
        doc = [{"Config": f"{config_digest}.json", "RepoTags": [f"{manifest['name']}:{tag}"],
                "Layers": [f"{d}/layer.tar" for d, _p in layers]}]
        out.append(("manifest.json", _json_bytes(doc)))
        out.append(("repositories", _json_bytes({manifest["name"]: {tag: layers[-1][0]}})))
        return out
    oci_manifest = _json_bytes({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": f"sha256:{config_digest}", "size": len(config)},
        "layers": [{"mediaType": MT_OCI_LAYER, "digest": f"sha256:{d}", "size": os.path.getsize(p)}
                   for d, p in layers]})
    mdigest = hashlib.sha256(oci_manifest).hexdigest()
    index = _json_bytes({"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [
        {"mediaType": MT_OCI_MANIFEST, "digest": f"sha256:{mdigest}", "size": len(oci_manifest),
         "annotations": {_REF_ANNOTATION: tag}}]})
    out = [("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"}))]
    out += [(f"blobs/sha256/{d}", p) for d, p in layers]
    out += [(f"blobs/sha256/{config_digest}", config), (f"blobs/sha256/{mdigest}", oci_manifest),
            ("index.json", index)]
    return out


def export_image(store, ref: str, dest: str, fmt: str = "oci") -> dict:
    """Write an image as an OCI layout directory, an OCI archive or a
    docker-archive (module doc).

    Args:
        store: the ImageStore.
        ref: image ref (``name``, ``name:tag``, ``name@idprefix``).
        dest: the path to create (must not exist; its parent must).
        fmt: "oci" (a directory), "oci-archive" or "docker-archive" (tars).

    Returns:
        {"path", "format", "id", "name", "tag", "bytes"} (bytes written).

    Raises:
        InvalidImage: bad format, dest exists or has no parent dir.
        ImageNotFound, AmbiguousImageRef: as resolve().
        StoreError: I/O failure; nothing is left at dest.
    """
    if fmt not in EXPORT_FORMATS:
        raise InvalidImage(f"unknown export format {fmt!r}: one of {', '.join(EXPORT_FORMATS)}")
    manifest = store.resolve(ref)
    dest = os.path.abspath(dest)
    if os.path.lexists(dest):
        raise InvalidImage(f"export target {dest} already exists")
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        raise InvalidImage(f"export target {dest}: no directory {parent}")
    items = _plan_export(store, manifest, fmt)
    tmp = os.path.join(parent, f".{os.path.basename(dest)}.dcfleet-{os.getpid()}")
    written = 0
    try:
        if fmt == "oci":
            os.mkdir(tmp, 0o755)
            os.makedirs(os.path.join(tmp, "blobs", "sha256"), 0o755)
            for rel, content in items:
                target = os.path.join(tmp, rel)
                if isinstance(content, bytes):
                    with open(target, "wb") as f:
                        f.write(content)
                    written += len(content)
                else:
                    shutil.copyfile(content, target)
                    written += os.path.getsize(target)
        else:
            with open(tmp, "wb") as raw, tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                dirs = sorted({os.path.dirname(rel) for rel, _c in items if os.path.dirname(rel)})
                for d in sorted({p for d in dirs for p in _parents(d)}):
                    info = tarfile.TarInfo(d)
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(manifest.get("created") or 0)
                    tar.addfile(info)
                for rel, content in items:
                    info = tarfile.TarInfo(rel)
                    info.mode, info.mtime = 0o644, int(manifest.get("created") or 0)
                    if isinstance(content, bytes):
                        info.size = len(content)
                        tar.addfile(info, io.BytesIO(content))
                    else:
                        info.size = os.path.getsize(content)
                        with open(content, "rb") as f:
                            tar.addfile(info, f)
                    written += info.size
                raw.flush()
        os.rename(tmp, dest)
    except BaseException as exc:
        if os.path.isdir(tmp) and not os.path.islink(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        elif os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise StoreError(f"exporting {ref} to {dest}: {exc.strerror or exc}") from exc
        raise
    return {"path": dest, "format": fmt, "id": manifest["id"], "name": manifest["name"],
            "tag": manifest.get("tag") or DEFAULT_TAG, "bytes": written}


def _parents(d: str) -> list[str]:
    parts = d.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
