"""The stock ``zerorpc`` 0.6.3 CLI, for proving that our servers serve it.

That CLI crashes on Python 3.10+ (``collections.Iterator``), so it runs from
a Python 3.9 venv that this module creates once and then reuses:

- venv: ``$DCF_ZERORPC_VENV``, else /var/cache/dcfleet/zerorpc39 (else
  ~/.cache/dcfleet/zerorpc39 when /var/cache is not writable);
- interpreter: ``$DCF_PYTHON39``, else pyenv's 3.9.x (``pyenv root`` or
  ~/.pyenv), else ``python3.9`` on PATH.

``stock_zerorpc(endpoint, *args)`` runs ``zerorpc ENDPOINT ARGS...`` and
returns the CompletedProcess (text mode).  ``Python39Missing`` is raised when
no 3.9 interpreter exists (tests skip on it).
"""
from __future__ import annotations

import fcntl
import glob
import os
import shutil
import subprocess
import time
from pathlib import Path

from gevent import subprocess as gsubprocess

ZERORPC_REQUIREMENT = "zerorpc==0.6.3"
DEFAULT_VENV_DIR = "/var/cache/dcfleet/zerorpc39"
FALLBACK_VENV_DIR = "~/.cache/dcfleet/zerorpc39"
VENV_ENV = "DCF_ZERORPC_VENV"
PYTHON_ENV = "DCF_PYTHON39"
_MARKER = ".dcfleet-ready"
BUILD_TIMEOUT_SECONDS = 900.0

#: Seconds the last ensure_zerorpc39() spent building (0.0 when reused).
last_build_seconds = 0.0


class Python39Missing(RuntimeError):
    """No Python 3.9 interpreter was found to build the venv with."""


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name  # .../versions/3.9.18/bin/python
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def find_python39() -> str | None:
    """Path of a Python 3.9 interpreter, or None (see the module doc)."""
    explicit = os.environ.get(PYTHON_ENV)
    if explicit:
        return explicit
    roots = []
    try:
        roots.append(subprocess.run(["pyenv", "root"], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    roots.append(os.path.expanduser("~/.pyenv"))
    for root in filter(None, roots):
        found = [p for p in glob.glob(os.path.join(root, "versions", "3.9*", "bin", "python3.9"))
                 if os.access(p, os.X_OK)]
        if found:
            return max(found, key=_version_key)
    on_path = shutil.which("python3.9")
    if on_path and subprocess.run([on_path, "-c", "pass"], capture_output=True).returncode == 0:
        return on_path  # a pyenv shim without 3.9 selected fails the check
    return None


def venv_dir() -> Path:
    """Where the venv lives (created on first use)."""
    explicit = os.environ.get(VENV_ENV)
    if explicit:
        return Path(explicit)
    parent = Path(DEFAULT_VENV_DIR).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if os.access(parent, os.W_OK):
            return Path(DEFAULT_VENV_DIR)
    except OSError:
        pass
    return Path(os.path.expanduser(FALLBACK_VENV_DIR))


def _ready(venv: Path) -> bool:
    marker = venv / _MARKER
    return (marker.is_file() and marker.read_text().strip() == ZERORPC_REQUIREMENT
            and os.access(venv / "bin" / "zerorpc", os.X_OK))


def ensure_zerorpc39() -> str:
    """Create (or reuse) the venv; return the path of its ``zerorpc``.

    Raises:
        Python39Missing: no 3.9 interpreter here.
        RuntimeError: venv creation or pip install failed (output included).
    """
    global last_build_seconds
    venv = venv_dir()
    if _ready(venv):
        last_build_seconds = 0.0
        return str(venv / "bin" / "zerorpc")
    python = find_python39()
    if python is None:
        raise Python39Missing("no Python 3.9 found (pyenv versions/3.9*, python3.9 on PATH, "
                              f"or ${PYTHON_ENV}); the stock zerorpc CLI needs Python <= 3.9")
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another test run may be building it
        if _ready(venv):
            return str(venv / "bin" / "zerorpc")
        started = time.monotonic()
        shutil.rmtree(venv, ignore_errors=True)
        steps = [[python, "-m", "venv", str(venv)],
                 # --prefer-binary: gevent's newest release has no cp39 wheel
                 # and would build from source for minutes.
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet",
                  "--prefer-binary", ZERORPC_REQUIREMENT]]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=BUILD_TIMEOUT_SECONDS,
                                  env=_clean_env())
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                                   f"{done.stdout[-2000:]}{done.stderr[-4000:]}")
        (venv / _MARKER).write_text(ZERORPC_REQUIREMENT + "\n")
        last_build_seconds = time.monotonic() - started
    return str(venv / "bin" / "zerorpc")


def _clean_env() -> dict[str, str]:
    """The environment without our 3.11 paths, for the 3.9 interpreter."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYENV_VERSION")}


def stock_zerorpc(endpoint: str, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess:
    """Run the stock ``zerorpc ENDPOINT ARGS...``; returns the CompletedProcess
    (stdout/stderr as text; the CLI prints 'connecting to ...' on stderr).

    Creates the venv on first use (see ensure_zerorpc39)."""
    exe = ensure_zerorpc39()
    # gevent's run yields to the hub while waiting, so an in-process gevent
    # server keeps answering; it behaves like subprocess.run otherwise.
    return gsubprocess.run([exe, endpoint, *args], capture_output=True, text=True,
                          timeout=timeout_s, env=_clean_env())


__all__ = ["Python39Missing", "ensure_zerorpc39", "find_python39", "stock_zerorpc", "venv_dir"]
