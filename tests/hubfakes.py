"""A small in-process stand-in for agents, for the hub's unit tests: each
``FakeAgent`` is served by the project's own ``dcctl.wire.Service`` on a real
ipc socket under a temporary directory, so the hub reaches it over real
ZeroMQ exactly as it reaches a dc-agent.  It keeps its containers in a dict
and can be told to fail one method with a given wire error.

``FakeFleet`` makes several, registers them with an in-process HubService
(on a real SQLite store) and sends their heartbeats.  No root needed.
"""
from __future__ import annotations

import hashlib
import time

import gevent

from dcctl import errors, wire
from hub.registry import Registry, manifest_id
from hub.service import HubService
from hub.store import HubStore

GiB = 1 << 30
LAYER = b"a layer that is not a tar, for a registry that never unpacks one"


class FakeAgent:
    """The agent methods the hub calls while placing, healing and
    recovering; ``fail[method] = error`` makes ``method`` raise it;
    ``before[method] = fn`` calls ``fn()`` as ``method`` starts."""

    def __init__(self, name: str):
        self.name = name
        self.containers: dict[str, dict] = {}
        self.fail: dict[str, errors.DcError] = {}
        self.calls: list[tuple[str, str]] = []  # (method, container name)
        self.before: dict[str, object] = {}

    def _enter(self, method: str, name: str = "") -> None:
        self.calls.append((method, name))
        if method in self.before:
            self.before[method]()
        if method in self.fail:
            raise self.fail[method]

    def _get(self, name: str) -> dict:
        if name not in self.containers:
            raise errors.NoSuchContainer(f"no container {name!r} on {self.name}")
        return self.containers[name]

    @wire.expose
    def image_pull(self, ref: str, source: str | None = None) -> dict:
        self._enter("image_pull")
        return {"ref": ref}

    @wire.expose
    def container_create(self, ref: str, name: str, options: dict | None = None) -> dict:
        self._enter("container_create", name)
        if name in self.containers:
            raise errors.ContainerExists(f"container {name!r} exists on {self.name}")
        self.containers[name] = {"name": name, "state": "stopped", "image_id": ref.split("@")[-1],
                                 "address": "10.0.0.2", "ports": [], "options": options or {},
                                 "memory_limit_bytes": (options or {}).get("memory_bytes") or 0}
        return dict(self.containers[name])

    @wire.expose
    def container_start(self, name: str) -> dict:
        self._enter("container_start", name)
        self._get(name)["state"] = "running"
        return dict(self.containers[name])

    @wire.expose
    def container_connection_add(self, name: str, proto: str, container_port: int,
                                 host_port: int | None = None) -> dict:
        self._enter("container_connection_add", name)
        c = self._get(name)
        mapping = {"proto": proto, "container_port": container_port, "host_port": host_port or 20000 + len(c["ports"])}
        c["ports"].append(mapping)
        return mapping

    @wire.expose
    def container_destroy(self, name: str, force: bool = False) -> dict:
        self._enter("container_destroy", name)
        self._get(name)
        del self.containers[name]
        return {"name": name, "destroyed": True}

    @wire.expose
    def container_inspect(self, name: str) -> dict:
        self._enter("container_inspect", name)
        return dict(self._get(name))

    @wire.expose
    def container_ls(self) -> list:
        return [{"name": c["name"], "state": c["state"]} for c in self.containers.values()]


class FakeFleet:
    """Fake agents on ipc sockets under ``root`` and an in-process hub (real
    SQLite store and registry under ``root``) they are registered with.

    Args:
        root: a temporary directory (pathlib.Path).
        memory_gib: {host name: reservable memory in GiB}, one fake agent each.
        heartbeat_s: the hub's heartbeat interval (the tests' beats follow it).
    """

    def __init__(self, root, memory_gib: dict[str, int], heartbeat_s: float = 0.2):
        self.root = root
        self.store = HubStore(str(root / "hub"))
        self.registry = Registry(str(root / "hub" / "registry"))
        self.hub = HubService(self.store, self.registry, heartbeat_s=heartbeat_s, missed_heartbeats=3)
        self.agents: dict[str, FakeAgent] = {}
        self.services: dict[str, wire.Service] = {}
        self.memory_gib = dict(memory_gib)
        self.silent: set[str] = set()  # hosts whose heartbeats stop
        self._beats: gevent.Greenlet | None = None
        for name in memory_gib:
            self.agents[name] = FakeAgent(name)
            self.serve(name)
            self.hub.host_register({"name": name, "endpoint": self.endpoint(name), "address": self.address(name),
                                    "capacity": self.capacity(name), "boot_id": f"boot-{name}"})

    def endpoint(self, name: str) -> str:
        return f"ipc://{self.root}/{name}.sock"

    def address(self, name: str) -> str:
        """Host ``name``'s address (an IP, as host_register wants): 10.99.0.N,
        N its place in memory_gib from 1."""
        return f"10.99.0.{list(self.memory_gib).index(name) + 1}"

    def capacity(self, name: str) -> dict:
        return {"memory_reservable_bytes": self.memory_gib[name] * GiB, "container_slots": 10}

    def serve(self, name: str) -> None:
        """Serve host ``name``'s fake agent on its endpoint (again)."""
        svc = wire.Service(self.agents[name], f"fake-{name}", heartbeat_s=1.0)
        svc.bind(self.endpoint(name))
        svc.start()
        self.services[name] = svc

    def unserve(self, name: str) -> None:
        """Stop serving host ``name``'s fake agent (its containers stay)."""
        self.services.pop(name).stop()

    def beat(self, name: str) -> dict:
        """One heartbeat of host ``name``, listing its containers."""
        return self.hub.host_heartbeat(name, {"capacity": self.capacity(name), "boot_id": f"boot-{name}",
                                              "containers": self.agents[name].container_ls()})

    def start_beats(self) -> None:
        """Every host not in ``silent`` beats every heartbeat_s / 4."""
        def loop():
            while True:
                for name in self.agents:
                    if name not in self.silent:
                        self.beat(name)
                gevent.sleep(self.hub.heartbeat_s / 4)
        self._beats = gevent.spawn(loop)

    def push_image(self, name: str = "busybox", exposed_ports: list | None = None) -> dict:
        """Put an image into the hub's registry (one small layer)."""
        digest = hashlib.sha256(LAYER).hexdigest()
        manifest = {"name": name, "created": time.time(), "layers": [digest], "size_bytes": len(LAYER),
                    "exposed_ports": exposed_ports if exposed_ports is not None else [{"proto": "tcp", "port": 80}]}
        manifest["id"] = manifest_id(manifest)
        return self.registry.receive(manifest, {digest: len(LAYER)}, lambda d, off, n: LAYER[off:off + n],
                                     expect=None)

    def serve_hub_curve(self, keys_dir: str) -> tuple[wire.Service, str, str]:
        """The hub served over CURVE on a free loopback port, its keys in
        ``keys_dir``: (the service, its tcp:// endpoint, its public key
        (Z85)); the caller stops the service."""
        from dcctl import auth
        from tests.ports import free_port
        svc = wire.Service(self.hub, "dc-hub", keys_dir=keys_dir, heartbeat_s=1)
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        svc.bind(endpoint)
        svc.start()
        return svc, endpoint, auth.ensure_server_pair(keys_dir)[0].decode()

    def close(self) -> None:
        if self._beats is not None:
            self._beats.kill()
        self.hub.stop()
        for name in list(self.services):
            self.unserve(name)
        self.store.close()
