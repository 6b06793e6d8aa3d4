"""dcctl.procs reads the process table: a real child process found by a
marker in its argv, its words, liveness, and gone once it is reaped."""
import subprocess
import sys
import uuid

from dcctl import procs
from tests.waiting import wait_for


def test_a_child_is_found_by_its_marker_and_gone_after_it_ends():
    marker = f"dcprocs-{uuid.uuid4().hex}"
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", marker])
    try:  # until the child has exec'd, its argv is still the parent's
        wait_for(lambda: procs.pids_with(marker) == [child.pid], 20, "the child to show its marker")
        assert procs.cmdline(child.pid)[-1] == marker.encode()
        assert procs.alive(child.pid)
        assert (child.pid, procs.cmdline(child.pid)) in list(procs.processes())
    finally:
        child.kill()
        child.wait()
    assert procs.pids_with(marker) == []
    assert procs.cmdline(child.pid) == [] and not procs.alive(child.pid)
