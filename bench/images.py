"""bench/images: OCI import and export throughput of an image, beside
``tar`` of the same tree in the same run.

* export: ``images.oci.export_image`` to an OCI archive, vs ``tar -cf`` of
  the image's unpacked tree;
* import: ``images.oci.import_image`` of that archive into a fresh store
  (blob digest, diff_id, hostile-archive checks, re-pack into the canonical
  layer, unpacked layer dir), vs ``tar -xf`` of tar's own archive.

MB/s are over the image's uncompressed layer bytes (1 MB = 10^6 bytes).
Target: each at least 0.5x tar.  The image is the Debian image
(debootstrap minbase, about a minute; ``--store DIR`` reuses a store holding
one), or with ``--quick`` the small busybox image (for the test suite).

Run as root:  python3 bench/images.py [--quick] [--store DIR] [--repeat N]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from images import ImageStore, build_debian, ensure_busybox  # noqa: E402
from images import oci  # noqa: E402


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _tar(*argv: str) -> None:
    subprocess.run(["tar", *argv], check=True, capture_output=True)


def measure(store: ImageStore, ref: str, work: str, repeat: int) -> dict:
    """Best of ``repeat`` runs of each step; returns seconds and bytes."""
    manifest = store.resolve(ref)
    size = sum(os.path.getsize(store.export_layer(d)) for d in manifest["layers"])
    tree = store.layer_dirs(manifest)[-1]  # the bottom layer: for a one-layer image, the tree
    best = {"export": 1e9, "import": 1e9, "tar_c": 1e9, "tar_x": 1e9}
    for i in range(repeat):
        archive = os.path.join(work, f"img-{i}.tar")
        best["export"] = min(best["export"], _timed(lambda: oci.export_image(store, ref, archive, "oci-archive")))
        target = ImageStore(os.path.join(work, f"store-{i}"))
        best["import"] = min(best["import"], _timed(lambda: oci.import_image(target, archive, "bench")))
        plain = os.path.join(work, f"tar-{i}.tar")
        best["tar_c"] = min(best["tar_c"], _timed(lambda: _tar("-cf", plain, "--numeric-owner", "-C", tree, ".")))
        dest = os.path.join(work, f"x-{i}")
        os.mkdir(dest)
        best["tar_x"] = min(best["tar_x"], _timed(lambda: _tar("-xpf", plain, "--numeric-owner", "-C", dest)))
        for path in (archive, plain):
            os.unlink(path)
        shutil.rmtree(dest)
        shutil.rmtree(target.root)
    return {"bytes": size, "layers": len(manifest["layers"]), **best}


def report(name: str, r: dict) -> list[str]:
    mb = r["bytes"] / 1e6
    rows = [f"image {name}: {mb:.1f} MB in {r['layers']} layer(s)"]
    for ours, theirs, label in (("export", "tar_c", "export (oci-archive)"), ("import", "tar_x", "import (oci-archive)")):
        a, b = mb / r[ours], mb / r[theirs]
        rows.append(f"{label:22s} {a:8.1f} MB/s   tar {b:8.1f} MB/s   ratio {a / b:.2f}x (target >= 0.5x)")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the small busybox image, one run (for tests)")
    p.add_argument("--store", help="an image store holding a 'debian' image to reuse")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    if os.geteuid() != 0:
        print("bench/images: run as root (layers keep owners and whiteouts)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="dcimg-", dir="/var/tmp")
    try:
        if args.store:
            store, ref = ImageStore(args.store), "debian"
        else:
            store = ImageStore(os.path.join(work, "src"))
            if args.quick:
                ensure_busybox(store)
                ref = "busybox"
            else:
                print("building the Debian image (debootstrap, about a minute)...", flush=True)
                build_debian(store, "debian")
                ref = "debian"
        load = os.getloadavg()[0]
        result = measure(store, ref, work, 1 if args.quick else args.repeat)
        for line in report(ref, result):
            print(line)
        print(f"load average {load:.1f} -> {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
              "(each figure is the best of the runs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
