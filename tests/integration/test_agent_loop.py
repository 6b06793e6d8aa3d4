"""The agent's loop keeps answering while it removes a large image
(PITFALLS: a blocking call stops heartbeats): ``image_rm`` walks the layer
tree (to count freed bytes) and removes it in the thread pool."""
from __future__ import annotations

import os
import tarfile
import time

import gevent
import pytest

from dcctl import errors

pytestmark = pytest.mark.lxc

DIRS = 2000  # removing this many directories takes seconds on this VM
PING_BOUND_SECONDS = 1.0  # generous: a free loop answers in tens of milliseconds


def test_image_rm_of_a_large_tree_never_stalls_the_agent(agent_factory, tmp_path):
    agent = agent_factory()
    tar = tmp_path / "many.tar"
    with tarfile.open(tar, "w") as tf:
        for d in range(DIRS // 100):
            for name in [f"d{d}"] + [f"d{d}/e{i}" for i in range(99)]:
                entry = tarfile.TarInfo(name)
                entry.type, entry.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(entry)
    with agent.client(300) as c:
        layer = c.call("image_import", str(tar), "many")["layers"][0]
    layer_dir = os.path.join(agent.state_dir, "images", "layers", layer)
    assert os.path.isdir(layer_dir)
    with agent.client(120) as slow, agent.client(10) as fast:
        job = gevent.spawn(slow.call, "image_rm", "many")
        worst, pings = 0.0, 0
        while not job.ready():
            started = time.monotonic()
            fast.call("_zerorpc_ping")
            fast.call("container_ls")
            worst = max(worst, time.monotonic() - started)
            pings += 1
            gevent.sleep(0.05)
        removed = job.get()
    assert removed["removed_layers"] == [layer] and removed["freed_bytes"] > 0
    assert not os.path.exists(layer_dir)
    with pytest.raises(errors.ImageNotFound):
        agent.call("image_rm", "many")
    print(f"\nworst ping+listing round trip during image_rm of {DIRS} directories: {worst * 1000:.0f} ms "
          f"({pings} pings)")
    assert worst < PING_BOUND_SECONDS
    assert pings >= 3, "the removal ended before the loop could be watched"
