"""bench/lifecycle: containers per minute through the agent API versus raw
``lxc-*`` commands, in the same run, sequentially and with 4 concurrent
clients; then the agent's resident memory idle and with 50 running
containers.

One cycle = create -> start -> exec (hostname) -> stop (kill) -> destroy.
API: container_create, container_start, container_exec, container_stop
(timeout 0: straight to SIGKILL), container_destroy.  The agent starts three
processes per cycle (lxc-start, the container's log writer, lxc-attach, the last
exec'ed once from a sealed in-memory copy, without its own per-call copy and re-exec): the
stop is a write to the container's ``cgroup.kill`` and a wait on its
monitor's pidfd, the destroy removes the directory itself.  Raw: lxc-copy -s -B
overlay of a busybox base container (the same image layer), lxc-start -d,
lxc-attach -- hostname, lxc-stop -k, lxc-destroy.

Run as root:  python3 bench/lifecycle.py [--cycles 40] [--workers 4] [--idle-containers 50] [--repeat 2]
[--slice 2] [--quick] (``--quick``: 2 cycles, 2 workers, 2 idle containers, 1 run, for the test suite).
With the idle containers running it then prints the CPU of an exec and of a listing beside their
references (see step_costs).
Each run measures api and raw at 1 and at ``--workers`` workers, in alternating turns of ``--slice``
cycles per worker (api, raw, api, ...), so a load that changes during the run (other test runs on the
machine) weighs on both alike; with ``--repeat`` N > 1 a last line per worker count gives the median
ratio of the N runs and its spread.  Each side's line also gives the whole machine's busy CPU per
container in its turns (/proc/stat, so the kernel's share and its kworkers count) and the rate that
cost allows with every CPU busy: the ceiling of that side on this machine.
The agent is named by ``--prefix`` (``dct`` + 6 hex, as the tests' agents:
bridge PREFIX, root /tmp/dct-...); it, its containers and the raw ones are
gone when this exits, also after SIGTERM or SIGINT.
"""
from __future__ import annotations

import argparse
import glob
import os
import resource
import secrets
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gevent  # noqa: E402
import psutil  # noqa: E402
from gevent import subprocess  # noqa: E402

from bench import _common  # noqa: E402
from lxcwrap.errors import LxcError  # noqa: E402
from lxcwrap.lxc import Lxc  # noqa: E402
from tests.agentproc import TEST_PREFIX, AgentProcess  # noqa: E402


def api_cycle(client, tag: str) -> None:
    client.call("container_create", "busybox", tag)
    client.call("container_start", tag)
    out = client.call("container_exec", tag, ["hostname"])
    assert out["exit_code"] == 0, out
    client.call("container_stop", tag, 0.0)
    client.call("container_destroy", tag)


def _lxc(*argv: str) -> None:
    done = subprocess.run(list(argv), capture_output=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode()[-300:]}")


def raw_cycle(lxcpath: str, tag: str) -> None:
    _lxc("lxc-copy", "-P", lxcpath, "-n", "bench-base", "-N", tag, "-s", "-B", "overlay")
    _lxc("lxc-start", "-P", lxcpath, "-n", tag, "-d")
    _lxc("lxc-attach", "-P", lxcpath, "-n", tag, "--clear-env", "--", "hostname")
    _lxc("lxc-stop", "-P", lxcpath, "-n", tag, "-k")
    _lxc("lxc-destroy", "-P", lxcpath, "-n", tag)


def make_raw_base(agent: AgentProcess, lxcpath: str) -> None:
    """A stopped base container whose rootfs is the busybox image's layer."""
    manifest = agent.call("image_ls")[0]
    layer = os.path.join(agent.state_dir, "images", "layers", manifest["layers"][0])
    os.makedirs(os.path.join(lxcpath, "bench-base"), exist_ok=True)
    rootfs = os.path.join(lxcpath, "bench-base", "rootfs")
    _lxc("cp", "-a", layer, rootfs)
    with open(os.path.join(lxcpath, "bench-base", "config"), "w") as f:
        f.write(f"lxc.uts.name = bench-base\nlxc.rootfs.path = dir:{rootfs}\n"
                "lxc.apparmor.profile = unconfined\nlxc.init.cmd = /sbin/init\n"
                "lxc.mount.auto = proc:mixed sys:mixed cgroup:mixed\nlxc.autodev = 1\n"
                "lxc.tty.max = 0\nlxc.pty.max = 16\nlxc.console.path = none\n"
                f"lxc.net.0.type = veth\nlxc.net.0.link = {agent.bridge}\nlxc.net.0.flags = up\n")


def _turn(label: str, cycle, first: int, count: int, workers: int, run: int) -> tuple[float, float]:
    """Cycles ``first`` .. ``first + count - 1`` over ``workers`` greenlets;
    returns (the seconds they took, the machine's busy CPU seconds meanwhile)."""
    counter = iter(range(first, first + count))

    def worker(w: int) -> None:
        for i in counter:
            cycle(w, f"b{label[0]}{run}r{w}x{i}")

    started, busy = time.monotonic(), machine_busy_s()
    gevent.joinall([gevent.spawn(worker, w) for w in range(workers)], raise_error=True)
    return time.monotonic() - started, machine_busy_s() - busy


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy since boot, all CPUs
    summed (/proc/stat's first line: user, nice, system, irq, softirq,
    steal; not idle or iowait): it counts the kernel's work for a
    container (namespaces, mounts, veths, its teardown in kworkers) that
    no process's rusage shows."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (fields[0] + fields[1] + fields[2] + fields[5] + fields[6] + fields[7]) / os.sysconf("SC_CLK_TCK")


def measure_pair(api_cycle_fn, raw_cycle_fn, cycles: int, workers: int, slice_cycles: int,
                 run: int = 0) -> tuple[float, float]:
    """``cycles`` cycles each of api and raw over ``workers`` greenlets, in
    alternating turns of ``slice_cycles`` (api, raw, api, ...), so a load
    that changes during the run weighs on both alike; prints a line per
    side and returns (api, raw) containers/min."""
    spent = {"api": 0.0, "raw": 0.0}
    busy = {"api": 0.0, "raw": 0.0}
    done = 0
    while done < cycles:
        n = min(slice_cycles, cycles - done)
        for label, fn in (("api", api_cycle_fn), ("raw", raw_cycle_fn)):
            elapsed, cpu = _turn(label, fn, done, n, workers, run)
            spent[label] += elapsed
            busy[label] += cpu
        done += n
    rates = {}
    ncpu = os.cpu_count() or 1
    for label, elapsed in spent.items():
        rates[label] = cycles / elapsed * 60
        per = busy[label] / cycles
        print(f"  {label:4s} workers={workers}: {cycles} cycles in {elapsed:6.2f} s = {rates[label]:7.1f} containers/min;"
              f" machine CPU {per * 1000:6.1f} ms per container ({busy[label] / elapsed / ncpu:4.0%} of {ncpu} CPUs busy),"
              f" at most {ncpu * 60 / per if per else 0:7.1f}/min at that cost")
    return rates["api"], rates["raw"]


def _cpu_s(fn, calls: int) -> float:
    """CPU seconds (this process and its waited children) of ``calls`` calls of ``fn``."""
    before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    for _ in range(calls):
        fn()
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(a.ru_utime + a.ru_stime - b.ru_utime - b.ru_stime for a, b in zip(after, before))


def _hostname(lx: Lxc, name: str) -> None:
    out = lx.exec(name, ["hostname"], timeout_s=30)
    if out["exit_code"] != 0 or not out["stdout"].strip():
        raise RuntimeError(f"exec hostname in {name}: {out}")


def step_costs(lxcpath: str, name: str, running: int, calls: int, rounds: int = 4) -> None:
    """Two steps beside their reference, in alternating turns of ``calls``
    calls, ``rounds`` times: an exec from the sealed copy of lxc-attach
    (what the agent does) beside lxc-attach's own copy and re-exec, and
    the in-process listing beside lxc-ls (the supervisor lists every
    second).  CPU of this process and its children per call (the
    containers' monitors answering lxc-ls are not counted)."""
    sealed, plain = Lxc(lxcpath), Lxc(lxcpath)
    plain.sealed_attach = False
    tool = Lxc(lxcpath, direct=False)
    if sorted(r["name"] for r in sealed.ls()) != sorted(r["name"] for r in tool.ls()):
        raise RuntimeError("the in-process listing differs from lxc-ls")
    spent = {"sealed": 0.0, "plain": 0.0, "direct": 0.0, "lxc-ls": 0.0}
    for _ in range(rounds):
        for label, lx in (("plain", plain), ("sealed", sealed)):
            spent[label] += _cpu_s(lambda: _hostname(lx, name), calls)
        for label, lx in (("lxc-ls", tool), ("direct", sealed)):
            spent[label] += _cpu_s(lx.ls, calls)
    ms = {k: v / (calls * rounds) * 1000 for k, v in spent.items()}
    load = open("/proc/loadavg").read().split()[0]
    print(f"  exec CPU per call: sealed lxc-attach copy {ms['sealed']:.2f} ms, lxc-attach's own copy and re-exec "
          f"{ms['plain']:.2f} ms ({calls * rounds} each, alternating); loadavg {load}")
    print(f"  listing {running} running containers, CPU per listing: in process {ms['direct']:.2f} ms, "
          f"lxc-ls {ms['lxc-ls']:.2f} ms ({calls * rounds} each, alternating)")


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=40)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--idle-containers", type=int, default=50)
    p.add_argument("--repeat", type=int, default=2, help="runs of each measurement, api and raw side by side")
    p.add_argument("--slice", type=int, default=2, help="cycles per worker in each alternating api/raw turn")
    args = _common.parse(p, {"cycles": 2, "workers": 2, "idle_containers": 2, "repeat": 1},
                         TEST_PREFIX + secrets.token_hex(3))
    agent = AgentProcess(args.prefix)
    lxcpath = os.path.join(agent.root, "raw")
    try:
        agent.start()
        make_raw_base(agent, lxcpath)
        clients = [agent.client(120) for _ in range(args.workers)]
        print(f"bench/lifecycle: {args.cycles} cycles each, busybox, {os.cpu_count()} CPUs")
        ratios: dict[int, list[float]] = {}
        for run in range(args.repeat):  # api and raw side by side, run after run: the same load for both
            for workers in (1, args.workers):
                api, raw = measure_pair(lambda w, t: api_cycle(clients[w], t), lambda w, t: raw_cycle(lxcpath, t),
                                        args.cycles, workers, max(workers, args.slice * workers), run)
                ratios.setdefault(workers, []).append(api / raw)
                print(f"  ratio api/raw at {workers} worker(s): {api / raw:.2f}x")
        if args.repeat > 1:
            for workers, rs in ratios.items():
                print(f"  median ratio api/raw at {workers} worker(s) over {len(rs)} runs: "
                      f"{statistics.median(rs):.2f}x (from {min(rs):.2f}x to {max(rs):.2f}x); "
                      f"loadavg {open('/proc/loadavg').read().split()[0]}")
        print(f"agent RSS idle: {rss_mib(agent.proc.pid):.1f} MiB")
        c = clients[0]
        for i in range(args.idle_containers):
            c.call("container_create", "busybox", f"rss.{i}")
            c.call("container_start", f"rss.{i}")
        c.call("container_ls")
        c.call("hostinfo")
        print(f"agent RSS with {args.idle_containers} running containers: {rss_mib(agent.proc.pid):.1f} MiB")
        step_costs(agent.lxc_path, "rss.0", args.idle_containers, 2 if args.quick else 10)
        for cl in clients:
            cl.close()
        return 0
    finally:
        lxc = Lxc(lxcpath)  # lxcwrap's gevent seam: this script runs gevent
        for cfg in glob.glob(os.path.join(lxcpath, "*", "config")):
            try:
                lxc.stop(os.path.basename(os.path.dirname(cfg)), kill=True)
            except LxcError:
                pass
        agent.cleanup()


if __name__ == "__main__":
    _common.run(main)
