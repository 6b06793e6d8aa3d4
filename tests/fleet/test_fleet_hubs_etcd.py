"""The operator's flow of issue 15 on a real local fleet (real LXC, real
etcd on the fleet bridge, two real hubs): ``ops/fleet up 3 --store etcd
--hubs 2`` prints the exports and one ``hub NAME PID ENDPOINT`` line per
hub; a create goes through either hub; a build through the hub the
agents' links do not use fetches its context from that hub, and so does
an archive pushed through it; kill -9 of the leader, and creates,
forwarded calls and leadership go on through the other; ``down`` removes
etcd too."""
from __future__ import annotations

import json
import os
import re
import subprocess
import time

from dcctl import errors, procs
from ops import fleet as fleetmod
from tests.fleet.conftest import cli_etcd_fleet
from tests.ocikit import make_umoci_image, need_tools, run
from tests.waiting import wait_for

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dcctl(env: dict, *args: str, timeout_s: float = 300) -> dict:
    out = subprocess.run(["python3", "-m", "dcctl.cli", "--json", *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=timeout_s)
    if out.returncode != 0:
        raise errors.DcError(f"dcctl {' '.join(args)}: {out.stderr.strip()}")
    if args[0] == "image_push":  # progress as JSON lines, the last one carrying the result
        return json.loads(out.stdout.strip().splitlines()[-1])["result"]
    return json.loads(out.stdout)


def test_two_hubs_on_etcd_survive_the_leader_killed(tmp_path):
    with cli_etcd_fleet("etc", 214) as (prefix, up):
        exports = re.findall(r"^export DCCTL_HOST=(\S+)$", up.stdout, re.M)
        hubs = re.findall(r"^hub (\S+) (\d+) (\S+)$", up.stdout, re.M)
        assert len(exports) == 1 and [h[0] for h in hubs] == ["hub-1", "hub-2"]
        assert exports[0] == ",".join(h[2] for h in hubs)
        lines = up.stdout.splitlines()  # the exports first, so `| grep ^export` or a cut-off eval gets them all
        assert max(i for i, ln in enumerate(lines) if ln.startswith("export ")) < \
            min(i for i, ln in enumerate(lines) if ln.startswith("hub "))
        env = {**os.environ, "DCCTL_HOST": exports[0]}
        info = _dcctl(env, "hub_info")
        assert info["store"] == "etcd" and info["leader"] in ("hub-1", "hub-2")
        assert sorted(m["name"] for m in info["members"]) == ["hub-1", "hub-2"]
        assert _dcctl(env, "create_container", "busybox", f"{prefix}.web")["state"] == "running"
        # an upload is fetched from the hub that holds it: every agent's link
        # uses hub-1 (the first of its --hub), and a build through hub-2 alone
        # (its context uploaded to hub-2's disk) still gets its context
        (tmp_path / "ctx").mkdir()
        (tmp_path / "ctx" / "Dockerfile").write_text("FROM busybox\nRUN echo via-hub-2 > /built\n")
        built = subprocess.run(["python3", "-m", "dcctl.cli", "--json", "build", str(tmp_path / "ctx"), "-t",
                                f"{prefix}img:v1"], cwd=REPO, env={**env, "DCCTL_HOST": hubs[1][2]},
                               capture_output=True, text=True, timeout=300)
        assert built.returncode == 0, built.stderr + built.stdout
        last = json.loads(built.stdout.strip().splitlines()[-1])
        assert last["image"].startswith(f"{prefix}img@")
        # and so is an archive pushed through hub-2 alone (image_import_upload)
        need_tools()
        layout = make_umoci_image(str(tmp_path), tag="v1")
        archive = str(tmp_path / "app-docker.tar")
        run("skopeo", "copy", "-q", f"oci:{layout}:v1", f"docker-archive:{archive}:app:v1")
        pushed = _dcctl({**env, "DCCTL_HOST": hubs[1][2]}, "image_push", archive, f"{prefix}oci:v1")
        assert pushed["manifest"]["name"] == f"{prefix}oci"
        leader = next(h for h in hubs if h[0] == info["leader"])
        other = next(h for h in hubs if h[0] != info["leader"])
        killed = subprocess.run([os.path.join(REPO, "ops", "fleet"), "kill", leader[0], "--prefix", prefix],
                                capture_output=True, text=True, timeout=60)
        assert killed.returncode == 0 and f"{leader[0]}: hub pid {leader[1]} killed" in killed.stdout, killed
        assert not procs.alive(int(leader[1]))  # gone (a zombie until its parent reaps it)
        assert _dcctl(env, "create_container", "busybox", f"{prefix}.web2")["state"] == "running"
        assert _dcctl(env, "container_inspect", f"{prefix}.web")["state"] == "running"  # routing goes on
        wait_for(lambda: _dcctl(env, "hub_info")["leader"] == other[0], 30, "the other hub to lead",
                 ignore=(errors.DcError,))
        # while the agents find their hub gone and move to the new leader, no host is judged lost
        deadline = time.time() + 20
        while time.time() < deadline:
            assert [h["state"] for h in _dcctl(env, "hosts")] == ["alive"] * 3
            time.sleep(1)
        assert not [e for e in _dcctl(env, "events", "--since", "0") if e["type"] == "host_lost"]
        # the drills the README gives: the killed hub started again joins; etcd killed and started again
        fleet = [os.path.join(REPO, "ops", "fleet")]
        started = subprocess.run(fleet + ["start", leader[0], "--prefix", prefix], capture_output=True, text=True,
                                 timeout=120)
        assert started.returncode == 0 and "hub pid" in started.stdout and "started" in started.stdout, started
        wait_for(lambda: sorted(m["name"] for m in _dcctl(env, "hub_info")["members"]) == ["hub-1", "hub-2"], 30,
                 "the restarted hub among the members", ignore=(errors.DcError,))
        assert subprocess.run(fleet + ["kill", "etcd", "--prefix", prefix], capture_output=True,
                              timeout=60).returncode == 0
        refused = subprocess.run(["python3", "-m", "dcctl.cli", "create_container", "busybox", f"{prefix}.web3"],
                                 cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0 and "StoreUnavailable" in refused.stderr, refused
        assert _dcctl(env, "container_inspect", f"{prefix}.web")["state"] == "running"
        assert subprocess.run(fleet + ["start", "etcd", "--prefix", prefix], capture_output=True,
                              timeout=120).returncode == 0
        wait_for(lambda: _dcctl(env, "create_container", "busybox", f"{prefix}.web3")["state"] == "running", 60,
                 "creates again once etcd is back", ignore=(errors.DcError, AssertionError, json.JSONDecodeError))
        bad = subprocess.run(fleet + ["kill", "hub-9", "--prefix", prefix], capture_output=True, text=True, timeout=60)
        assert bad.returncode == 1 and "no hub 'hub-9'" in bad.stderr and "hub-1, hub-2" in bad.stderr, bad
    assert not subprocess.run(["pgrep", "-f", f"{fleetmod.paths(prefix)['state']}/etcd"]).returncode == 0
