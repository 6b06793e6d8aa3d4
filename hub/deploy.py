"""Deploy orchestration: a release's new containers made, checked and
switched in, all or nothing, with a journal a restarted hub finishes or
rolls back.

A deploy of release vN of app APP (``Deployer.run``):

1. ``deploys/APP`` (the journal, hub.store deploy docs) is created, or the
   deploy is refused with DeployInProgress; release vN is written
   "deploying".
2. *stateless app*: new containers ``APP.vN.1..K`` are created and started
   (create_container, no route) while the old release serves.
   *app with volumes* (one writer): the old containers are stopped first,
   then the new ones are made on the host that holds the volumes.
3. Each new container's check: after ``wait_s``, up to ``attempts`` HTTP
   GETs of the check path through its port mapping (``timeout_s`` each,
   ``wait_s`` apart); 2xx and 3xx pass.  Without a path, the check is a TCP
   connect to the HTTP port (or, with no HTTP port, the container running).
   Dokku's CHECKS defaults: 5 s, 30 s, 5 attempts.
4. The switch: the app's routes get the new backends; after ``settle_s``
   (the routers probe and add them; not for an app with volumes, whose old
   containers are stopped already) the journal says "switched" (the commit
   point) and the old backends are removed (the routers drain them).
5. After ``retire_s`` the old containers are stopped and destroyed; the
   release is "active", the previous one "superseded"; old releases beyond
   the kept count are pruned (hub/apps.py).

Any failure before the commit point rolls back: the new containers and any
new backends go, stopped old containers are started again, the release is
"failed", and the call raises DeployFailed naming the container and the
check (or the create that failed).  A hub restart finds the journal
(``recover``): before the commit point it rolls back, after it it finishes.
"""
from __future__ import annotations

import logging
import time

import gevent
import gevent.pool
from gevent import socket as gsocket

from dcctl import errors
from hub import routes

log = logging.getLogger(__name__)

#: Phases of a journal before the commit point (a restart rolls back).
BEFORE_SWITCH = ("starting", "stopping_old", "creating", "checking", "switching")
#: Phases after it (a restart finishes the deploy).
AFTER_SWITCH = ("switched", "retiring")
STOP_TIMEOUT_SECONDS = 5.0
RECOVER_ROUNDS = 200


def journal_key(app: str) -> str:
    return f"deploys/{app}"


def release_key(app: str, n: int) -> str:
    return f"releases/{app}/{n:06d}"


def app_key(app: str) -> str:
    return f"apps/{app}"


def http_check(address: str, port: int, path: str | None, timeout_s: float, host_header: str) -> str | None:
    """One check of a container through its mapping ``address:port``: a
    GET of ``path`` (2xx/3xx pass) or, without a path, a TCP connect.

    Returns: None when it passes, else why it failed (one line)."""
    try:
        with gevent.Timeout(timeout_s, TimeoutError(f"no answer in {timeout_s:g} s")):
            sock = gsocket.create_connection((address, port), timeout=timeout_s)
            try:
                if path is None:
                    return None
                sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nUser-Agent: dcfleet-check\r\n"
                             "Connection: close\r\n\r\n".encode())
                data = b""
                while b"\r\n" not in data and len(data) < 4096:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            finally:
                sock.close()
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    line = data.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        return f"no HTTP status line (got {line[:60]!r})"
    return None if 200 <= int(parts[1]) < 400 else f"status {parts[1]}"


class Deployer:
    """Runs deploys and recovers interrupted ones, through the hub service
    ``svc`` (its public methods: create_container, container_stop,
    container_start, container_destroy, container_ls, route_add, route_rm,
    and its ``store``)."""

    def __init__(self, svc):
        self.svc = svc
        self.store = svc.store
        self.running: set[str] = set()  # apps whose deploy runs in this hub

    # ------------------------------------------------------------ journal
    def _journal(self, doc: dict, **changes) -> dict:
        """Write the journal with ``changes``; each new phase is appended
        to its ``steps`` [{phase, at (Unix s)}]."""
        if changes.get("phase") and changes["phase"] != doc.get("phase"):
            doc.setdefault("steps", []).append({"phase": changes["phase"], "at": round(time.time(), 3)})
        doc.update(changes)
        self.store.deploy_doc_put(journal_key(doc["app"]), doc)
        return doc

    def _release(self, app: str, n: int, **changes) -> dict:
        """Update release ``n``'s document (one the caller never wrote, say
        a hub killed between the journal and the release, is left absent)."""
        doc = self.store.deploy_doc_get(release_key(app, n))
        if doc is None:
            return {}
        doc.update(changes)
        self.store.deploy_doc_put(release_key(app, n), doc)
        return doc

    # ------------------------------------------------------------ deploy
    def begin(self, app: str, n: int, image: str, config: dict, old: dict | None) -> dict:
        """Create the journal of release ``n`` of ``app`` (``image`` as
        ``name@id``, ``config`` the release's, ``old`` the serving
        release's document or None).

        Returns: the journal document.
        Raises: DeployInProgress (the app has a journal: a deploy runs, or
        one a restart interrupted is being finished)."""
        doc = {"app": app, "release": n, "image": image, "phase": "starting", "new": [],
               "steps": [{"phase": "starting", "at": round(time.time(), 3)}],
               "old": list((old or {}).get("containers") or []), "old_release": (old or {}).get("release"),
               "stateful": bool(config["volumes"]), "started": time.time(), "stopped_at": None,
               "routes": config["routes"], "hub": getattr(self.svc, "name", None)}
        self.running.add(app)  # before the journal exists: recovery never takes a deploy of this hub's
        if not self.store.deploy_doc_put(journal_key(app), doc, create_only=True):
            self.running.discard(app)
            raise errors.DeployInProgress(f"app {app} has a deploy under way",
                                          hint="wait for it (or for the hub to finish one a restart cut short)")
        return doc

    def run(self, doc: dict, config: dict, on_done) -> dict:
        """Deploy the release of journal ``doc`` (see begin; the caller has
        written the release "deploying").  ``on_done(app, n)`` runs after a
        successful deploy (pruning).

        Returns: {app, release, version, image, containers [names], routes,
        hosts {container: host}, deploy_s (start to switched), gap_s (apps
        with volumes: seconds between the old release stopped and the new
        one switched in; else 0.0)}.
        Raises: DeployFailed (rolled back: the old release serves).
        """
        app, n, image = doc["app"], doc["release"], doc["image"]
        self.running.add(app)
        started = time.monotonic()
        try:
            try:
                if doc["stateful"] and doc["old"]:
                    self._journal(doc, phase="stopping_old", stopped_at=time.time())
                    for name in doc["old"]:
                        self._stop(name)
                self._journal(doc, phase="creating")
                made = self._create_all(doc, image, config)
                self._journal(doc, phase="checking")
                self._check_all(made, config)
                self._journal(doc, phase="switching")
                self._add_backends(made, config["routes"])
                if not doc["stopped_at"]:  # the old backends serve until the routers have the new ones
                    gevent.sleep(config["settle_s"])
                self._journal(doc, phase="switched")
            except BaseException as exc:
                self._release(app, n, state="failed", error=_why(exc), finished=time.time(),
                              steps=doc.get("steps", []))
                try:
                    self.rollback(doc)
                    self.store.deploy_doc_delete(journal_key(app))
                except errors.DcError as undo:  # a host does not answer: recover() asks again
                    log.warning("rollback of %s v%s unfinished (%s); the journal stays for recovery", app, n, undo)
                    try:  # so recovery records why the deploy failed, not "the hub restarted"
                        self._journal(doc, error=_why(exc))
                    except errors.DcError:
                        pass
                if isinstance(exc, errors.DeployFailed):
                    raise
                if isinstance(exc, errors.DcError):
                    raise errors.DeployFailed(f"deploy of {app} v{n} failed and was rolled back: {_why(exc)}",
                                              hint="the previous release keeps serving") from exc
                raise
            deploy_s = round(time.monotonic() - started, 3)
            gap_s = round(time.time() - doc["stopped_at"], 3) if doc["stopped_at"] else 0.0
            self._release(app, n, state="active", containers=[m["name"] for m in made],
                          hosts={m["name"]: m["host"] for m in made}, deploy_s=deploy_s, gap_s=gap_s,
                          switched=time.time(), steps=doc["steps"])
            self._set_current(app, n)
            try:
                self.finish(doc, config["retire_s"])
            except errors.DcError as exc:  # switched: the journal stays, recover() retires the rest
                log.warning("retiring %s v%s's predecessors unfinished (%s); left to recovery", app, n, exc)
            on_done(app, n)
            return {"app": app, "release": n, "version": f"v{n}", "image": image,
                    "containers": [m["name"] for m in made], "routes": config["routes"],
                    "hosts": {m["name"]: m["host"] for m in made}, "deploy_s": deploy_s, "gap_s": gap_s}
        finally:
            self.running.discard(app)

    def _create_all(self, doc: dict, image: str, config: dict) -> list[dict]:
        """Create and start the release's containers in parallel; each name
        is in the journal before its create.  Raises DeployFailed naming
        the first container that failed."""
        names = [f"{doc['app']}.v{doc['release']}.{k}" for k in range(1, config["replicas"] + 1)]
        self._journal(doc, new=names)
        opts = {"env": config["env"], "no_route": True}
        for key in ("command", "memory_bytes", "pids_limit"):
            if config.get(key) is not None:
                opts[key] = config[key]
        if config["volumes"]:
            opts["volumes"] = config["volumes"]
        pool = gevent.pool.Pool(8)
        jobs = {name: pool.spawn(self.svc.create_container, image, name, dict(opts)) for name in names}
        gevent.joinall(list(jobs.values()))
        made = []
        for name, job in jobs.items():
            if not job.successful():
                exc = job.exception
                raise errors.DeployFailed(f"container {name} of {doc['app']} v{doc['release']} could not be "
                                          f"created: {type(exc).__name__}: {exc}",
                                          hint="the previous release keeps serving") from exc
            r = job.value
            port = routes.http_port(r.get("ports") or [])  # the container port routes point at
            mapped = next((p["host_port"] for p in r.get("ports") or []
                           if p["proto"] == "tcp" and p["container_port"] == port), None)
            made.append({"name": name, "host": r["host"], "address": r["address"], "port": port,
                         "host_port": mapped})
        return made

    def _check_all(self, made: list[dict], config: dict) -> None:
        """Every new container's check, in parallel.  Raises DeployFailed
        naming the first container that failed and its check."""
        check = config["check"]
        jobs = [(m, gevent.spawn(self._check_one, m, check, config["routes"])) for m in made]
        gevent.joinall([j for _, j in jobs])
        for m, job in jobs:
            why = job.value if job.successful() else f"{type(job.exception).__name__}: {job.exception}"
            if why:
                what = f"GET {check['path']}" if check["path"] else "connect"
                raise errors.DeployFailed(
                    f"container {m['name']} failed its check ({what} on {m['address']}:{m['host_port']}, "
                    f"{check['attempts']} attempts, {check['timeout_s']:g} s timeout): {why}",
                    hint="the previous release keeps serving; the new containers were removed")

    def _check_one(self, m: dict, check: dict, route_names: list[str]) -> str | None:
        gevent.sleep(check["wait_s"])
        why = None
        host_header = next((r for r in route_names if not r.startswith(("tcp:", "*."))), m["name"])
        for attempt in range(check["attempts"]):
            if attempt:
                gevent.sleep(check["wait_s"])
            if m["host_port"] is None:  # nothing to connect to: the container must still run
                info = self.svc.container_inspect(m["name"])
                why = None if info.get("state") == "running" else f"state {info.get('state')}"
            else:
                why = http_check(m["address"], m["host_port"], check["path"], check["timeout_s"], host_header)
            if why is None:
                return None
        return why

    def _add_backends(self, made: list[dict], route_names: list[str]) -> None:
        for m in made:
            if m["port"] is None:
                continue
            for r in route_names:
                try:
                    self.svc.route_add(r, m["name"], m["port"])
                except errors.RouteExists:
                    pass

    def _stop(self, name: str) -> None:
        try:
            self.svc.container_stop(name, STOP_TIMEOUT_SECONDS)
        except (errors.ContainerNotRunning, errors.NoSuchContainer):
            pass

    def _destroy(self, name: str) -> None:
        try:
            self.svc.container_destroy(name, True)
        except errors.NoSuchContainer:
            pass

    def _remove_backends(self, names: set[str]) -> None:
        for row in self.store.routes():
            if row["container"] in names:
                try:
                    self.svc.route_rm(row["name"], row["container"], row["port"])
                except errors.NoSuchRoute:
                    pass

    def _set_current(self, app: str, n: int) -> None:
        doc = self.store.deploy_doc_get(app_key(app)) or {"name": app, "created": time.time()}
        previous = doc.get("current")
        doc["current"] = n
        self.store.deploy_doc_put(app_key(app), doc)
        if previous and previous != n and self.store.deploy_doc_get(release_key(app, previous)):
            self._release(app, previous, state="superseded")

    # ------------------------------------------------------------ the two endings
    def rollback(self, doc: dict) -> None:
        """Undo a deploy before its commit point (idempotent): new backends
        and containers go, stopped old containers start again.  Raises a
        DcError when a host does not answer (the journal stays; recovery
        asks again)."""
        new = set(doc.get("new") or [])
        self._remove_backends(new)
        failed = None
        for name in sorted(new):
            try:
                self._destroy(name)
            except errors.DcError as exc:
                failed = exc
                log.warning("rollback of %s v%s: destroy of %s failed: %s", doc["app"], doc["release"], name, exc)
        if doc.get("stateful") and doc.get("stopped_at"):
            for name in doc.get("old") or []:
                try:
                    self.svc.container_start(name)
                except (errors.ContainerRunning, errors.NoSuchContainer):
                    pass
        if failed is not None:
            raise failed

    def finish(self, doc: dict, retire_s: float) -> None:
        """Finish a deploy after its commit point (idempotent): the old
        backends go (the routers drain them), and after ``retire_s`` the old
        containers are stopped and destroyed; then the journal goes."""
        old = set(doc.get("old") or [])
        self._remove_backends(old)
        if doc.get("phase") != "retiring":
            self._journal(doc, phase="retiring", retire_at=time.time() + retire_s)
        gevent.sleep(max(0.0, doc["retire_at"] - time.time()))

        def retire(name: str) -> None:
            try:
                self._stop(name)
            except errors.DcError as exc:
                log.info("retiring %s: stop failed (%s); destroying", name, exc)
            self._destroy(name)
        jobs = [gevent.spawn(retire, name) for name in sorted(old)]
        gevent.joinall(jobs)
        for job in jobs:
            if not job.successful():
                raise job.exception
        self.store.deploy_doc_delete(journal_key(doc["app"]))

    def orphans(self) -> list[dict]:
        """The journals no running hub is working on: not a deploy of this
        hub's, and not one of another hub that is a member of the store
        (several hubs on etcd) — a journal of this hub's name that this
        process does not run is from before a restart."""
        me = getattr(self.svc, "name", None)
        others = {m.get("name") for m in self.store.members()} - {me}
        return [d for _, d in self.store.deploy_docs("deploys/")
                if d["app"] not in self.running and d.get("hub") not in others]

    def recover(self, interval_s: float, leading=lambda: True) -> None:
        """For ever (the hub spawns and kills it): every ``interval_s``
        seconds, while this hub leads, finish or roll back the deploys a
        hub restart (or a hub's death) interrupted (``orphans``)."""
        while True:
            try:
                if leading():
                    docs = self.orphans()
                    if docs:
                        self.recover_docs(docs, interval_s)
            except errors.DcError as exc:
                log.warning("deploy journals: %s; asking again", exc)
            gevent.sleep(interval_s)

    def recover_docs(self, pending: list[dict], interval_s: float) -> None:
        """recover's work for the journals ``pending``."""
        for _ in range(RECOVER_ROUNDS):
            left = []
            for doc in pending:
                try:
                    self._recover_one(doc)
                except errors.DcError as exc:
                    log.warning("deploy journal of %s v%s undecided: %s", doc["app"], doc["release"], exc)
                    left.append(doc)
            if not left:
                return
            pending = left
            gevent.sleep(interval_s)

    def _recover_one(self, doc: dict) -> None:
        app, n = doc["app"], doc["release"]
        if doc["phase"] in AFTER_SWITCH:
            log.info("deploy journal: finishing %s v%s (it had switched)", app, n)
            rel = self.store.deploy_doc_get(release_key(app, n)) or {}
            if rel.get("state") != "active":
                self._release(app, n, state="active", containers=list(doc.get("new") or []),
                              switched=time.time())
                self._set_current(app, n)
            self.finish(doc, 0.0)
            return
        log.info("deploy journal: rolling back %s v%s (phase %s)", app, n, doc["phase"])
        self.rollback(doc)
        # a deploy that failed and could not finish its own rollback (a host did not answer) wrote its
        # error in the journal; without one, the hub died under it
        why = f"{doc['error']}; rolled back" if doc.get("error") else \
            f"the hub restarted during {doc['phase']}: rolled back"
        self._release(app, n, state="failed", error=why, finished=time.time())
        self.store.deploy_doc_delete(journal_key(app))


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"
