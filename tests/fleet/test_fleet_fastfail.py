"""The operator's trial of a leader hub killed -9 during 20 concurrent
creates (``ops/fleet up 3 --store etcd --hubs 2``; real LXC, real etcd, two
real hubs, real dcctl processes): every create succeeds once or fails with a
typed error, no name runs twice; then a call to a container whose agent was
killed -9 fails typed (Unreachable).  Nothing here measures a time (the
README and the lead's report give them)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections import Counter

from dcctl import errors
from ops import fleet as fleetmod
from tests.fleet.conftest import cli_etcd_fleet

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CREATES = 20
# a typed failure: dcctl's one line names a wire error class
TYPED = re.compile(r"\b(Unreachable|CallTimeout|NoCapacity|StoreUnavailable|Busy|ContainerExists)\b")


def _dcctl(env: dict, *args: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(["python3", "-m", "dcctl.cli", "--json", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def _json(env: dict, *args: str):
    out = _dcctl(env, *args)
    if out.returncode != 0:
        raise errors.DcError(f"dcctl {' '.join(args)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def test_creates_across_a_leader_killed_succeed_once_or_fail_typed(tmp_path):
    with cli_etcd_fleet("ffl", 232) as (prefix, up):
        host_list = re.findall(r"^export DCCTL_HOST=(\S+)$", up.stdout, re.M)[0]
        hubs = re.findall(r"^hub (\S+) (\d+) (\S+)$", up.stdout, re.M)
        env = {**os.environ, "DCCTL_HOST": host_list}
        _json(env, "image_ls")  # the fleet answers
        leader = _json(env, "hub_info")["leader"]
        pid = int(next(h[1] for h in hubs if h[0] == leader))
        names = [f"{prefix}.k{i}" for i in range(CREATES)]
        creates = [subprocess.Popen(["python3", "-m", "dcctl.cli", "--json", "create_container", "busybox", name,
                                     "--no-route"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for name in names]
        try:
            time.sleep(0.6)  # the creates under way (the trial's timing, not a bound)
            os.kill(pid, signal.SIGKILL)
            results = [p.communicate(timeout=300) for p in creates]
        finally:
            for p in creates:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        ok = []
        for name, p, (out, err) in zip(names, creates, results):
            if p.returncode == 0:
                assert json.loads(out)["name"] == name
                ok.append(name)
            else:
                assert TYPED.search(err), f"{name}: untyped failure: {err}"
        listed = Counter(c["name"] for c in _json(env, "container_ls") if c["name"].startswith(prefix + "."))
        assert all(n == 1 for n in listed.values()), listed  # no name runs twice
        assert set(ok) <= set(listed), (ok, listed)
        # an agent killed -9: a call to one of its containers fails typed
        victim = next((c for c in _json(env, "container_ls") if c["name"] in ok), None)
        if victim is not None:
            host = victim["host"]
            assert fleetmod.kill_host(prefix, host)["killed"]
            out = _dcctl(env, "container_inspect", victim["name"], timeout_s=120)
            assert out.returncode != 0 and "Unreachable" in out.stderr, out.stdout + out.stderr
