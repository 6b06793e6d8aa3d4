"""The agent's one table from library errors to wire errors.

The libraries under the agent keep their own error trees (``images.errors``,
``lxcwrap.errors``, ``lxcwrap.run``'s ToolError, ``agents.network``); none of
their classes is a wire error.  At the agent's service boundary (the wire
server's ``translate`` hook, ``dc-agent``'s start and ``dc-agent
decommission``) an escaping library error becomes the wire error (a
``dcctl.errors`` class) that ``TABLE`` names for its class, with the same
message and hint (``.hint`` if it has one), chained with ``from``.  Classes
are matched by identity, walking the error's MRO from its own class up, so
a rename changes nothing on the wire and a new subclass without its own
entry maps like its parent (``tests/unit/test_errmap.py`` insists that each
has its own).  The lookup never matches class names.

Besides the table, an OSError with ENOSPC or EDQUOT (a full disk, from any
library) becomes StoreError.  Anything else is a bug: ``translate`` returns
None and the wire layer sends InternalError (the traceback stays in the log).
"""
from __future__ import annotations

import errno

from agents import network
from dcctl import errors
from images import errors as imgerr
from lxcwrap import errors as lxcerr
from lxcwrap import run as lxcrun

__all__ = ["ROOTS", "TABLE", "translate"]

#: The root of each library error tree the agent maps.
ROOTS: tuple[type[Exception], ...] = (imgerr.ImageError, lxcerr.LxcError, lxcrun.ToolError, network.NetworkError)

#: Library error class -> wire error class (every class of every root has its own entry).
TABLE: dict[type[Exception], type[errors.DcError]] = {
    # images/: the store's own tree
    imgerr.ImageError: errors.StoreError,
    imgerr.ImageNotFound: errors.ImageNotFound,
    imgerr.AmbiguousImageRef: errors.AmbiguousImageRef,
    imgerr.InvalidImage: errors.InvalidImage,
    imgerr.ImageInUse: errors.ImageInUse,
    imgerr.ImageExists: errors.ImageExists,
    imgerr.StoreError: errors.StoreError,
    # lxcwrap/: LXC tools (the messages name the container)
    lxcerr.LxcError: errors.LxcFailure,
    lxcerr.LxcNotFound: errors.LxcFailure,  # a record without its LXC definition (ops_cleanup drops it)
    lxcerr.LxcAlreadyRunning: errors.ContainerRunning,
    lxcerr.LxcNotRunning: errors.ContainerNotRunning,
    lxcerr.LxcStartFailed: errors.LxcFailure,
    lxcerr.LxcExecNotFound: errors.CommandNotFound,
    lxcerr.LxcTimeout: errors.LxcFailure,
    lxcerr.LxcToolMissing: errors.LxcFailure,
    # lxcwrap.run: host tools outside LXC (ip, iptables, sysctl, ss), when
    # one escapes unwrapped
    lxcrun.ToolError: errors.NetworkError,
    lxcrun.ToolTimeout: errors.NetworkError,
    lxcrun.ToolNotFound: errors.NetworkError,
    lxcrun.ToolFailed: errors.NetworkError,
    # agents/network.py: bridge, addresses, port mappings
    network.NetworkError: errors.NetworkError,
    network.PortInUse: errors.PortInUse,
    network.PortRangeExhausted: errors.PortRangeExhausted,
    network.AddressPoolExhausted: errors.AddressPoolExhausted,
    network.InvalidNetworkArgument: errors.InvalidArgument,
    network.NoSuchPortMapping: errors.NoSuchPortMapping,
}

_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def translate(exc: BaseException) -> errors.DcError | None:
    """The wire error for a library error.

    Args:
        exc: any exception that reached the service boundary.

    Returns: a new ``dcctl.errors`` instance with exc's message and hint
    (the caller raises it ``from exc``): the class ``TABLE`` names for the
    nearest class in exc's MRO; StoreError for a full disk (OSError ENOSPC,
    EDQUOT); None for anything else (a bug; wire errors themselves are not
    passed here).
    """
    hint = getattr(exc, "hint", None)
    for cls in type(exc).__mro__:
        wire = TABLE.get(cls)
        if wire is not None:
            return wire(str(exc), hint=hint)
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return errors.StoreError(f"disk full: {exc}", hint=hint or "free space in the agent's state dir")
    return None
