"""Shared fixtures: real agents on real LXC, cleaned up by unique prefix."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.agentproc import AgentProcess, sweep


def pytest_sessionstart(session):
    if os.geteuid() == 0 and shutil.which("lxc-start"):
        sweep()


def pytest_sessionfinish(session, exitstatus):
    if os.geteuid() == 0 and shutil.which("lxc-start"):
        sweep()


def _need_lxc():
    if os.geteuid() != 0 or not shutil.which("lxc-start"):
        pytest.skip("needs root and LXC (run .ci/run, which installs them)")


@pytest.fixture
def agent_factory():
    """Start real agents; every one is cleaned up at the end of the test."""
    _need_lxc()
    made: list[AgentProcess] = []

    def make(**kw) -> AgentProcess:
        a = AgentProcess(**kw)
        made.append(a)
        return a.start()

    yield make
    for a in made:
        a.cleanup()


@pytest.fixture(scope="module")
def shared_agent():
    """One agent for a whole test module (tests must clean their containers)."""
    _need_lxc()
    a = AgentProcess()
    try:
        yield a.start()
    finally:
        a.cleanup()
