"""Benchmarks that cannot rot: every ``bench/`` script runs in its tiny form
(``--quick``) and prints its figure lines; a benchmark stopped by SIGTERM or
SIGINT mid-run leaves no process, namespace, bridge, netfilter chain,
container or directory of its prefix behind."""
from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time

import pytest

from ops import fleet as fleetmod
from tests.agentproc import REPO, TEST_PREFIX
from dcctl import procs

pytestmark = [pytest.mark.lxc, pytest.mark.timeout(300)]

# bench -> (figure line patterns, each with how many lines must match)
FIGURES = {
    "lifecycle": [(r"^  (api|raw) +workers=\d+: 2 cycles in +[\d.]+ s = +[\d.]+ containers/min; machine CPU +[\d.]+ ms "
                   r"per container \( *\d+% of \d+ CPUs busy\), at most +[\d.]+/min at that cost$", 4),
                  (r"^  ratio api/raw at \d worker\(s\): [\d.]+x$", 2),
                  (r"^agent RSS idle: [\d.]+ MiB$", 1),
                  (r"^agent RSS with 2 running containers: [\d.]+ MiB$", 1),
                  (r"^  exec CPU per call: sealed lxc-attach copy [\d.]+ ms, lxc-attach's own copy and re-exec "
                   r"[\d.]+ ms \(8 each, alternating\); loadavg [\d.]+$", 1),
                  (r"^  listing 2 running containers, CPU per listing: in process [\d.]+ ms, lxc-ls [\d.]+ ms "
                   r"\(8 each, alternating\)$", 1)],
    "fanout": [(r"^  N=  2  raw fan-out: median +[\d.]+ ms .* hub broadcast: median +[\d.]+ ms .* ratio [\d.]+x$",
                1)],
    "placement": [(r"^  100 hosts, decision \+ atomic claim, [14] caller\(s\): +[\d.]+ decisions/s$", 2),
                  (r"^    per CPU second of the bench: +[\d.]+ decisions$", 2),
                  (r"^  3 real hosts, create_container --no-start end to end, [14] client\(s\): +[\d.]+ creates/s$",
                   2)],
    "rpc": [(r"^  (plain|curve) callers=[18]: +\d+ calls/s  p50 +\d+ us  p99 +\d+ us$", 4),
            (r"^  CURVE throughput cost at [18] caller\(s\): -?[\d.]+%$", 2),
            (r"^  bare zerorpc echo callers=[18]: +\d+ calls/s, server CPU +\d+ us/call; agent plain +\d+ calls/s, "
             r"server CPU +\d+ us/call \(interleaved\)$", 2),
            (r"^  bare zerorpc / agent plain at [18] caller\(s\): [\d.]+x \(target <= 1.2x\)$", 2)],
    "routing": [(r"^    (direct \(host mapping\)|via the router \(HAProxy\)) +\d+ req/s   p50 +[\d.]+ ms   "
                 r"p99 +[\d.]+ ms   \(\d+ requests, \d+ errors\)$", 4),
                (r"^    router / direct throughput: [\d.]+x \(target >= 0.8x\)$", 2),
                (r"^  create_container returned -> first 200 via the router: median [\d.]+ s, max [\d.]+ s "
                 r"over 1 creates \(target < 1 s\)$", 1)],
    "build": [(r"^  build, one RUN, end to end \(upload, build, layer, registry\): median [\d.]+ s over 1 build\(s\)$", 1),
              (r"^  same RUN by hand: lxc-attach alone [\d.]+ s; create\+start\+attach\+destroy [\d.]+ s$", 1),
              (r"^  shipped into the registry: \d+ bytes; pulled by the other host: \d+ bytes; new layer \d+ bytes; "
               r"image \d+ bytes$", 1),
              (r"^  shipped / layer: (0\.9\d\d|1\.0\d\d|1\.100) \(target <= 1.10\); shipped / image: [\d.]+$", 1)],
    "deploy": [(r"^  deploy v2: start -> switched [\d.]+ s, whole call [\d.]+ s \(retire [\d.]+ s\), \d+ requests, "
                r"0 failed$", 1),
               (r"^  deploy time start -> switched: median [\d.]+ s, max [\d.]+ s over 1 deploys$", 1),
               (r"^  failed requests during deploys: 0 of \d+ \(target 0\)$", 1),
               (r"^  volume app \(one writer, stop-first\): gap without a serving container [\d.]+ s, "
                r"start -> switched [\d.]+ s$", 1)],
    "observe": [(r"^  scrape /metrics with 3 running containers: median +[\d.]+ ms  p95 +[\d.]+ ms  max +[\d.]+ ms  "
                 r"\(5 scrapes, \d+ bytes, \d+ samples; target < 100 ms\)$", 1),
                (r"^  of which in the agent \(collect and format\): median [\d.]+ ms; load average [\d.]+$", 1),
                (r"^  agent CPU idle: [\d.]+% of a CPU over 10 s$", 1),
                (r"^  agent CPU with a scrape every 5 s: [\d.]+% of a CPU over 10 s = [\d.]+ ms of CPU per scrape$", 1),
                (r"^  log writers: 3 processes, RSS median [\d.]+ MiB, total [\d.]+ MiB$", 1)],
    "scale": [(r"^  hub CPU with 0 hosts: +[\d.]+% of a core over [\d.]+ s$", 1),
              (r"^    20 hosts: hub CPU +[\d.]+% of a core over [\d.]+ s \(0 hosts: [\d.]+%; target < 25% at 1000\)$",
               1),
              (r"^    20 hosts: broadcast container_ls median +[\d.]+ ms p99 +[\d.]+ ms   raw fan-out median +[\d.]+ ms "
               r"p99 +[\d.]+ ms   \(target < 1000 ms median\)$", 1),
              (r"^    20 hosts: hub CPU per broadcast +[\d.]+ ms; rounds failed: none$", 1),
              (r"^    20 hosts, the hub holding a client to every host: hub CPU +[\d.]+% of a core over [\d.]+ s$", 1),
              (r"^    20 hosts: hub \d+ fds, RSS \d+ MiB$", 1),
              (r"^  hub restart, (jitter 1 s|no jitter \(reference\)): 20 hosts registered again +[\d.]+ s to +[\d.]+ s "
               r"after the start \(spread +[\d.]+ s\), peak \d+ registrations/s$", 2)],
    "idlehub": [(r"^  10 hosts, this checkout: [\d.]+ etcd requests/s, hub CPU [\d.]+% of a core over 2 s; all 10 alive; "
                 r"load average [\d.]+$", 1)],
    "failover": [(r"^   2 hosts: host death -> 1 --restart always containers answering elsewhere: +[\d.]+ s$", 1),
                 (r"^  agent restart with 2 running containers -> serving, all re-adopted: +[\d.]+ s$", 1)],
}


def _need_root():
    if os.geteuid() != 0 or not shutil.which("lxc-start"):
        pytest.skip("needs root and LXC (run .ci/run, which installs them)")


def _prefix(bench: str) -> str:
    """A prefix in the form each bench names things with (see their docs)."""
    return {"lifecycle": TEST_PREFIX + secrets.token_hex(3), "fanout": "f" + secrets.token_hex(3),
            "placement": "dbp" + secrets.token_hex(2), "rpc": "r" + secrets.token_hex(3),
            "failover": "dbf" + secrets.token_hex(2), "routing": "dbr" + secrets.token_hex(2),
            "build": "bld" + secrets.token_hex(2), "deploy": "dpl" + secrets.token_hex(2),
            "observe": TEST_PREFIX + secrets.token_hex(3), "scale": "scl" + secrets.token_hex(3),
            "idlehub": "idl" + secrets.token_hex(3)}[bench]


def _start(bench: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join("bench", f"{bench}.py"), *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": REPO})


_pids_with = procs.pids_with


def _agent_root(prefix: str) -> str:
    return f"/tmp/{prefix[:3]}-{prefix[3:]}"  # tests.agentproc.AgentProcess's rule


def leftovers(bench: str, prefix: str) -> list[str]:
    """Everything of this bench run that still exists."""
    roots, fleets, agents = [], [], []
    if bench == "fanout":
        roots = [f"/tmp/dcfan-{prefix}"]
    elif bench == "rpc":
        roots = [f"/tmp/dcrpc-{prefix}"]
    elif bench == "scale":
        roots = [f"/tmp/dcscale-{prefix}"]
    elif bench == "idlehub":
        roots = [f"/tmp/dcidle-{prefix}"]
    elif bench in ("lifecycle", "observe"):
        agents = [prefix]
    elif bench in ("placement", "routing", "build", "deploy"):
        fleets = [prefix]
        roots = [f"/tmp/dcbld-{prefix}"] if bench == "build" else []
    elif bench == "failover":
        fleets, agents = [prefix + "2"], [TEST_PREFIX + prefix[-6:]]
    roots += [_agent_root(a) for a in agents]
    left = [f"process {p} ({r})" for r in roots for p in _pids_with(r)]
    left += [f"dir {r}" for r in roots if os.path.exists(r)]
    left += [f"bridge {a}" for a in agents if os.path.exists(f"/sys/class/net/{a}")]
    nat = subprocess.run(["iptables", "-w", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    left += [f"chain {a}" for a in agents if f"DCF-{a}-" in nat]
    for f in fleets:
        left += [f"fleet {f}: {x}" for x in fleetmod.leftovers(f)]
    return left


def _wait(pred, timeout_s: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"bench exited {proc.returncode} before {what}:\n{out}\n{err[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def bench_run(request):
    """Start benches; each is killed and its leftovers removed at the end
    even when the test fails."""
    started: list[tuple[str, str, subprocess.Popen]] = []

    def start(bench: str, *args: str) -> tuple[str, subprocess.Popen]:
        prefix = _prefix(bench)
        proc = _start(bench, "--prefix", prefix, *args)
        started.append((bench, prefix, proc))
        return prefix, proc

    yield start
    for bench, prefix, proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if leftovers(bench, prefix):
            _force_cleanup(bench, prefix)


def _force_cleanup(bench: str, prefix: str) -> None:
    from tests.agentproc import cleanup_prefix
    for marker in (f"/tmp/dcfan-{prefix}", f"/tmp/dcrpc-{prefix}", f"/tmp/dcbld-{prefix}", f"/tmp/dcscale-{prefix}",
                   f"/tmp/dcidle-{prefix}"):
        for pid in _pids_with(marker):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(marker, ignore_errors=True)
    for agent in (prefix, TEST_PREFIX + prefix[-6:]):
        if agent.startswith(TEST_PREFIX):
            for pid in _pids_with(_agent_root(agent)):
                os.kill(pid, signal.SIGKILL)
            cleanup_prefix(agent, _agent_root(agent))
    for f in (prefix, prefix + "2"):
        fleetmod.down(f)


@pytest.mark.parametrize("bench", sorted(FIGURES))
def test_quick_form_runs_and_prints_its_figures(bench, bench_run):
    _need_root()
    prefix, proc = bench_run(bench, "--quick")
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bench/{bench}.py --quick ran over 240 s")
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{out}\n{err[-3000:]}"
    lines = out.splitlines()
    for pattern, count in FIGURES[bench]:
        matched = [ln for ln in lines if re.match(pattern, ln)]
        assert len(matched) == count, f"{pattern!r}: {len(matched)} of {count} lines in:\n{out}"
    assert leftovers(bench, prefix) == []


def _made_something(bench: str, prefix: str):
    """A condition true once the run is in the middle of its work."""
    if bench == "fanout":  # the hub and both hollow agents run
        return lambda: len(_pids_with(f"/tmp/dcfan-{prefix}/")) >= 3
    if bench == "scale":  # the hub and a hollow fleet process run
        return lambda: len(_pids_with(f"/tmp/dcscale-{prefix}/")) >= 2
    if bench == "idlehub":  # etcd and the hub run
        return lambda: len(_pids_with(f"/tmp/dcidle-{prefix}/")) >= 2
    if bench == "rpc":  # the hollow agent runs; the calls go on for minutes
        return lambda: bool(_pids_with(f"/tmp/dcrpc-{prefix}/"))
    if bench in ("lifecycle", "observe"):  # the agent has made a container
        root = _agent_root(prefix)
        return lambda: bool(glob.glob(f"{root}/lxc/*/config"))
    fleet = prefix if bench in ("placement", "routing", "build", "deploy") else prefix + "2"
    state = fleetmod.paths(fleet)["state"]
    if bench == "build":  # the hub keeps the log of each build it finished
        return lambda: bool(glob.glob(f"{state}/*/registry/builds/*.log"))
    return lambda: bool(glob.glob(f"{state}/host-*/lxc/*/config"))  # the fleet made a container


# long runs, so the signal comes mid-run; sizes as in --quick otherwise
LONG = {"lifecycle": ("--quick", "--cycles", "100000"), "fanout": ("--quick", "--rounds", "1000000"),
        "placement": ("--quick", "--creates", "100000"), "rpc": ("--calls", "10000000"),
        "failover": ("--quick", "--containers", "30"), "build": ("--quick", "--builds", "100000"),
        "routing": ("--quick", "--seconds", "100000"), "deploy": ("--quick", "--deploys", "100000"),
        "observe": ("--quick", "--containers", "30"),
        "scale": ("--quick", "--rounds", "1000000"), "idlehub": ("--quick", "--seconds", "100000")}


@pytest.mark.parametrize("bench,sig", [(b, signal.SIGTERM) for b in sorted(FIGURES)] + [("rpc", signal.SIGINT)])
def test_signal_mid_run_leaves_nothing(bench, sig, bench_run):
    _need_root()
    prefix, proc = bench_run(bench, *LONG[bench])
    _wait(_made_something(bench, prefix), 120, f"bench/{bench}.py to be mid-run", proc)
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bench/{bench}.py still running 120 s after {sig.name}")
    assert proc.returncode == 128 + sig, f"exit {proc.returncode}:\n{out}\n{err[-3000:]}"
    assert f"interrupted by {sig.name}; torn down" in err
    left = leftovers(bench, prefix)
    deadline = time.monotonic() + 10  # namespaces and zombies vanish asynchronously
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = leftovers(bench, prefix)
    assert left == []
