"""A container's overlay upper dir turned into one layer of the store.

The upper dir of an overlay mounted over an image's layers *is* the diff of
the container against its image, in overlayfs's own notation: a deleted path
is a 0/0 character device (a whiteout), a directory that replaced the lower
one carries the xattr ``trusted.overlay.opaque=y``.  The store's canonical
layer tar (images.packing) writes exactly those as OCI whiteouts
(``.wh.NAME``, ``.wh..wh..opq``) and its unpacked form turns them back into
overlayfs's, so the upper dir is packed as it is: modes, owners, symlinks
and hard links kept, the digest the store's own.

The upper dir alone is the diff only when the overlay was mounted with
``redirect_dir`` and ``metacopy`` off (PITFALLS.md): a renamed directory
would be a redirect xattr, a chmod'ed file a data-less metacopy.  Both are
refused here (``InvalidImage`` names the path) rather than packed wrong;
``overlay_features_off()`` tells a builder whether the kernel's defaults
are safe.
"""
from __future__ import annotations

import os
import stat

from images.errors import InvalidImage
from images.layers import LayerStore

__all__ = ["REFUSED_XATTRS", "diff_layer", "overlay_features_off", "check_upper"]

#: overlayfs xattrs that mean the upper dir is not the whole diff.
REFUSED_XATTRS = ("trusted.overlay.redirect", "trusted.overlay.metacopy")
_PARAMS = "/sys/module/overlay/parameters"


def overlay_features_off(params_dir: str = _PARAMS) -> bool:
    """True if the overlay module's defaults have redirect_dir and metacopy
    off (so an overlay mounted without options gives a plain upper dir)."""
    for param in ("redirect_dir", "metacopy"):
        try:
            with open(os.path.join(params_dir, param)) as f:
                if f.read().strip() not in ("N", "off", "0"):
                    return False
        except FileNotFoundError:
            continue  # a kernel without the feature
    return True


def _xattrs(path: str) -> list[str]:
    try:
        return os.listxattr(path, follow_symlinks=False)
    except OSError:
        return []


def check_upper(upper_dir: str) -> None:
    """Refuse an upper dir that holds a redirect or metacopy xattr.

    Raises: InvalidImage (names the path and the xattr)."""
    for top, dirs, files in os.walk(upper_dir):
        for name in dirs + files:
            path = os.path.join(top, name)
            for attr in _xattrs(path):
                if attr in REFUSED_XATTRS:
                    rel = os.path.relpath(path, upper_dir)
                    raise InvalidImage(f"upper dir {upper_dir}: /{rel} has {attr} (the overlay was "
                                       "mounted with redirect_dir or metacopy on: not a plain diff)")


def diff_layer(store: LayerStore, upper_dir: str) -> tuple[str, int]:
    """Pack a (stopped, unmounted) container's upper dir into a layer.

    Args:
        store: the image store the layer goes into.
        upper_dir: the overlay's upper dir.

    Returns:
        (layer id, size in bytes of its canonical tar).  The layer is pinned
        (gc and remove keep it) until the caller commits an image with it
        and calls ``store.unpin(layer_id)``, or drops it with
        ``store.drop_layer_if_unused``.

    Raises:
        InvalidImage: a redirect/metacopy xattr, a device node, fifo or
            socket in the tree, a file named ``.wh.*``, a symlink climbing
            out of the root.
        StoreError: I/O failure (disk full); nothing is left in the store.
    """
    st = os.lstat(upper_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidImage(f"upper dir {upper_dir} is not a directory")
    check_upper(upper_dir)
    layer_id = store.add_layer_from_dir(upper_dir, pin=True)
    return layer_id, os.path.getsize(store.export_layer(layer_id))
