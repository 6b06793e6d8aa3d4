"""Fixtures of the single-host integration tests (the shared agent itself
is tests/conftest.py's)."""
import pytest


@pytest.fixture
def agent(shared_agent):
    """The session's shared agent; every container a test made is destroyed
    after it, even when the test fails."""
    before = {c["name"] for c in shared_agent.call("container_ls")}
    yield shared_agent
    for c in shared_agent.call("container_ls"):
        if c["name"] not in before:
            shared_agent.call("container_destroy", c["name"], True)
