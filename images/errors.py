"""Errors raised by the image store.

None of these is a wire error.  The agent maps each class (by class, never
by name) onto a wire error in ``dcctl.errors`` through the table in
``agents.errmap``; a new class here needs its own entry there (a unit test
walks this tree and insists).

Tree::

    ImageError                         root of every error in images/
     +-- ImageNotFound (LookupError)   no image or layer matches the ref/id
     +-- AmbiguousImageRef (ValueError) a name@prefix ref matches several images
     +-- InvalidImage (ValueError)     bad name/ref/manifest field, hostile or
     |                                 corrupt archive member, bad template
     +-- ImageInUse                    remove refused: containers still use it
     +-- ImageExists                   an image with that id is already stored
     +-- StoreError                    I/O failure, digest mismatch, disk full
                                       (the OSError is chained as __cause__)

Every message is one line and names the ref, path or archive member at fault.
"""
from __future__ import annotations

__all__ = [
    "ImageError",
    "ImageNotFound",
    "AmbiguousImageRef",
    "InvalidImage",
    "ImageInUse",
    "ImageExists",
    "StoreError",
]


class ImageError(Exception):
    """Root of the errors raised by ``images``."""


class ImageNotFound(ImageError, LookupError):
    """No image (or layer) matches the given ref or id."""


class AmbiguousImageRef(ImageError, ValueError):
    """A ``name@idprefix`` ref matches more than one image.

    Attributes:
        candidates: the matching refs, each ``name@<12 hex>``.
    """

    def __init__(self, message: str, candidates: list[str] | tuple[str, ...] = ()):
        super().__init__(message)
        self.candidates = list(candidates)


class InvalidImage(ImageError, ValueError):
    """A name, ref, manifest field, archive member or template is refused."""


class ImageInUse(ImageError):
    """The image cannot be removed: containers still use it.

    Attributes:
        containers: names of the containers using the image.
    """

    def __init__(self, message: str, containers: list[str] | tuple[str, ...] = ()):
        super().__init__(message)
        self.containers = list(containers)


class ImageExists(ImageError):
    """An image with that id is already in the store."""


class StoreError(ImageError):
    """The store could not read or write its files (I/O error, disk full,
    digest mismatch); the underlying OSError, if any, is ``__cause__``."""
