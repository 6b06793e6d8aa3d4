"""bench/images runs (its --quick form, on the busybox image) and prints
import and export figures beside tar's."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.agentproc import REPO


@pytest.mark.skipif(os.geteuid() != 0, reason="the bench needs root")
def test_bench_images_quick_prints_both_figures_beside_tar():
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "images.py"), "--quick"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for step in ("export", "import"):
        line = next(x for x in done.stdout.splitlines() if x.startswith(step))
        ours, tar, ratio = re.search(r"([\d.]+) MB/s\s+tar\s+([\d.]+) MB/s\s+ratio ([\d.]+)x", line).groups()
        assert float(ours) > 0 and float(tar) > 0 and float(ratio) > 0
