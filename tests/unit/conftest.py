"""Shared unit-test fixtures."""
import os

import pytest


@pytest.fixture
def no_fd_leak():
    """Fail a test that leaks file descriptors."""
    before = len(os.listdir("/proc/self/fd"))
    yield
    assert len(os.listdir("/proc/self/fd")) <= before, "test leaked file descriptors"
