"""bench/build: a one-RUN Dockerfile build through the hub, beside the same
RUN done by hand with ``lxc-attach``, and the bytes it ships beside the
image's size.

On a local fleet of 2 hosts (``--prefix`` names it; gone when this exits,
also after SIGTERM or SIGINT):

* build: ``dcctl build`` of ``FROM BASE`` + one RUN (a user added, a
  directory and a file written) end to end: context packed and uploaded,
  an idle host takes it, throwaway container, RUN, layer diff, commit, the
  image copied into the hub's registry; median of ``--builds`` runs;
* by hand: the same RUN with ``lxc-attach`` into a container of the base
  that already runs (create and start not counted), and the whole by-hand
  cycle (create, start, lxc-attach, destroy through the agent);
* bytes: what moved into the registry (``pushed_bytes``) and what the
  other host pulled, beside the new layer's and the image's size (the
  target: within 10% of the layer).

The base is busybox (``--quick``, the test suite's form) or the Debian
image (debootstrap minbase here, from the host's apt mirror, about a
minute, imported on host-1 as a rootfs tar and pushed to the registry); both hosts pull
the base before the builds.

Run as root:  python3 bench/build.py [--quick] [--builds N] [--prefix P]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import _common  # noqa: E402
from dcctl import build as dcbuild  # noqa: E402
from dcctl import wire  # noqa: E402
from images import ImageStore, build_debian  # noqa: E402
from ops import fleet as fleetmod  # noqa: E402

#: The one RUN: a user added (useradd on Debian; busybox has none, so a
#: passwd line), a directory and two files written, one of them unique to
#: the run (else the registry would already hold an earlier build's layer:
#: layers are content-addressed, and nothing would ship).
RUN = ("(useradd -u 1234 app 2>/dev/null || echo app:x:1234:1234::/srv/app:/bin/sh >> /etc/passwd); "
       "mkdir -p /srv/app && echo ok > /srv/app/index.html && cat /proc/sys/kernel/random/uuid > /srv/app/id "
       "&& id app")


def _build(hub, ctx: str, name: str) -> tuple[float, dict]:
    out = io.StringIO()
    started = time.perf_counter()
    dcbuild.run_build(hub, [ctx], [("t", name)], True, out=out, err=io.StringIO())
    elapsed = time.perf_counter() - started
    return elapsed, json.loads(out.getvalue().splitlines()[-1])


def _debian_into_registry(hub, host: dict, work: str, name: str) -> None:
    """debootstrap the Debian image here (the hosts' namespaces have no
    route to the mirror), import its rootfs tar on ``host`` (the file
    system is shared) and copy it into the registry."""
    store = ImageStore(os.path.join(work, "store"))
    manifest = build_debian(store, name)
    tar = store.export_layer(manifest["layers"][0])
    with wire.connect(host["ipc"], timeout_s=1800) as agent:
        agent.call("image_import", tar, name, {"format": "rootfs"})
    hub.call("image_push", host["name"], name, timeout_s=900)


def _by_hand(state, host: dict, base: str, tag: str) -> tuple[float, float]:
    """(seconds of the lxc-attach RUN alone, seconds of create + start +
    lxc-attach + destroy)."""
    name = f"bldhand{tag}"
    with wire.connect(host["ipc"], timeout_s=300) as agent:
        started = time.perf_counter()
        agent.call("container_create", base, name, {})
        agent.call("container_start", name)
        try:
            deadline = time.monotonic() + 60
            while agent.call("container_exec", name, ["true"])["exit_code"] != 0:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} never answered")
                time.sleep(0.1)
            t0 = time.perf_counter()
            done = subprocess.run(["ip", "netns", "exec", host["netns"], "lxc-attach", "-P", host["lxc_path"],
                                   "-n", name, "--clear-env", "--", "/bin/sh", "-c", RUN],
                                  capture_output=True, timeout=300)
            attach = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError(f"lxc-attach failed: {done.stderr[-500:]!r}")
        finally:
            agent.call("container_destroy", name, True)
        return attach, time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--builds", type=int, default=3)
    p.add_argument("--base", default="debian", help="debian (built with debootstrap) or busybox")
    args = _common.parse(p, {"builds": 1, "base": "busybox"}, "bld" + secrets.token_hex(2))
    prefix, base = args.prefix, args.base
    work = f"/tmp/dcbld-{prefix}"
    print(f"bench/build (base {base}, {args.builds} build(s))")
    try:
        state = fleetmod.up(prefix, 2, fleetmod.free_subnet(210))
        h1, h2 = state["hosts"]
        hub = wire.connect(state["hub"]["ipc"], timeout_s=600)
        try:
            os.makedirs(work, mode=0o700)
            if base != "busybox":
                _debian_into_registry(hub, h1, work, base)
            for h in (h1, h2):  # both hosts hold the base, as a fleet that ran it before
                with wire.connect(h["ipc"], timeout_s=900) as a:
                    a.call("image_pull", base)
            ctx = os.path.join(work, "ctx")
            os.mkdir(ctx)
            with open(os.path.join(ctx, "Dockerfile"), "w") as f:
                f.write(f"FROM {base}\nRUN {RUN}\n")
            times, last = [], None
            for i in range(args.builds):
                elapsed, last = _build(hub, ctx, f"bldbench{i}")
                times.append(elapsed)
            attach, cycle = _by_hand(state, h1, base, "0")
            print(f"  build, one RUN, end to end (upload, build, layer, registry): median {statistics.median(times):.2f} s "
                  f"over {len(times)} build(s)")
            print(f"  same RUN by hand: lxc-attach alone {attach:.2f} s; create+start+attach+destroy {cycle:.2f} s")
            print(f"  ratio build / by-hand cycle: {statistics.median(times) / cycle:.2f}x")
            other = h2 if last["host"] == h1["name"] else h1
            with wire.connect(other["ipc"], timeout_s=600) as a:
                pulled = a.call("image_pull", f"{last['name']}@{last['id']}")["bytes"]
            print(f"  shipped into the registry: {last['pushed_bytes']} bytes; pulled by the other host: {pulled} bytes; "
                  f"new layer {last['layer_bytes']} bytes; image {last['size_bytes']} bytes")
            ratio = last["pushed_bytes"] / max(1, last["layer_bytes"])
            print(f"  shipped / layer: {ratio:.3f} (target <= 1.10); shipped / image: "
                  f"{last['pushed_bytes'] / max(1, last['size_bytes']):.4f}")
        finally:
            hub.close()
    finally:
        fleetmod.down(prefix)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    _common.run(main)
