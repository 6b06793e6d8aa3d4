"""The agent's one error table (agents.errmap): every library error class maps,
by class, onto a declared wire class, keeping message and hint; and the table
is what a caller on a real socket gets."""
from __future__ import annotations

import errno

import pytest

from agents import errmap, network
from dcctl import errors, wire
from images import errors as imgerr
from lxcwrap import errors as lxcerr
from lxcwrap import run as lxcrun


def _tree(root: type) -> list[type]:
    out = [root]
    for sub in root.__subclasses__():
        out.extend(_tree(sub))
    return out


LIBRARY_CLASSES = sorted({cls for root in errmap.ROOTS for cls in _tree(root)},
                         key=lambda c: f"{c.__module__}.{c.__qualname__}")


def _instance(cls: type, message: str, hint: str) -> BaseException:
    exc = cls(message)
    exc.hint = hint
    return exc


def test_roots_are_every_library_tree():
    assert set(errmap.ROOTS) == {imgerr.ImageError, lxcerr.LxcError, lxcrun.ToolError, network.NetworkError}


@pytest.mark.parametrize("cls", LIBRARY_CLASSES, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_library_class_has_its_own_entry_and_maps_to_a_declared_wire_class(cls):
    assert cls in errmap.TABLE, f"{cls.__module__}.{cls.__name__} has no entry in agents.errmap.TABLE"
    wire_cls = errmap.TABLE[cls]
    assert errors.BY_NAME.get(wire_cls.__name__) is wire_cls  # a wire class the client knows
    assert not issubclass(cls, errors.DcError)  # no library class is (or poses as) a wire error
    mapped = errmap.translate(_instance(cls, f"the {cls.__name__} message", "the hint"))
    assert type(mapped) is wire_cls
    assert mapped.message == f"the {cls.__name__} message" and mapped.hint == "the hint"


def test_the_mapping_is_by_class_not_by_name():
    class ImageNotFound(Exception):  # a stranger with a wire name is not mapped
        pass

    assert errmap.translate(ImageNotFound("x")) is None

    class Renamed(imgerr.ImageNotFound):  # a subclass, whatever its name, maps like its parent
        pass

    assert type(errmap.translate(Renamed("gone"))) is errors.ImageNotFound


@pytest.mark.parametrize("exc, wire_cls", [
    (lxcerr.LxcNotRunning("container 'a' is not running"), errors.ContainerNotRunning),
    (lxcerr.LxcAlreadyRunning("container 'a' is already running"), errors.ContainerRunning),
    (lxcerr.LxcExecNotFound("'nope': no such command in container 'a'"), errors.CommandNotFound),
    (lxcerr.LxcStartFailed("container 'a' failed to start", hint="see lxc.log"), errors.LxcFailure),
    (network.InvalidNetworkArgument("bad proto 'sctp'"), errors.InvalidArgument),
    (network.PortInUse("tcp port 80 is already mapped"), errors.PortInUse),
    (imgerr.AmbiguousImageRef("busybox@ab matches 2", ["busybox@ab1", "busybox@ab2"]), errors.AmbiguousImageRef),
    (imgerr.ImageError("odd store failure"), errors.StoreError),
])
def test_known_mappings(exc, wire_cls):
    mapped = errmap.translate(exc)
    assert type(mapped) is wire_cls and mapped.message == str(exc)
    assert mapped.hint == getattr(exc, "hint", None)


def test_full_disk_is_store_error_and_anything_else_is_a_bug():
    full = errmap.translate(OSError(errno.ENOSPC, "No space left on device"))
    assert type(full) is errors.StoreError and "disk full" in full.message and full.hint
    assert errmap.translate(OSError(errno.EACCES, "Permission denied")) is None
    assert errmap.translate(KeyError("x")) is None


class Raiser:
    @wire.expose
    def lxc_not_running(self) -> None:
        raise lxcerr.LxcNotRunning("container 'web' is not running", hint="start it first")

    @wire.expose
    def port_taken(self) -> None:
        raise network.PortInUse("tcp port 20080 is bound on the host")

    @wire.expose
    def bug(self) -> None:
        raise KeyError("secret")


def test_a_caller_gets_the_tables_wire_class_over_a_real_socket(tmp_path):
    svc = wire.Service(Raiser(), "raiser", translate=errmap.translate, heartbeat_s=0.5)
    endpoint = f"ipc://{tmp_path}/r.sock"
    svc.bind(endpoint)
    svc.start()
    client = wire.connect(endpoint, timeout_s=10)
    try:
        with pytest.raises(errors.ContainerNotRunning) as info:
            client.lxc_not_running()
        assert info.value.message == "container 'web' is not running" and info.value.hint == "start it first"
        with pytest.raises(errors.PortInUse, match="20080 is bound"):
            client.port_taken()
        with pytest.raises(errors.InternalError):
            client.bug()
    finally:
        client.close()
        svc.stop()
