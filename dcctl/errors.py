"""Wire error types, defined once for dcctl, the hub and the agents.

A server raises one of these; the wire layer sends its class name and message
(never a traceback); the client turns the name back into the same class.

    DcError                               root; .hint is an optional operator hint
     +-- InvalidArgument (ValueError)     bad name, ref, port, type or arity
     |    +-- AmbiguousImageRef           an image id prefix matches several images
     |    +-- InvalidImage                a bad manifest, template or archive member
     |    +-- EventsExpired               events after that index or time are gone (retention)
     +-- NotFound (LookupError)
     |    +-- NoSuchContainer
     |    +-- ImageNotFound
     |    +-- NoSuchPortMapping
     |    +-- NoSuchMethod                not in the served method table
     |    +-- NoSuchHost
     |    +-- NoSuchRoute                 no such (route name, backend)
     |    +-- NoSuchUpload                no (complete) image upload with that id on the hub
     |    +-- NoSuchVolume                no volume of that name on the host
     |    +-- NoSuchApp                   no app of that name in the fleet
     |    +-- NoSuchRelease               the app has no such release
     +-- Conflict
     |    +-- ContainerExists
     |    +-- ImageExists
     |    +-- ImageInUse
     |    +-- PortInUse
 |    +-- RouteExists                 the route has that backend already
     |    +-- VolumeInUse                 a container on the host mounts the volume
     |    +-- DeployInProgress            the app has a deploy under way already
     +-- InvalidState                     the container is not in a state for this
     |    +-- ContainerRunning
     |    +-- ContainerNotRunning
     +-- NoCapacity                       no host / address / port left
     |    +-- AddressPoolExhausted
     |    +-- PortRangeExhausted
     +-- Busy                             another call holds what this one needs
     +-- CommandNotFound                  exec of a missing binary in a container
     +-- ResultTooLarge                   a result or argument over the size cap
     +-- CallTimeout                      the client gave up waiting (client side)
     +-- SlowConsumer                     a stream's reader stopped taking items; the server dropped it
     +-- Unreachable                      cannot reach the server at that endpoint
     |    +-- HostLost                     a host died while running a call
     +-- HubBusy                          another hub holds the same store
     +-- Unauthorized                     the caller's key is not (or no longer) allowed
     +-- PermissionDenied                 the caller's role may not call this method
     +-- LxcFailure                       an LXC tool failed in a way not covered above
     +-- StoreError                       the image store failed (I/O, digest, disk full)
     |    +-- StoreUnavailable            the hub's shared fleet store (etcd) cannot be reached
     +-- NetworkError                     bridge / netfilter setup failed
     +-- BuildFailed                      a build step (RUN, COPY) failed or ran past the build timeout
     +-- DeployFailed                     a deploy's new container failed its check (the old release serves)
     +-- InternalError                    a bug: details are in the server's log
"""
from __future__ import annotations


class DcError(Exception):
    """Root of every dcfleet error that crosses the wire."""

    hint: str | None = None

    def __init__(self, message: str = "", *, hint: str | None = None):
        super().__init__(message)
        if hint is not None:
            self.hint = hint

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class InvalidArgument(DcError, ValueError):
    """An argument failed validation at the boundary; nothing was done."""


class AmbiguousImageRef(InvalidArgument):
    """An image ref's id prefix matches more than one image."""


class InvalidImage(InvalidArgument):
    """An image, its manifest, template or archive member is unacceptable."""


class EventsExpired(InvalidArgument):
    """Events after the index or time asked for were dropped by retention:
    resuming from there would miss some; the hint names where to resume."""


class NotFound(DcError, LookupError):
    """The named thing does not exist."""


class NoSuchContainer(NotFound):
    pass


class ImageNotFound(NotFound):
    pass


class NoSuchPortMapping(NotFound):
    pass


class NoSuchMethod(NotFound):
    pass


class NoSuchHost(NotFound):
    pass


class NoSuchRoute(NotFound):
    pass


class NoSuchUpload(NotFound):
    """No image upload (dcctl image_push FILE) with that id on the hub."""


class NoSuchVolume(NotFound):
    pass


class NoSuchApp(NotFound):
    pass


class NoSuchRelease(NotFound):
    pass


class Conflict(DcError):
    """The thing exists already or is used by something else."""


class ContainerExists(Conflict):
    pass


class ImageExists(Conflict):
    pass


class ImageInUse(Conflict):
    pass


class PortInUse(Conflict):
    pass


class RouteExists(Conflict):
    pass


class VolumeInUse(Conflict):
    """A volume is mounted by (configured into) a container on its host."""


class DeployInProgress(Conflict):
    """Another deploy, rollback or app_rm of the app is under way."""


class InvalidState(DcError):
    """The container is not in a state that allows this call."""


class ContainerRunning(InvalidState):
    pass


class ContainerNotRunning(InvalidState):
    pass


class NoCapacity(DcError):
    """No host, address or port is left to satisfy the request."""


class AddressPoolExhausted(NoCapacity):
    pass


class PortRangeExhausted(NoCapacity):
    pass


class Busy(DcError):
    """Another call holds what this one needs; try again."""


class CommandNotFound(DcError):
    """The command to exec does not exist in the container."""


class ResultTooLarge(DcError):
    """A result or argument is larger than the wire allows."""


class CallTimeout(DcError):
    """The client stopped waiting for the server's answer."""


class SlowConsumer(DcError):
    """A stream's reader kept its window full (took no items) for longer
    than the server's stall limit, so the server ended the stream rather
    than buffer for it; a follower resumes from the last item it saw."""


class Unreachable(DcError):
    """The server at the endpoint cannot be reached."""


class HostLost(Unreachable):
    """The host running a call stopped answering; the call may or may not
    have taken effect there."""


class HubBusy(DcError):
    """Another hub process holds the same state store."""


class Unauthorized(DcError):
    """The server does not accept the caller's key (CURVE handshake refused,
    or the key was removed)."""


class PermissionDenied(DcError):
    """The caller's role (read, agent) may not call this method."""


class LxcFailure(DcError):
    """An LXC tool failed in a way no other error describes."""


class StoreError(DcError):
    """The image store failed: I/O error, digest mismatch, disk full."""


class StoreUnavailable(StoreError):
    """The hub's shared fleet store (etcd) did not answer in time: nothing
    was changed by the call that got it (or, for a write whose answer was
    lost, the store's own record says whether it happened)."""


class NetworkError(DcError):
    """Bridge, address or netfilter setup failed."""


class BuildFailed(DcError):
    """A build step failed (a RUN exited non-zero, a COPY could not be
    written) or the build ran past its timeout; the message ends with the
    tail of the build log.  Nothing of the build is left (no container, no
    layer, no image)."""


class DeployFailed(DcError):
    """A deploy was rolled back: a new container failed (its check, its
    create or start); the previous release keeps serving and the new
    containers are gone.  The message names the container and the check."""


class InternalError(DcError):
    """An unexpected failure on the server; its log has the traceback."""


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


#: Wire name -> class, for the client side.
BY_NAME: dict[str, type[DcError]] = {c.__name__: c for c in [DcError, *_all_subclasses(DcError)]}


def from_wire(name: str, message: str, hint: str | None = None) -> DcError:
    """Rebuild the error a server sent as (name, message[, hint]).

    Unknown names become InternalError with the remote name kept in the text.
    """
    cls = BY_NAME.get(name)
    if cls is None:
        return InternalError(f"{name}: {message}", hint=hint)
    return cls(message, hint=hint)


__all__ = sorted(BY_NAME) + ["from_wire", "BY_NAME"]
