"""Apps, releases and deploys on real parts: a local fleet (3 hosts as
namespaces, real LXC busybox containers), the hub's deploys and route
table, dc-router with HAProxy 2.6.  Each release's page renders its own
REL env var, so a test can tell which release answers."""
from __future__ import annotations

import os
import secrets
import signal
import sys
import tarfile
import threading
import time

import pytest

from dcctl import errors, wire
from images.busybox import build_busybox_rootfs
from ops import fleet as fleetmod
from tests.router.conftest import get, router_fleet, wait_for
from tests.waiting import wait_for as wait_until

pytestmark = pytest.mark.lxc

HEARTBEAT_S = 1.0
#: Renders REL into the page and, unless HEALTH=bad, serves /health.
COMMAND = ("echo \"release $REL\" > /var/www/index.html; "
           "[ \"$HEALTH\" = bad ] || echo ok > /var/www/health; exec httpd -f -p 80 -h /var/www")
#: Short waits (the defaults are Dokku's 5 s / 30 s / 5 and a 10 s retire).
FAST = {"check": "/health", "check_wait_s": 0.3, "check_timeout_s": 3, "check_attempts": 5, "settle_s": 1.5,
        "retire_s": 2.0}


@pytest.fixture(scope="module")
def fleet():
    with router_fleet("dpl", 211) as state:
        yield state


@pytest.fixture
def app(hub, fleet):
    """A unique app name; the app is removed after the test (by a new
    client: a test may restart the hub)."""
    name = "a" + secrets.token_hex(3)
    yield name
    with wire.connect(fleet["hub"]["ipc"], timeout_s=120) as c:
        try:
            wait_until(lambda: not [a for a in c.call("apps") if a["app"] == name and a["deploying"]], 120,
                       "no deploy under way", ignore=(errors.Unreachable, errors.CallTimeout))
            c.call("app_rm", name, timeout_s=300)
        except errors.DcError:
            pass


def page(fleet, host: str) -> str | None:
    try:
        status, body = get(fleet, host, timeout_s=3)
    except OSError:
        return None
    return body.strip() if status == 200 else None


def wait_release(fleet, host: str, rel: str, timeout_s: float = 30.0) -> None:
    wait_for(f"{host} to serve {rel}", lambda: page(fleet, host) == f"release {rel}", timeout_s)


class Load:
    """Bounded HTTP load through the router: two clients, one GET at a
    time each (a new connection per request), until stopped or
    ``max_requests`` each; every answer that is not a 200 from the app
    counts as failed."""

    def __init__(self, fleet, host: str, max_requests: int = 4000):
        self.fleet, self.host, self.max = fleet, host, max_requests
        self.ok = 0
        self.failed: list[str] = []
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(2)]

    def _run(self) -> None:
        for _ in range(self.max):
            if self._stop.is_set():
                return
            try:
                status, body = get(self.fleet, self.host, timeout_s=10)
                if status == 200 and body.startswith("release "):
                    self.ok += 1
                    self.seen.add(body.strip())
                else:
                    self.failed.append(f"{status} {body[:60]!r}")
            except OSError as exc:
                self.failed.append(repr(exc))
            time.sleep(0.01)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self.threads:
            t.join(30)


def names_of(hub, app: str) -> list[str]:
    return sorted(c["name"] for c in hub.call("container_ls") if c["name"].startswith(f"{app}."))


def test_zero_downtime_deploy_a_failed_check_and_a_rollback(hub, fleet, app):
    route = f"{app}.{fleet['route_domain']}"
    v1 = hub.call("deploy", app, "busybox", {**FAST, "replicas": 2, "command": COMMAND, "env": {"REL": "v1"}},
                  timeout_s=300)
    assert v1["release"] == 1 and v1["routes"] == [route] and v1["containers"] == [f"{app}.v1.1", f"{app}.v1.2"]
    wait_release(fleet, route, "v1")

    with Load(fleet, route) as load:
        wait_for("load to start", lambda: load.ok > 5, 20)
        v2 = hub.call("deploy", app, "busybox", {"env": {"REL": "v2"}}, timeout_s=300)
        wait_for("load to see v2", lambda: "release v2" in load.seen, 20)
        time.sleep(1)  # a little load after the old containers are gone
    assert load.failed == [], f"{len(load.failed)} failed of {load.ok + len(load.failed)}: {load.failed[:5]}"
    assert load.seen == {"release v1", "release v2"} and load.ok > 20
    print(f"\ndeploy v2 under load: {load.ok} requests, 0 failed, deploy_s={v2['deploy_s']}")
    assert v2["release"] == 2 and v2["containers"] == [f"{app}.v2.1", f"{app}.v2.2"]  # replicas kept from v1
    assert names_of(hub, app) == v2["containers"]  # v1's retired
    assert page(fleet, route) == "release v2"

    # v3 fails its check: DeployFailed names the container and the check; v2 serves, v3 is gone
    with pytest.raises(errors.DeployFailed, match=rf"{app}\.v3\.\d.*GET /health"):
        hub.call("deploy", app, "busybox", {"env": {"REL": "v3", "HEALTH": "bad"}, "check_attempts": 2},
                 timeout_s=300)
    assert names_of(hub, app) == v2["containers"]
    assert all(page(fleet, route) == "release v2" for _ in range(10))
    rels = hub.call("releases", app)
    assert [(r["release"], r["state"]) for r in rels] == [(3, "failed"), (2, "active"), (1, "superseded")]
    assert "v3" in rels[0]["error"] and rels[0]["image"].startswith("busybox@")
    assert [s["phase"] for s in rels[0]["steps"]] == ["starting", "creating", "checking"]
    assert [s["phase"] for s in rels[1]["steps"]] == ["starting", "creating", "checking", "switching", "switched"]

    # rollback to v1: a new release v4 with v1's image and config
    v4 = hub.call("rollback", app, "v1", timeout_s=300)
    assert v4["release"] == 4 and v4["rollback_of"] == 1
    wait_release(fleet, route, "v1")
    assert names_of(hub, app) == [f"{app}.v4.1", f"{app}.v4.2"]
    (listed,) = [a for a in hub.call("apps") if a["app"] == app]
    assert listed["current"] == 4 and listed["releases"] == 4 and listed["deploying"] is False
    # bad input: typed errors, nothing made
    with pytest.raises(errors.InvalidArgument):
        hub.call("deploy", "Bad_App", "busybox")
    with pytest.raises(errors.InvalidArgument):
        hub.call("deploy", app, "busybox", {"replicas": 0})
    with pytest.raises(errors.NoSuchRelease):
        hub.call("rollback", app, "v3")  # it failed: nothing to roll back to
    with pytest.raises(errors.ImageNotFound):
        hub.call("deploy", app, "nosuchimage")
    assert len(hub.call("releases", app)) == 4

    gone = hub.call("app_rm", app)
    assert gone["releases"] == 4 and names_of(hub, app) == []
    with pytest.raises(errors.NoSuchApp):
        hub.call("releases", app)


VOLUME_COMMAND = ("echo \"$REL\" >> /srv/data/log; { echo release $REL; cat /srv/data/log; } > /var/www/index.html; "
                  "[ \"$HEALTH\" = bad ] || echo ok > /var/www/health; exec httpd -f -p 80 -h /var/www")


def test_an_app_with_a_volume_keeps_its_data_and_its_host(hub, fleet, app):
    route = f"{app}.{fleet['route_domain']}"
    opts = {**FAST, "command": VOLUME_COMMAND, "volume": f"{app}-data:/srv/data"}
    v1 = hub.call("deploy", app, "busybox", {**opts, "env": {"REL": "v1"}}, timeout_s=300)
    host = v1["hosts"][f"{app}.v1.1"]
    wait_for("v1", lambda: (page(fleet, route) or "").startswith("release v1"), 30)
    v2 = hub.call("deploy", app, "busybox", {"env": {"REL": "v2"}}, timeout_s=300)
    assert v2["hosts"] == {f"{app}.v2.1": host}  # the volume's host
    assert v2["gap_s"] > 0
    print(f"\nvolume app swap: gap_s={v2['gap_s']} deploy_s={v2['deploy_s']}")
    wait_for("v2 with v1's data", lambda: page(fleet, route) == "release v2\nv1\nv2", 30)
    # a failed deploy of a volume app: the old container runs again, with its data
    with pytest.raises(errors.DeployFailed, match=rf"{app}\.v3\.1"):
        hub.call("deploy", app, "busybox", {"env": {"REL": "v3", "HEALTH": "bad"}, "check_attempts": 2},
                 timeout_s=300)
    assert names_of(hub, app) == [f"{app}.v2.1"]
    # v3 ran (and logged) before its check failed; v2, started again, logs once more
    wait_for("v2 back", lambda: page(fleet, route) == "release v2\nv1\nv2\nv3\nv2", 30)
    (vol,) = [v for v in hub.call("volume_ls") if v["name"] == f"{app}-data"]
    assert vol["host"] == host and vol["used_by"] == [f"{app}.v2.1"]
    # a container of the fleet given the volume goes to its host too
    made = hub.call("create_container", "busybox", f"{app}.side", {"volumes": [f"{app}-data:/mnt/d"], "no_route": True})
    assert made["host"] == host
    hub.call("container_destroy", f"{app}.side", True)
    hub.call("app_rm", app)
    hub.call("broadcast", "volume_rm", [f"{app}-data"], {"target": host})
    assert not [v for v in hub.call("volume_ls") if v["name"] == f"{app}-data"]


def _restart_hub(fleet) -> None:
    hd = fleet["hub"]
    os.kill(int(open(hd["pid_file"]).read()), signal.SIGKILL)
    argv = [sys.executable, "-m", "hub.main", "--listen", hd["tcp"], "--listen", hd["ipc"],
            "--state-dir", hd["state_dir"], "--heartbeat-s", str(HEARTBEAT_S), "--route-domain", fleet["route_domain"]]
    proc = fleetmod._spawn(argv, hd["log"], hd["pid_file"])
    hd["pid"] = proc.pid
    fleetmod.save(fleet)


def _deploy_in_background(fleet, app: str, options: dict) -> dict:
    outcome: dict = {}

    def run():
        try:
            with wire.connect(fleet["hub"]["ipc"], timeout_s=300) as c:
                outcome["result"] = c.call("deploy", app, "busybox", options, timeout_s=300)
        except errors.DcError as exc:
            outcome["error"] = exc
    threading.Thread(target=run, daemon=True).start()
    return outcome


def _journal_state(fleet, app: str) -> dict:
    with wire.connect(fleet["hub"]["ipc"], timeout_s=10) as c:
        return {r["release"]: r["state"] for r in c.call("releases", app)}


def test_a_hub_killed_mid_deploy_rolls_back_before_the_switch_and_finishes_after(hub, fleet, app):
    route = f"{app}.{fleet['route_domain']}"
    hub.call("deploy", app, "busybox", {**FAST, "command": COMMAND, "env": {"REL": "v1"}}, timeout_s=300)
    wait_release(fleet, route, "v1")

    # killed while v2's containers wait for their check: v2 is rolled back
    _deploy_in_background(fleet, app, {"env": {"REL": "v2"}, "check_wait_s": 30})
    wait_until(lambda: f"{app}.v2.1" in names_of(hub, app), 60, "v2's container made")
    with pytest.raises(errors.DeployInProgress):  # one deploy of an app at a time
        hub.call("deploy", app, "busybox", {"env": {"REL": "v9"}})
    with pytest.raises(errors.DeployInProgress):
        hub.call("app_rm", app)
    with wire.connect(fleet["hub"]["ipc"], timeout_s=60) as follower:  # the deploy's steps, live
        items = follower.call("deploy_follow", app)
        first = [next(items), next(items)]
        assert [(i["release"], i["phase"]) for i in first] == [(2, "starting"), (2, "creating")]
    _restart_hub(fleet)
    with wire.connect(fleet["hub"]["ipc"], timeout_s=60) as again:
        wait_until(lambda: _journal_state(fleet, app).get(2) == "failed", 90, "v2 rolled back",
                   ignore=(errors.Unreachable, errors.CallTimeout))
        wait_until(lambda: names_of(again, app) == [f"{app}.v1.1"], 60, "v2's container gone",
                   ignore=(errors.Unreachable, errors.CallTimeout))
        wait_until(lambda: [a["deploying"] for a in again.call("apps") if a["app"] == app] == [False], 30,
                   "the journal gone")
        wait_release(fleet, route, "v1")

        # killed while v1 retires after v3's switch: the deploy is finished
        _deploy_in_background(fleet, app, {"env": {"REL": "v3"}, "check_wait_s": 0.3, "retire_s": 60})
        wait_until(lambda: _journal_state(fleet, app).get(3) == "active", 90, "v3 switched")
    _restart_hub(fleet)
    with wire.connect(fleet["hub"]["ipc"], timeout_s=60) as again:
        wait_until(lambda: names_of(again, app) == [f"{app}.v3.1"], 90, "v1 retired by the restarted hub",
                   ignore=(errors.Unreachable, errors.CallTimeout))
        assert _journal_state(fleet, app) == {3: "active", 2: "failed", 1: "superseded"}
        wait_release(fleet, route, "v3")
        (listed,) = [a for a in again.call("apps") if a["app"] == app]
        assert listed["deploying"] is False and listed["current"] == 3


def test_a_host_lost_mid_deploy_rolls_back_and_the_rest_is_undone_when_it_returns(hub, fleet, app):
    route = f"{app}.{fleet['route_domain']}"
    v1 = hub.call("deploy", app, "busybox", {**FAST, "command": COMMAND, "env": {"REL": "v1"}}, timeout_s=300)
    wait_release(fleet, route, "v1")
    outcome = _deploy_in_background(fleet, app, {"env": {"REL": "v2"}, "check_wait_s": 8, "check_attempts": 2,
                                                 "check_timeout_s": 2})
    new = f"{app}.v2.1"
    wait_until(lambda: _journal_state(fleet, app).get(2) == "deploying", 60, "v2 under way")
    with wire.connect(fleet["hub"]["ipc"], timeout_s=60) as follower:  # until its containers are made
        assert any(step.get("phase") == "checking" for step in follower.call("deploy_follow", app))
    (row,) = [c for c in hub.call("container_ls") if c["name"] == new]
    assert row["host"] != v1["hosts"][f"{app}.v1.1"]  # spread: the new container is on another host
    victim = next(h for h in fleet["hosts"] if h["name"] == row["host"])
    os.kill(victim["pid"], signal.SIGKILL)  # the host dies: agent gone, containers stopped dead
    lxc_path = victim["lxc_path"]
    import subprocess
    stops = [subprocess.run(["nsenter", f"--net=/run/netns/{victim['netns']}", "lxc-stop", "-P", lxc_path, "-n",
                             name, "-k"], capture_output=True, timeout=60, text=True) for name in os.listdir(lxc_path)]
    assert all(s.returncode == 0 for s in stops), [(s.args, s.stderr) for s in stops]
    try:
        wait_until(lambda: "error" in outcome or "result" in outcome, 120, "the deploy to end")
        assert isinstance(outcome.get("error"), errors.DeployFailed) and new in str(outcome["error"])
        assert page(fleet, route) == "release v1"  # the old release never stopped serving
        assert _journal_state(fleet, app)[2] == "failed"
    finally:
        proc = fleetmod._spawn(fleetmod.agent_argv(fleet, victim, []), victim["log"], victim["pid_file"])
        victim["pid"] = proc.pid
        fleetmod.save(fleet)
    # the host is back: the rollback's destroy it could not do then is done now, and the journal goes
    wait_until(lambda: names_of(hub, app) == [f"{app}.v1.1"], 90, "v2's container removed on the returned host",
               ignore=(errors.Unreachable, errors.CallTimeout))
    wait_until(lambda: [a["deploying"] for a in hub.call("apps") if a["app"] == app] == [False], 60,
               "the journal gone")
    with wire.connect(victim["ipc"], timeout_s=30) as agent:
        assert new not in [c["name"] for c in agent.call("container_ls")]
    # the release says why it failed (the lost host), also after the recovery finished its rollback
    (v2,) = [r for r in hub.call("releases", app) if r["release"] == 2]
    assert v2["state"] == "failed" and "hub restarted" not in v2["error"] and new in v2["error"], v2["error"]
    assert page(fleet, route) == "release v1"


def _rootfs_archive(tmp_path, i: int, base: str) -> str:
    """A busybox rootfs tarball with one file of its own (a distinct image)."""
    path = str(tmp_path / f"rel{i}.tar")
    with tarfile.open(path, "w") as tar:
        tar.add(base, arcname=".")
        info = tarfile.TarInfo("./etc/release")
        data = f"image {i}\n".encode()
        info.size = len(data)
        import io
        tar.addfile(info, io.BytesIO(data))
    return path


def _tree_bytes(root: str) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_size
            except OSError:
                pass
    return total


def _fleet_disk_bytes(fleet) -> dict:
    """Bytes of the hub's registry and every host's image store and LXC
    dir, by directory (and "total")."""
    roots = [os.path.join(fleet["hub"]["state_dir"], "registry")]
    for h in fleet["hosts"]:
        roots += [os.path.join(h["state_dir"], "images"), h["lxc_path"]]
    sizes = {r: _tree_bytes(r) for r in roots}
    return {**sizes, "total": sum(sizes.values())}


def test_twenty_deploys_are_pruned_to_the_kept_count(hub, fleet, app, tmp_path):
    base = str(tmp_path / "rootfs")
    os.makedirs(base)
    build_busybox_rootfs(base)
    host = fleet["hosts"][0]
    opts = {"exposed_ports": [80], "command": ["httpd", "-f", "-p", "80", "-h", "/var/www"],
            "init": "/sbin/init", "stop_signal": "SIGUSR1"}
    disk = {}
    with wire.connect(host["ipc"], timeout_s=120) as agent:
        for i in range(1, 21):
            path = _rootfs_archive(tmp_path, i, base)
            m = agent.call("image_import", path, f"{app}:r{i}", opts, timeout_s=120)
            os.unlink(path)
            hub.call("image_push", host["name"], f"{app}@{m['id']}", timeout_s=120)
            hub.call("deploy", app, f"{app}@{m['id']}", {"check_wait_s": 0.2, "check_timeout_s": 3, "settle_s": 0.3,
                                                         "retire_s": 0.2}, timeout_s=300)
            if i in (5, 20):
                disk[i] = _fleet_disk_bytes(fleet)
        rels = hub.call("releases", app)
        assert [r["release"] for r in rels] == [20, 19, 18, 17, 16] and rels[0]["state"] == "active"
        kept = {r["image"].split("@")[1] for r in rels}
        registry = [i for i in hub.call("image_ls") if i["name"] == app]
        assert {i["id"] for i in registry} == kept
        layers_dir = os.path.join(fleet["hub"]["state_dir"], "registry", "layers")
        referenced = {d.split(":")[-1] for i in hub.call("image_ls") for d in i["layers"]}
        stored = {f[:-len(".tar")] for f in os.listdir(layers_dir)}
        app_layers = {d for i in registry for d in i["layers"]}
        assert len(app_layers) == 5 and stored == referenced  # no layer left that no image references
        for h in fleet["hosts"]:
            with wire.connect(h["ipc"], timeout_s=60) as a:
                images = a.call("image_ls")
            assert {i["id"] for i in images if i["name"] == app} <= kept, h["name"]
            # and no layer on the host that none of its images uses
            used = {d.split(":")[-1] for i in images for d in i["layers"]}
            on_disk = {e[:-len(".tar")] for e in os.listdir(os.path.join(h["state_dir"], "images", "layers"))
                       if e.endswith(".tar")}
            assert on_disk == used, h["name"]
            assert os.listdir(h["lxc_path"]) == [] or set(os.listdir(h["lxc_path"])) <= {
                c["name"] for c in hub.call("container_ls")}, h["name"]  # no container dir of a pruned release
        # the disk a deploy uses stays bounded: what 20 deploys leave is what 5 did, give or take which
        # host holds which of the kept images (each about the size of the busybox rootfs)
        image_bytes = max(i["size_bytes"] for i in registry)
        assert disk[20]["total"] <= disk[5]["total"] + len(fleet["hosts"]) * image_bytes, disk
        print(f"\n20 deploys: {len(rels)} releases kept, {len(registry)} images and {len(app_layers)} app layers "
              f"in the registry; fleet disk after 5 deploys {disk[5]['total']} B, after 20 {disk[20]['total']} B")


def _dcctl(fleet, *argv: str) -> tuple[int, str, str]:
    import subprocess
    done = subprocess.run([sys.executable, "-m", "dcctl.cli", "-H", fleet["hub"]["ipc"], *argv],
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout, done.stderr


def test_the_dcctl_interface_of_deploys(hub, fleet, app):
    import json
    code, out, err = _dcctl(fleet, "--json", "deploy", app, "busybox", "--replicas", "1", "--check", "/health",
                            "--env", "REL=v1", "--command", COMMAND, "--check-wait-s", "0.3", "--settle-s", "1",
                            "--retire-s", "1")
    assert code == 0, err
    made = json.loads(out)
    assert {"app", "release", "containers", "routes"} <= set(made) and made["release"] == 1
    assert made["routes"] == [f"{app}.{fleet['route_domain']}"]
    code, out, err = _dcctl(fleet, "deploy", app, "busybox", "--env", "REL=v2", "--env", "HEALTH=bad",
                            "--check-attempts", "1")
    assert code != 0 and "DeployFailed" in err and f"{app}.v2.1" in err, (out, err)
    code, out, err = _dcctl(fleet, "--json", "releases", app)
    assert code == 0 and [(r["release"], r["state"]) for r in json.loads(out)] == [(2, "failed"), (1, "active")]
    assert all({"release", "image", "state"} <= set(r) for r in json.loads(out))
    code, out, err = _dcctl(fleet, "releases", app)
    assert code == 0 and out.split("\n")[0].split()[:3] == ["version", "state", "image"] and "failed" in out
    code, out, err = _dcctl(fleet, "apps")
    assert code == 0 and app in out
    # with no deploy under way, deploy_follow gives the latest release and ends
    (latest,) = list(hub.call("deploy_follow", app))
    assert latest["release"] == 2 and latest["state"] == "failed"


def test_a_deploy_never_joins_another_apps_or_a_containers_route(hub, fleet, app):
    """An operator's trial: ``deploy frhij busybox --route frapp.fr.test``
    made frhij's container a third backend of frapp's route, and the same
    with a plain container's route.  Both are refused, naming the holder;
    the app's own route is still its own on its next deploy."""
    domain = fleet["route_domain"]
    mine = f"{app}.{domain}"
    hub.call("deploy", app, "busybox", {**FAST, "command": COMMAND, "env": {"REL": "v1"}}, timeout_s=300)
    other = app + "-hij"
    try:
        with pytest.raises(errors.RouteExists, match=f"app {app}") as err:
            hub.call("deploy", other, "busybox", {**FAST, "command": COMMAND, "route": mine}, timeout_s=300)
        assert f"app_rm {app}" in (err.value.hint or "")
        plain_route = f"{app}-plain.{domain}"
        hub.call("create_container", "busybox", f"{app}.plain", {"route": plain_route, "command": COMMAND})
        with pytest.raises(errors.RouteExists, match=f"container {app}.plain"):
            hub.call("deploy", other, "busybox", {**FAST, "command": COMMAND, "route": [f"{other}.{domain}",
                                                                                     plain_route]}, timeout_s=300)
        assert other not in [a["app"] for a in hub.call("apps")]  # nothing was made
        backends = {r["name"]: sorted(b["container"] for b in r["backends"]) for r in hub.call("route_ls")}
        assert backends[mine] == [f"{app}.v1.1"] and backends[plain_route] == [f"{app}.plain"]
        v2 = hub.call("deploy", app, "busybox", {"env": {"REL": "v2"}}, timeout_s=300)  # its own route: fine
        assert v2["routes"] == [mine]
        wait_release(fleet, mine, "v2")
    finally:
        try:
            hub.call("app_rm", other, timeout_s=300)
        except errors.DcError:
            pass


def test_hub_volume_create_and_rm_on_a_host(hub, fleet, app):
    """volume_create / volume_rm on the hub (were NoSuchMethod): made on the
    host given, removed from the host that holds it; a volume mounted on
    /bin is refused at the hub before any work."""
    host = fleet["hosts"][0]["name"]
    vol = f"{app}-vol"
    with pytest.raises(errors.InvalidArgument, match="which host"):
        hub.call("volume_create", vol)
    made = hub.call("volume_create", vol, {"host": host})
    assert made["host"] == host and made["name"] == vol and made["created_now"] is True
    assert hub.call("volume_create", vol)["created_now"] is False  # the host holding it
    with pytest.raises(errors.InvalidArgument, match=f"already on {host}"):
        hub.call("volume_create", vol, {"host": fleet["hosts"][1]["name"]})
    assert [(v["host"], v["name"]) for v in hub.call("volume_ls") if v["name"] == vol] == [(host, vol)]
    with pytest.raises(errors.InvalidArgument, match="hide"):
        hub.call("create_container", "busybox", f"{app}.bin", {"volumes": [f"{vol}:/bin"]})
    assert f"{app}.bin" not in [c["name"] for c in hub.call("container_ls")]
    gone = hub.call("volume_rm", vol)
    assert gone["host"] == host and gone["removed"] is True
    assert vol not in [v["name"] for v in hub.call("volume_ls")]
    with pytest.raises(errors.NoSuchVolume):
        hub.call("volume_rm", vol)
    with pytest.raises(errors.NoSuchHost):
        hub.call("volume_create", vol, {"host": "no-such-host"})


def test_a_bare_image_name_is_latest_not_the_newest_tag(hub, fleet, app, tmp_path):
    """An operator's trial: after ``build -t NAME:v2``, ``deploy APP NAME``
    deployed NAME:v2 and ``create_container NAME`` took it too; NAME is
    NAME:latest.  Two real builds through the hub's registry."""
    import json
    ids = {}
    for ref, rel in ((app, "latest"), (f"{app}:v2", "v2")):  # v2 is the newer
        ctx = tmp_path / rel
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(f"FROM busybox\nRUN echo {rel} > /rel\n")
        code, out, err = _dcctl(fleet, "--json", "build", str(ctx), "-t", ref)
        assert code == 0, err
        ids[rel] = json.loads(out.splitlines()[-1])["id"]
    made = hub.call("deploy", app, app, {**FAST, "command": COMMAND, "env": {"REL": "v1"}}, timeout_s=300)
    assert made["image"] == f"{app}@{ids['latest']}"
    hub.call("create_container", app, f"{app}.bare", {"no_route": True, "command": "sleep 600"})
    assert hub.call("container_inspect", f"{app}.bare")["image_id"] == ids["latest"]
    assert hub.call("container_exec", f"{app}.bare", ["cat", "/rel"])["stdout"] == b"latest\n"
    assert hub.call("deploy", app, f"{app}:v2", {"env": {"REL": "v2"}}, timeout_s=300)["image"] == \
        f"{app}@{ids['v2']}"


def test_a_container_with_a_volume_stays_on_its_lost_host(hub, fleet, app):
    """Last in the module: it takes a host down (and brings it back)."""
    victim = fleet["hosts"][2]
    made = hub.call("create_container", "busybox", f"{app}.db",
                    {"volumes": [f"{app}-db:/srv/db"], "restart": "always", "host": victim["name"], "no_route": True})
    control = hub.call("create_container", "busybox", f"{app}.free",
                       {"restart": "always", "host": victim["name"], "no_route": True})
    assert made["host"] == control["host"] == victim["name"]
    since = time.time()
    os.kill(victim["pid"], signal.SIGKILL)  # the agent dies; its host is judged lost after 3 missed heartbeats
    try:
        wait_until(lambda: any(e["kind"] == "rescheduled" and e.get("name") == f"{app}.free"
                               for e in hub.call("events", since)), 60, "the container without volumes moved")
        skipped = [e for e in hub.call("events", since) if e.get("name") == f"{app}.db"]
        assert [e["kind"] for e in skipped] == ["reschedule_skipped"]
        assert hub.call("container_inspect", f"{app}.free")["host"] != victim["name"]
        assert [c["host"] for c in hub.call("container_ls") if c["name"] == f"{app}.db"] == [victim["name"]]
    finally:
        proc = fleetmod._spawn(fleetmod.agent_argv(fleet, victim, []), victim["log"], victim["pid_file"])
        victim["pid"] = proc.pid
        fleetmod.save(fleet)
        wait_until(lambda: fleetmod.ping(victim["ipc"]), 60, "the agent back")
        wait_until(lambda: [h["state"] for h in hub.call("hosts") if h["name"] == victim["name"]] == ["alive"], 60,
                   "the host alive again")
    for name in (f"{app}.db", f"{app}.free"):
        hub.call("container_destroy", name, True)
    hub.call("broadcast", "volume_rm", [f"{app}-db"], {"target": victim["name"]})
