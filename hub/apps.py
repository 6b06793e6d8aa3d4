"""Apps and releases: ``deploy``, ``releases``, ``rollback``, ``apps`` and
``app_rm`` (a mixin of HubService; the orchestration is hub/deploy.py).

An app is a name in front of numbered releases (Heroku's model).  Each
deploy makes release vN: an image (``name@id``, resolved once) plus a
config (replicas, routes, env, volumes, command, memory, check), kept in
the store (``releases/APP/NNNNNN``, see hub.store deploy docs).  A config
key a deploy does not give is the previous release's (config vars persist,
as on Heroku).  ``rollback`` is a deploy of an earlier release's image and
config, so it makes a new release too.

Pruning: after each successful deploy only the newest ``keep`` releases
(default 5) are kept.  A pruned release's containers (if any are left) are
destroyed, and each image of the app that no kept release of any app uses
is removed from every host (image_rm, which drops the layers no other
image there uses) and from the hub's registry (with its layers no other
manifest uses).  An app's images are the images named like the app
(``dcctl build ./app -t APP``): shared base images (busybox) are never
removed by a prune.
"""
from __future__ import annotations

import contextlib
import logging
import re
import time

import gevent
import gevent.lock

from dcctl import errors, validate
from dcctl.wire import expose
from hub import fanout, routes
from hub.agents import VIEW_TIMEOUT_SECONDS
from hub.deploy import Deployer, app_key, journal_key, release_key

log = logging.getLogger(__name__)

DEFAULT_KEEP_RELEASES = 5
MAX_REPLICAS = 32
#: Dokku's CHECKS defaults: wait before the first check, each check's
#: timeout, attempts.
CHECK_WAIT_SECONDS = 5.0
CHECK_TIMEOUT_SECONDS = 30.0
CHECK_ATTEMPTS = 5
#: Seconds between the new backends added and the old ones removed (the
#: routers probe and add the new servers meanwhile).
SETTLE_SECONDS = 2.0
#: Seconds the old containers serve their last requests after the switch.
RETIRE_SECONDS = 10.0
DEPLOY_OPTIONS = {
    "replicas": "number of containers (1-32; default: the previous release's, else 1)",
    "route": "route name(s) (default: the previous release's, else APP.<route domain>)",
    "env": "{NAME: value}, merged over the previous release's",
    "volume": "NAME:/path (repeatable): named volumes; the app stays on their host",
    "command": "the containers' command (argv list or shell string)",
    "memory_bytes": "each container's memory limit",
    "pids_limit": "each container's most processes and threads, 16-4194304 (default: its host's)",
    "check": "HTTP path checked before the switch, e.g. /health (default: a TCP connect)",
    "check_wait_s": f"seconds before the first check and between attempts (default {CHECK_WAIT_SECONDS:g})",
    "check_timeout_s": f"seconds each check may take (default {CHECK_TIMEOUT_SECONDS:g})",
    "check_attempts": f"attempts before a container fails (default {CHECK_ATTEMPTS})",
    "settle_s": f"seconds between the new backends added and the old removed (default {SETTLE_SECONDS:g})",
    "retire_s": f"seconds the old containers drain before they stop (default {RETIRE_SECONDS:g})",
    "keep": f"releases kept (default {DEFAULT_KEEP_RELEASES})",
}
_APP_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?$")
_CHECK_RE = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]{0,1023}$")
_VERSION_RE = re.compile(r"^v?(\d{1,9})$")
#: an app's container name, APP.vN.K (hub/deploy.py names them so)
_APP_CONTAINER_RE = re.compile(r"^([a-z0-9-]{1,40})\.v\d{1,9}\.\d{1,9}$")


def app_name(value) -> str:
    """An app name: 1-40 chars of ``a-z``, ``0-9`` and ``-`` (a DNS label,
    so ``APP.<domain>`` is its default route and ``APP.vN.K`` its
    containers).  Raises: InvalidArgument."""
    if not isinstance(value, str) or not _APP_RE.match(value):
        raise errors.InvalidArgument(f"bad app name {value!r:.60}: want 1-40 chars of a-z, 0-9 and '-', "
                                     "starting and ending with a letter or digit")
    return value


def release_number(value) -> int:
    """``vN``, ``N`` or an int -> N.  Raises: InvalidArgument."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _VERSION_RE.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) < 1:
        raise errors.InvalidArgument(f"bad release {value!r:.40}: want vN (v1, v2, ...)")
    return int(m.group(1))


def release_config(app: str, options, previous: dict | None, domain: str) -> dict:
    """A release's config from deploy's options over the previous
    release's config.  Returns: {replicas, routes, env, volumes [{name,
    path}], command, memory_bytes, pids_limit, check {path, wait_s, timeout_s,
    attempts}, settle_s, retire_s, keep}.  Raises: InvalidArgument."""
    opts = validate.options(options, DEPLOY_OPTIONS, "deploy")
    prev = previous or {}
    cfg: dict = {}
    cfg["replicas"] = int(validate.number(opts.get("replicas", prev.get("replicas", 1)), "replicas",
                                          minimum=1, maximum=MAX_REPLICAS, integer=True))
    if "route" in opts:
        names = [opts["route"]] if isinstance(opts["route"], str) else opts["route"]
        if not isinstance(names, list) or not 1 <= len(names) <= 16:
            raise errors.InvalidArgument("route must be a route name or a list of 1-16 names")
        cfg["routes"] = sorted({routes.frontend(r)["name"] for r in names})
    else:
        cfg["routes"] = prev.get("routes") or [routes.frontend(f"{app}.{domain}")["name"]]
    cfg["env"] = {**(prev.get("env") or {}), **validate.env(opts.get("env"))}
    cfg["volumes"] = validate.volume_specs(opts["volume"]) if "volume" in opts else list(prev.get("volumes") or [])
    cfg["command"] = validate.command(opts["command"]) if "command" in opts else prev.get("command")
    mem = opts.get("memory_bytes", prev.get("memory_bytes"))
    if mem is not None:
        validate.number(mem, "memory_bytes", minimum=validate.MIN_MEMORY_BYTES,
                        maximum=validate.MAX_MEMORY_BYTES, integer=True)
    cfg["memory_bytes"] = mem
    pids = opts.get("pids_limit", prev.get("pids_limit"))
    if pids is not None:
        validate.pids_limit_option(pids)
    cfg["pids_limit"] = pids
    pc = prev.get("check") or {}
    path = opts.get("check", pc.get("path"))
    if path is not None and (not isinstance(path, str) or not _CHECK_RE.match(path)):
        raise errors.InvalidArgument(f"check must be an HTTP path like /health, got {path!r:.60}")
    cfg["check"] = {
        "path": path,
        "wait_s": validate.number(opts.get("check_wait_s", pc.get("wait_s", CHECK_WAIT_SECONDS)), "check_wait_s",
                                  minimum=0, maximum=600),
        "timeout_s": validate.number(opts.get("check_timeout_s", pc.get("timeout_s", CHECK_TIMEOUT_SECONDS)),
                                     "check_timeout_s", minimum=0.1, maximum=600),
        "attempts": int(validate.number(opts.get("check_attempts", pc.get("attempts", CHECK_ATTEMPTS)),
                                        "check_attempts", minimum=1, maximum=100, integer=True)),
    }
    cfg["settle_s"] = validate.number(opts.get("settle_s", prev.get("settle_s", SETTLE_SECONDS)), "settle_s",
                                      minimum=0, maximum=600)
    cfg["retire_s"] = validate.number(opts.get("retire_s", prev.get("retire_s", RETIRE_SECONDS)), "retire_s",
                                      minimum=0, maximum=3600)
    cfg["keep"] = int(validate.number(opts.get("keep", prev.get("keep", DEFAULT_KEEP_RELEASES)), "keep",
                                      minimum=1, maximum=1000, integer=True))
    return cfg


def _release_row(doc: dict) -> dict:
    return {"app": doc["app"], "release": doc["release"], "version": f"v{doc['release']}", "image": doc["image"],
            "state": doc["state"], "created": doc["created"], "containers": doc.get("containers") or [],
            "hosts": doc.get("hosts") or {}, "config": doc["config"], "deploy_s": doc.get("deploy_s"),
            "gap_s": doc.get("gap_s"), "error": doc.get("error"), "rollback_of": doc.get("rollback_of"),
            "steps": doc.get("steps") or []}


class AppMethods:
    """The hub's app and release methods (a mixin of HubService: it uses
    ``store``, ``registry``, ``agents``, ``route_domain`` and the other
    mixins' public methods through the Deployer)."""

    _deployer: Deployer | None = None
    _app_locks: dict | None = None

    @property
    def deployer(self) -> Deployer:
        if self._deployer is None:
            self._deployer = Deployer(self)
        return self._deployer

    @contextlib.contextmanager
    def _app_lock(self, app: str):
        """Hold ``app``'s lock in this hub (a deploy, rollback or app_rm);
        DeployInProgress at once when another call holds it (the journal
        excludes deploys of other hubs)."""
        if self._app_locks is None:
            self._app_locks = {}
        lock = self._app_locks.setdefault(app, gevent.lock.BoundedSemaphore(1))
        if not lock.acquire(blocking=False):
            raise errors.DeployInProgress(f"app {app} has a deploy, rollback or app_rm under way")
        try:
            yield
        finally:
            lock.release()

    def recover_deploys(self) -> None:
        """Finish or roll back the deploys a hub restart (or, with several
        hubs, a hub's death) interrupted, on the leading hub, once hosts
        have had three heartbeat intervals to re-register (the placement
        journal goes first); see Deployer.recover."""
        gevent.sleep(self.heartbeat_s * 3)
        self.deployer.recover(self.heartbeat_s * 2, leading=self.store.is_leader)

    def _releases(self, app: str) -> list[dict]:
        return [d for _, d in self.store.deploy_docs(f"releases/{app}/")]

    def _app(self, app: str) -> dict:
        doc = self.store.deploy_doc_get(app_key(app_name(app)))
        if doc is None:
            raise errors.NoSuchApp(f"no app {app!r}", hint="dcctl apps lists them; deploy makes one")
        return doc

    # ------------------------------------------------------------ deploy
    @expose(shielded=True)
    def deploy(self, app: str, image: str, options: dict | None = None) -> dict:
        """Deploy ``image`` as the next release of ``app`` (made if new):
        new containers ``APP.vN.K`` are created and started, checked, then
        the app's routes point at them, the old ones drain and are stopped
        after ``retire_s``; all or nothing (see hub/deploy.py).  An app
        with volumes stays on their host and is swapped stop-first (one
        writer): the result's gap_s is how long it did not serve.

        Args:
            app: 1-40 chars of a-z, 0-9, '-'.
            image: a ref in the hub's registry (``name``, ``name@idprefix``).
            options: {replicas, route (name or list), env {K: V}, volume
                ("NAME:/path" or a list), command, memory_bytes, pids_limit, check
                (HTTP path), check_wait_s (5), check_timeout_s (30),
                check_attempts (5), settle_s (2), retire_s (10), keep (5)};
                keys not given are the previous release's.

        Returns: {app, release (N), version ("vN"), image (``name@id``),
        containers [names], routes [names], hosts {container: host},
        deploy_s (start to switched, seconds), gap_s (seconds without a
        serving container: apps with volumes; else 0.0)}.

        Raises: InvalidArgument (bad app, option, route), RouteExists (a
        route is held by another app or by containers not of this app; the
        message names the holder), ImageNotFound, AmbiguousImageRef,
        DeployInProgress, DeployFailed (a new container
        failed its check or its create: it names them; the previous release
        keeps serving and the new containers are gone), StoreError.
        """
        app_name(app)
        manifest = self.registry.resolve(image)
        with self._app_lock(app):
            return self._deploy(app, manifest, options, None)

    def _deploy(self, app: str, manifest: dict, options, rollback_of: int | None, base: dict | None = None) -> dict:
        doc = self.store.deploy_doc_get(app_key(app)) or {"name": app, "created": time.time(), "current": None,
                                                         "next_release": 1}
        current = self.store.deploy_doc_get(release_key(app, doc["current"])) if doc.get("current") else None
        latest = max(self._releases(app), key=lambda d: d["release"], default=None)
        config = release_config(app, options, (base or current or latest or {}).get("config"), self.route_domain)
        exposed = [{"proto": p.get("proto"), "container_port": p.get("port")} for p in manifest.get("exposed_ports") or []]
        if routes.http_port(exposed) is None and "route" not in (options or {}):
            config["routes"] = []  # nothing to route: no route unless one is asked for (refused below)
        routes.check_create(manifest, {"routes": config["routes"]})
        self._check_routes_free(app, config["routes"])
        n = max(doc.get("next_release", 1), (latest or {}).get("release", 0) + 1)
        image = f"{manifest['name']}@{manifest['id']}"
        journal = self.deployer.begin(app, n, image, config, current)
        try:
            doc["next_release"] = n + 1
            self.store.deploy_doc_put(app_key(app), doc)
            self.store.deploy_doc_put(release_key(app, n), {
                "app": app, "release": n, "image": image, "config": config, "state": "deploying",
                "created": time.time(), "containers": [], "rollback_of": rollback_of})
        except BaseException:
            self.store.deploy_doc_delete(journal_key(app))
            self.deployer.running.discard(app)
            raise
        result = self.deployer.run(journal, config, self._prune)
        return {**result, "rollback_of": rollback_of}

    def _check_routes_free(self, app: str, names: list[str]) -> None:
        """Refuse route names whose backends are not all this app's
        containers (another app's, or plain containers'): a deploy never
        joins someone else's route.

        Raises: RouteExists (naming the holder, with a hint)."""
        wanted = set(names)
        for row in self.store.routes():
            if row["name"] not in wanted:
                continue
            m = _APP_CONTAINER_RE.match(row["container"])
            if m and m.group(1) == app:
                continue
            holder = f"app {m.group(1)}" if m and self.store.deploy_doc_get(app_key(m.group(1))) is not None \
                else f"container {row['container']}"
            raise errors.RouteExists(
                f"route {row['name']} is held by {holder} (backend {row['container']}:{row['port']}); "
                f"app {app} would join it",
                hint=f"pick another route (deploy {app} IMAGE --route NAME), or free it first "
                     f"({'dcctl app_rm ' + m.group(1) if holder.startswith('app') else 'dcctl route_rm ' + row['name'] + ' ' + row['container'] + ' ' + str(row['port'])})")

    @expose(shielded=True)
    def rollback(self, app: str, release: str | None = None) -> dict:
        """Deploy an earlier release's image and config again, as a new
        release (Heroku's rollback).

        Args: release: ``vN`` (default: the release before the current one
        that served, i.e. was active or superseded).
        Returns: deploy's result, with rollback_of (N).
        Raises: NoSuchApp, NoSuchRelease (never made, failed, or pruned),
        and deploy's errors.
        """
        self._app(app)
        with self._app_lock(app):
            current = self._app(app).get("current")
            served = [d for d in self._releases(app) if d["state"] in ("active", "superseded")]
            if release is None:
                older = [d for d in served if current is None or d["release"] < current]
                if not older:
                    raise errors.NoSuchRelease(f"app {app} has no earlier release to roll back to")
                target = max(older, key=lambda d: d["release"])
            else:
                n = release_number(release)
                target = next((d for d in served if d["release"] == n), None)
                if target is None:
                    raise errors.NoSuchRelease(f"app {app} has no release v{n} that served (never made, failed "
                                               "or pruned)", hint=f"dcctl releases {app}")
            manifest = self.registry.resolve(target["image"])
            return self._deploy(app, manifest, None, target["release"], base=target)

    @expose(access="read")
    def releases(self, app: str) -> list:
        """An app's releases, newest first.

        Returns: [{app, release (N), version ("vN"), image (``name@id``),
        state ("deploying", "active", "superseded", "failed"), created
        (Unix s), containers [names], hosts {container: host}, config,
        deploy_s, gap_s, error (why it failed), rollback_of (N | None),
        steps [{phase (starting, stopping_old, creating, checking,
        switching, switched), at (Unix s)}] from the deploy's journal}].
        Raises: InvalidArgument, NoSuchApp.
        """
        self._app(app)
        return [_release_row(d) for d in sorted(self._releases(app), key=lambda d: -d["release"])]

    @expose(stream=True, access="read")
    def deploy_follow(self, app: str, poll_s: float = 0.2):
        """Follow an app's deploy as it happens (a stream): one item per
        step of its journal, then the release as ``releases`` lists it.
        With no deploy under way, only the latest release.

        Args: poll_s: seconds between looks at the journal (0.05-5).
        Returns (a stream): {app, release, phase, at (Unix s)} per step, then the
        release row (``state`` active or failed, ``error``).
        Raises: InvalidArgument, NoSuchApp.
        """
        self._app(app)
        poll = validate.number(poll_s, "poll_s", minimum=0.05, maximum=5)

        def items():
            seen, release = 0, None
            while True:
                journal = self.store.deploy_doc_get(journal_key(app))
                if journal is None:
                    break
                release = journal["release"]
                steps = journal.get("steps") or []
                for step in steps[seen:]:
                    yield {"app": app, "release": release, **step}
                seen = len(steps)
                gevent.sleep(poll)
            docs = self._releases(app)
            if release is not None:
                docs = [d for d in docs if d["release"] == release] or docs
            if docs:
                yield _release_row(max(docs, key=lambda d: d["release"]))
        return items()

    @expose(access="read")
    def apps(self) -> list:
        """Every app.

        Returns: [{app, current (N | None), version ("vN" | None), image,
        replicas, routes, containers [names], releases (count), created
        (Unix s), deploying (a deploy is under way)}], by name.
        """
        out = []
        for _, doc in self.store.deploy_docs("apps/"):
            app = doc["name"]
            rels = {d["release"]: d for d in self._releases(app)}
            cur = rels.get(doc.get("current"))
            out.append({"app": app, "current": doc.get("current"),
                        "version": f"v{doc['current']}" if doc.get("current") else None,
                        "image": (cur or {}).get("image"), "replicas": ((cur or {}).get("config") or {}).get("replicas"),
                        "routes": ((cur or {}).get("config") or {}).get("routes") or [],
                        "containers": (cur or {}).get("containers") or [], "releases": len(rels),
                        "created": doc.get("created"),
                        "deploying": self.store.deploy_doc_get(journal_key(app)) is not None})
        return out

    @expose(shielded=True)
    def app_rm(self, app: str) -> dict:
        """Remove an app: its routes' backends, every container of its
        releases, its releases and its images (as a prune does).  Its
        volumes stay (volume_rm on their host removes them).

        Returns: {app, removed: True, containers [destroyed], releases
        (count), images [removed ``name@id``]}.
        Raises: NoSuchApp, DeployInProgress, and the hosts' errors (what
        was not removed is still listed by releases).
        """
        self._app(app)
        with self._app_lock(app):
            if self.store.deploy_doc_get(journal_key(app)) is not None:
                raise errors.DeployInProgress(f"app {app} has a deploy under way")
            rels = self._releases(app)
            names = sorted({c for d in rels for c in d.get("containers") or []}
                           | {c["name"] for c in self.store.containers() if c["name"].startswith(f"{app}.v")})
            for row in self.store.routes():
                if row["container"] in names:
                    try:
                        self.route_rm(row["name"], row["container"], row["port"])
                    except errors.NoSuchRoute:
                        pass
            for name in names:
                try:
                    self.container_destroy(name, True)
                except errors.NoSuchContainer:
                    pass
            for d in rels:
                self.store.deploy_doc_delete(release_key(app, d["release"]))
            self.store.deploy_doc_delete(app_key(app))
            images = self._remove_images(app, {d["image"] for d in rels})
            return {"app": app, "removed": True, "containers": names, "releases": len(rels), "images": images}

    # ------------------------------------------------------------ pruning
    def _prune(self, app: str, _n: int) -> dict:
        """Keep the newest ``keep`` releases of ``app`` (its current one
        always); prune the rest with their containers and images.

        Returns: {releases [pruned N], images [removed name@id]}."""
        rels = sorted(self._releases(app), key=lambda d: -d["release"])
        if not rels:
            return {"releases": [], "images": []}
        keep = rels[0]["config"].get("keep", DEFAULT_KEEP_RELEASES)
        current = self._app(app).get("current")
        kept = rels[:keep] + [d for d in rels[keep:] if d["release"] == current]
        gone = [d for d in rels if d not in kept]
        for d in gone:
            for name in d.get("containers") or []:
                try:
                    self.container_destroy(name, True)
                except errors.NoSuchContainer:
                    pass
                except errors.DcError as exc:
                    log.warning("prune of %s v%s: %s stays (%s)", app, d["release"], name, exc)
            self.store.deploy_doc_delete(release_key(app, d["release"]))
        images = self._remove_images(app, {d["image"] for d in gone})
        if gone:
            log.info("pruned %s releases %s, images %s", app, [d["release"] for d in gone], images)
        return {"releases": [d["release"] for d in gone], "images": images}

    def _remove_images(self, app: str, refs: set[str]) -> list[str]:
        """Remove the images among ``refs`` named like ``app`` that no
        remaining release of any app and no container of the fleet uses,
        from every host and the registry.  Returns the refs removed."""
        in_fleet = {c["image"] for c in self.store.containers()}
        removed = []
        for ref in sorted(refs):
            name, _, image_id = ref.partition("@")
            still = [d for _, d in self.store.deploy_docs("releases/") if d["image"] == ref]
            if name != app or still or image_id in in_fleet:
                continue
            hosts = [h for h in self.store.hosts() if h["state"] == "alive"]
            fanout.broadcast(hosts, lambda h, ref=ref: self._image_rm_on(h["name"], ref), VIEW_TIMEOUT_SECONDS * 6)
            try:
                self.registry.remove(ref)
            except errors.ImageNotFound:
                pass
            removed.append(ref)
        return removed

    def _image_rm_on(self, host: str, ref: str) -> None:
        try:
            self.agents.call(host, "image_rm", ref, timeout_s=VIEW_TIMEOUT_SECONDS * 5)
        except (errors.ImageNotFound, errors.ImageInUse):
            pass
