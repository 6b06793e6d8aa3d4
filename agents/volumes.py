"""Named volumes on one host: directories that outlive containers.

A volume is ``STATE_DIR/volumes/NAME/`` holding ``volume.json`` ({name,
created}) and ``_data/``, the directory a container bind-mounts
(``lxc.mount.entry``, written by lxcwrap from the container's record).  A
volume is kept across container destroys and agent restarts; only
``volume_rm`` removes it, and only when no container on the host is
configured with it (running or not: a stopped one mounts it again when it
starts).

Creates and removals are atomic on disk: a volume is made in a hidden
``.new-*`` directory and renamed into place, and removed by a rename to
``.old-*`` first, so a crash leaves either the whole volume or none; the
leftovers are cleaned when the agent starts.

``VolumeMethods`` is the agent's RPC surface for them (a mixin of
agents.service.AgentService, which has ``self.m``, the ContainerManager).
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import time

import gevent

from dcctl import errors, files, validate
from dcctl.wire import expose

log = logging.getLogger(__name__)

DATA_DIR = "_data"
META_FILE = "volume.json"


def _blocking(fn, *args):
    return gevent.get_hub().threadpool.apply(fn, args)


def _tree_bytes(path: str) -> int:
    """Bytes of the regular files under ``path`` (links not followed)."""
    total = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                st = os.lstat(os.path.join(root, n))
            except OSError:
                continue
            total += st.st_size
    return total


class Volumes:
    """The volumes under ``root`` (blocking file work: call from the thread
    pool, or through the manager's methods that do).

    Args: root: the volumes directory (made if missing)."""

    def __init__(self, root: str):
        self.root = root
        os.makedirs(root, mode=0o700, exist_ok=True)
        for entry in os.listdir(root):  # a create or a remove a crash cut short
            if entry.startswith((".new-", ".old-")):
                shutil.rmtree(os.path.join(root, entry), ignore_errors=True)

    def path(self, name: str) -> str:
        return os.path.join(self.root, validate.volume_name(name))

    def data_dir(self, name: str) -> str:
        """The host directory a container mounts for volume ``name``."""
        return os.path.join(self.path(name), DATA_DIR)

    def exists(self, name: str) -> bool:
        return os.path.isfile(os.path.join(self.path(name), META_FILE))

    def get(self, name: str) -> dict:
        """{name, created (Unix s)}.  Raises: NoSuchVolume."""
        try:
            with open(os.path.join(self.path(name), META_FILE)) as f:
                meta = json.load(f)
        except (OSError, ValueError) as exc:
            raise errors.NoSuchVolume(f"no volume {name!r} on this host") from exc
        return {"name": name, "created": meta.get("created")}

    def names(self) -> list[str]:
        return sorted(e for e in os.listdir(self.root) if not e.startswith(".") and self.exists(e))

    def create(self, name: str) -> dict:
        """Make volume ``name`` (mode 0755 data dir owned by root).

        Returns: {name, created, created_now (False when it existed)}.
        Raises: InvalidArgument (bad name), StoreError (I/O, disk full:
        nothing is left)."""
        validate.volume_name(name)
        if self.exists(name):
            return {**self.get(name), "created_now": False}
        tmp = os.path.join(self.root, f".new-{secrets.token_hex(6)}")
        meta = {"name": name, "created": time.time()}
        try:
            os.makedirs(os.path.join(tmp, DATA_DIR), mode=0o755)
            os.chmod(os.path.join(tmp, DATA_DIR), 0o755)
            files.atomic_write(os.path.join(tmp, META_FILE), json.dumps(meta).encode(), mode=0o600)
            os.rename(tmp, self.path(name))
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise errors.StoreError(f"cannot create volume {name!r}: {exc.strerror or exc}") from exc
        return {**meta, "created_now": True}

    def remove(self, name: str) -> dict:
        """Remove volume ``name`` and its data (the caller checked it is
        not in use).  Returns: {name, removed: True, freed_bytes}.
        Raises: NoSuchVolume, StoreError (I/O)."""
        self.get(name)
        old = os.path.join(self.root, f".old-{secrets.token_hex(6)}")
        freed = _tree_bytes(self.path(name))
        try:
            os.rename(self.path(name), old)
        except OSError as exc:
            raise errors.StoreError(f"cannot remove volume {name!r}: {exc.strerror or exc}") from exc
        shutil.rmtree(old, ignore_errors=True)
        return {"name": name, "removed": True, "freed_bytes": freed}

    def describe(self, name: str, used_by: list[str]) -> dict:
        return {**self.get(name), "path": self.data_dir(name), "size_bytes": _tree_bytes(self.data_dir(name)),
                "used_by": used_by}


def users(records: dict, name: str) -> list[str]:
    """Names of the containers (records) configured with volume ``name``."""
    return sorted(r["name"] for r in records.values()
                  if any(v.get("name") == name for v in r.get("volumes") or []))


class VolumeMethods:
    """volume_create, volume_ls and volume_rm (a mixin of AgentService)."""

    @expose(shielded=True)
    def volume_create(self, name: str) -> dict:
        """Create a named volume on this host (a directory that outlives
        containers; ``container_create`` option ``volumes: ["NAME:/path"]``
        bind-mounts it).  Creating one that exists is not an error.

        Args: name: 1-64 chars of [A-Za-z0-9_.-], starting with a letter or
        digit, no "..".
        Returns: {name, created (Unix s), created_now (False: it existed)}.
        Raises: InvalidArgument (bad name), StoreError (I/O, disk full;
        nothing is left).
        """
        return self.m.create_volume(name)

    @expose(access="read")
    def volume_ls(self) -> list:
        """This host's volumes.

        Returns: [{name, created (Unix s), path (its directory on the
        host), size_bytes (of its files), used_by [container names]}], by
        name.
        """
        records = dict(self.m.records)

        def listing():
            return [self.m.volumes.describe(n, users(records, n)) for n in self.m.volumes.names()]
        return _blocking(listing)

    @expose(shielded=True)
    def volume_rm(self, name: str) -> dict:
        """Remove a volume and its data.

        Returns: {name, removed: True, freed_bytes}.
        Raises: InvalidArgument (bad name), NoSuchVolume, VolumeInUse (a
        container on this host is configured with it, running or not:
        destroy it first; the error names them), StoreError (I/O).
        """
        return self.m.remove_volume(name)
