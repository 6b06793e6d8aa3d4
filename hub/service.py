"""The hub's RPC surface, ``HubService``: one mixin per concern, each in its
own module, over the parts they share, which this module builds.

* hub/membership.py: host_add, host_register, host_heartbeat, host_remove,
  hosts, and the monitor that judges hosts lost after missed heartbeats;
* hub/placement.py: create_container (its ``Placer`` makes containers real
  on hosts, retries elsewhere, and recovers the journal);
* hub/forward.py: the ``container_*`` methods, forwarded to the owning host;
* hub/fleetwide.py: container_ls, network_ls, hostinfo, broadcast, queue;
* hub/imagemethods.py: image_ls, image_push, image_manifest,
  image_layer_read (the registry itself is hub/registry.py);
* hub/routes.py: the route table; hub/uploads.py: image uploads;
* hub/buildmethods.py: build (a Dockerfile build on one idle host);
* hub/volumes.py: volume_ls and the volume placement rule;
* hub/apps.py: deploy, releases, rollback, apps, app_rm (the deploy
  orchestration and its journal: hub/deploy.py);
* hub/eventmethods.py: events, events_follow, host_events (the log: hub/events.py);
* hub/progressmethods.py: image_pull on a host, its progress as a stream;
* here: hub_info, start and stop.

The shared parts: ``store`` (SQLite, hub/store/sqlite.py), ``registry``,
``agents`` (every agent call, hub/agents.py), ``placer``, ``healer``
(hub/failover.py), ``beats`` (hub/heartbeats.py), ``events_log``
(hub/events.py) and ``workers`` (the queue's idle hosts, hub/fanout.py).
The served method table is the union of the mixins' ``@expose`` methods;
tests/data/hub_methods.json pins it.

Every conversation ends at the hub: it holds one zerorpc client per agent
and calls agents itself (no ZeroMQ device between a client and an agent,
whose heartbeats and stream credits would be misrouted).  The hub talks to
agents over RPC only and never imports agent code.
"""
from __future__ import annotations

import logging
import time

import gevent

from dcctl import auth, errors
from dcctl.wire import expose
from hub import fanout, routes
from hub.agents import Agents
from hub.apps import AppMethods
from hub.buildmethods import BuildMethods
from hub.eventmethods import EventMethods
from hub.progressmethods import ProgressMethods
from hub.events import EventLog
from hub.failover import Healer
from hub.fleetwide import FleetwideMethods
from hub.forward import ForwardMethods
from hub.heartbeats import DEFAULT_FLUSH_SECONDS, Heartbeats
from hub.imagemethods import ImageMethods
from hub.membership import MembershipMethods
from hub.placement import PlacementMethods, Placer
from hub.registry import Registry
from hub.store import HubStore
from hub.uploads import UploadMethods
from hub.volumes import VolumeMethods

log = logging.getLogger(__name__)

HUB_VERSION = "0.1.0"


class HubService(MembershipMethods, PlacementMethods, ForwardMethods, FleetwideMethods, ImageMethods,
                 routes.RouteMethods, UploadMethods, BuildMethods, VolumeMethods, AppMethods, EventMethods,
                 ProgressMethods):
    """The methods served by ``dc-hub`` (routes: hub.routes; image uploads:
    hub.uploads).

    Args:
        store: the fleet's SQLite store.
        registry: the image registry.
        server_pair: the hub's CURVE key pair (public, secret), used as its
            client key towards agents; None for a hub without keys.
        heartbeat_s: expected seconds between agent heartbeats.
        missed_heartbeats: heartbeats missed before a host is unreachable.
        call_timeout_s: default timeout of a forwarded call, seconds.
        allowlist: the hub's client allowlist (dcctl.auth.Allowlist), where
            host_add admits a host's key with the agent role; None for a hub
            without keys.
        heartbeat_flush_s: seconds between writes of the heartbeats
            received (all in one transaction, see hub/heartbeats.py); 0
            writes each one at once.
    """

    def __init__(self, store: HubStore, registry: Registry, *, heartbeat_s: float = 3.0,
                 missed_heartbeats: int = 3, call_timeout_s: float = 60.0,
                 server_pair: tuple[bytes, bytes] | None = None, allowlist: auth.Allowlist | None = None,
                 heartbeat_flush_s: float = DEFAULT_FLUSH_SECONDS):
        self.server_pair = server_pair
        self.metrics_url: str | None = None  # set by hub.metrics.started once served
        self.allowlist = allowlist
        self.store = store
        self.registry = registry
        self.heartbeat_s = heartbeat_s
        self.missed_heartbeats = missed_heartbeats
        self.call_timeout_s = call_timeout_s
        self.workers = fanout.WorkQueue()
        self.beats = Heartbeats(store, heartbeat_flush_s)
        self.events_log = EventLog(store)  # fleet events, persisted (hub/events.py, hub/eventmethods.py)
        self.agents = Agents(store, call_timeout_s=call_timeout_s, heartbeat_s=heartbeat_s, server_pair=server_pair,
                             on_event=self.events_log.add)
        self.placer = Placer(store, self.agents)
        self.placer.on_event = self.events_log.add
        self.healer = Healer(store, registry, self.agents, self.placer, self.events_log)
        #: this hub's name among the hubs of its store (hub_info's leader and
        #: members) and the endpoint clients reach it at; dc-hub sets both
        self.name = "hub"
        self.endpoint = ""
        #: every endpoint this hub listens on (dc-hub sets them): handed to an
        #: agent with an upload this hub holds, so it fetches from this hub
        self.endpoints: list[str] = []
        self._tasks: list[gevent.Greenlet] = []
        self._agent_schema: dict | None = None  # an agent's _zerorpc_inspect methods
        self.started = time.time()
        self._serving_since = time.monotonic()

    # ------------------------------------------------------------ plumbing
    def start(self) -> None:
        """Join the store's hubs (as ``name`` at ``endpoint``), then start the
        membership monitor, the heartbeat writer and the journal recovery.
        No host is judged before a full grace period (missed_heartbeats
        heartbeats) from now: a restarted hub gives every host the time to
        find it again.  With several hubs (an etcd store) only the leader
        judges hosts, fails containers over and runs the journal."""
        self._serving_since = time.monotonic()
        self.recover_builds()  # context uploads of builds a dead run of this hub left (hub/buildmethods.py)
        self.store.join(self.name, self.endpoint)
        journal = set(self.store.orphaned_reservations()) if self.store.is_leader() else set()
        self._tasks = [gevent.spawn(self.monitor_hosts), gevent.spawn(self._recover, journal),
                       gevent.spawn(self.beats.run), gevent.spawn(self.recover_deploys)]

    def stop(self) -> None:
        """Stop the hub's tasks, write the heartbeats not written yet and
        close its clients to agents (the caller closes the store, which
        leaves the store's hubs)."""
        gevent.killall(self._tasks)
        self.beats.flush()
        self.agents.close()
        self.close_fanout()  # the broadcast's shared sockets (hub/fleetwide.py)

    def _recover(self, journal: set[str]) -> None:
        """The journal recovery (Placer.recover), once hosts have had two
        heartbeat intervals to re-register; on the leader only, which also
        takes each round the reservations of hubs that died mid-placement."""
        gevent.sleep(self.heartbeat_s * 2)
        self.placer.recover(journal, self.heartbeat_s, leading=self.store.is_leader,
                            orphans=self.store.orphaned_reservations)

    @expose(access="read")
    def hub_info(self) -> dict:
        """The hub's own state.

        Returns: {version, name (this hub's), uptime_s, heartbeat_s,
        missed_heartbeats, hosts (count), containers (count), queue {idle
        [hosts, longest idle first], busy [hosts], members [hosts]}, store
        ("sqlite"|"etcd"), store_ok (bool), leader (the leading hub's name,
        None while there is none), members [{name, endpoint, since}] (the
        hubs alive), metrics_url (the hub's Prometheus endpoint,
        hub/metrics.py, or None)}.  While the store does not answer (etcd
        down) it still answers, so that an operator sees the outage:
        store_ok false, store_error (the StoreUnavailable message), and
        hosts, containers, leader and members None.
        Raises: nothing of its own.
        """
        info = {"version": HUB_VERSION, "name": self.name, "uptime_s": round(time.time() - self.started, 3),
                "heartbeat_s": self.heartbeat_s, "missed_heartbeats": self.missed_heartbeats,
                "queue": self.workers.stats(), "store": self.store.kind, "metrics_url": self.metrics_url}
        try:
            info.update(hosts=len(self.store.hosts()), containers=len(self.store.containers()),
                        leader=self.store.leader(), members=self.store.members(), store_ok=True)
        except errors.StoreUnavailable as exc:
            info.update(hosts=None, containers=None, leader=None, members=None, store_ok=False,
                        store_error=str(exc))
        return info
