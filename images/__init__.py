"""dcfleet's image store: content-addressed layers and manifests on disk.

Public API (everything else in the package is internal)::

    ImageStore(root)                 images.store: ls, resolve, get, layer_dirs,
                                     find_file, import_tar, add_layer_from_dir,
                                     commit, commit_dir, import_manifest,
                                     export_layer, import_layer, remove, gc,
                                     staging
    ensure_busybox(store)            the offline busybox base image
    build_debian(store, ...)         a debootstrap-built Debian image
    render_templates(store, manifest, dest_root, context)
    safe_extract(archive, dest_dir)  hostile-archive-proof unpacking (layer=True:
                                     whiteouts, no duplicate paths)
    images.oci: import_image, export_image, detect_format
                                     OCI layouts/archives and docker-save archives
    images.appinit                   the init and dcfleet layer of application images
    command_file_text / env_file_text   the /etc/dcfleet/{command,env} format

Errors: see images.errors (root: ImageError).

This package is plain blocking code (no gevent, no locks): the agent runs it
in a thread pool and serializes mutations.  It imports only the stdlib and
jinja2; the few tools it starts (debootstrap) go through images.proc's
thread-safe blocking_run, or through a ``run`` seam the caller passes.
"""
from images.busybox import ensure_busybox
from images.debootstrap import build_debian, default_mirror
from images.errors import (AmbiguousImageRef, ImageError, ImageExists, ImageInUse, ImageNotFound,
                           InvalidImage, StoreError)
from images.rootfs import COMMAND_PATH, ENV_PATH, RUN_PATH, command_file_text, env_file_text
from images.store import ImageStore
from images.tarsafe import safe_extract
from images.templates import render_templates

__all__ = [
    "ImageStore",
    "ensure_busybox",
    "build_debian",
    "default_mirror",
    "render_templates",
    "safe_extract",
    "command_file_text",
    "env_file_text",
    "COMMAND_PATH",
    "ENV_PATH",
    "RUN_PATH",
    "ImageError",
    "ImageNotFound",
    "AmbiguousImageRef",
    "InvalidImage",
    "ImageInUse",
    "ImageExists",
    "StoreError",
]
