"""What every benchmark shares: a tiny form (``--quick``) that the test suite
runs, a ``--prefix`` naming everything the run makes, and a clean teardown
on SIGTERM or SIGINT (``timeout``, Ctrl-C).

A benchmark starts its hub, agents and fleets in their own sessions, so a
signal that kills the benchmark does not reach them; only the benchmark's
``finally`` blocks remove them, and a default SIGTERM skips those.
``run(main)`` turns the first SIGTERM/SIGINT into ``Interrupted`` (a
``SystemExit`` with status 128 + signal number) raised wherever the main
thread is, including inside a gevent greenlet (gevent re-raises it in the
main greenlet), so every ``finally`` runs; further signals are ignored until
the teardown is done.  Code that may be interrupted between starting a
process and recording it should also sweep by marker (``kill_marked``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Callable

from dcctl import procs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(SystemExit):
    """Raised in the main thread by the first SIGTERM/SIGINT; ``code`` is
    128 + the signal number, the status a shell reports for it."""

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum


def _on_signal(signum: int, frame) -> None:
    for sig in SIGNALS:  # the teardown itself must run to its end
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def install_signal_teardown() -> None:
    """Make SIGTERM and SIGINT raise ``Interrupted`` (see module doc)."""
    for sig in SIGNALS:
        signal.signal(sig, _on_signal)


def run(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main`` with the signal teardown installed and exit
    with its status (128 + N after signal N, once its teardown is done)."""
    install_signal_teardown()
    try:
        code = main()
    except Interrupted as exc:
        print(f"{os.path.basename(sys.argv[0])}: interrupted by {signal.Signals(exc.signum).name}; "
              "torn down", file=sys.stderr, flush=True)
        code = exc.code
    sys.exit(code)


def parse(parser: argparse.ArgumentParser, quick: dict, prefix: str,
          argv: list[str] | None = None) -> argparse.Namespace:
    """Add ``--quick`` (the tiny form: ``quick`` replaces the defaults of
    the options not given) and ``--prefix`` (default ``prefix``: names
    everything the run makes, so a test can look for leftovers), then parse.
    """
    parser.add_argument("--quick", action="store_true",
                        help="tiny form for the test suite: " + " ".join(f"--{k.replace('_', '-')} {v}"
                                                                         for k, v in quick.items()))
    parser.add_argument("--prefix", default=prefix, help="names everything this run makes (default: random)")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args


def spawn(argv: list[str], log: str) -> subprocess.Popen:
    """Start a helper process of this repository in its own session (so the
    benchmark's terminal signals do not reach it), output to ``log``."""
    with open(log, "ab") as f:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})


def marked_pids(marker: str) -> list[int]:
    """Pids of processes (not this one) with ``marker`` in one of their
    argv words, e.g. a run's temporary root."""
    return procs.pids_with(marker)


def kill_marked(marker: str, timeout_s: float = 10.0) -> list[int]:
    """SIGKILL every process group led by, and every process with,
    ``marker`` in its argv (see ``marked_pids``); wait until they are gone
    or ``timeout_s`` passes.  Returns the pids still there (normally [])."""
    for pid in marked_pids(marker):
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    deadline = time.monotonic() + timeout_s
    while True:
        left = [p for p in marked_pids(marker) if not _zombie(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def reap(procs: list[subprocess.Popen]) -> None:
    """SIGKILL each process's group and wait for it."""
    for p in procs:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for p in procs:
        p.wait()


def teardown(procs: list[subprocess.Popen], root: str) -> None:
    """End a run that started helper processes under the temporary dir
    ``root``: reap the recorded ones, kill any started but not yet recorded
    when a signal came (found by ``root`` in their argv), remove ``root``."""
    reap(procs)
    kill_marked(root)
    shutil.rmtree(root, ignore_errors=True)


def wait_for(pred, timeout_s: float, what: str, procs: list[subprocess.Popen] = ()) -> None:
    """Wait for ``pred()`` (polled every 0.2 s); fail at once when one of
    ``procs`` exited.  Raises: RuntimeError (timed out, or a process died)."""
    deadline = time.monotonic() + timeout_s
    while not pred():
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            raise RuntimeError(f"waiting for {what}: {' '.join(dead[0].args[:4])}... exited {dead[0].returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(median, p99) of ``samples`` (seconds), in milliseconds."""
    s = sorted(samples)
    return statistics.median(s) * 1000, s[min(len(s) - 1, int(len(s) * 0.99))] * 1000
