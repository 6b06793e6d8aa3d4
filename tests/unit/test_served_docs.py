"""Every served method documents what it returns and raises, and says no
untruths that were found before (container_inspect's dict, missing keys)."""
from __future__ import annotations

import inspect

import pytest

from agents.service import AgentService
from hub.service import HubService


def served(cls) -> list[tuple[str, str]]:
    return [(name, inspect.getdoc(fn) or "") for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if hasattr(fn, "__dc_exposed__")]


ALL = [(cls.__name__, name, doc) for cls in (AgentService, HubService) for name, doc in served(cls)]


def test_the_tables_are_not_empty():
    assert len(served(AgentService)) >= 20 and len(served(HubService)) >= 20


@pytest.mark.parametrize("owner, name, doc", ALL, ids=[f"{o}.{n}" for o, n, _ in ALL])
def test_every_served_method_says_what_it_returns(owner, name, doc):
    assert "Returns" in doc, f"{owner}.{name}: no Returns"
    assert "container_inspect's dict" not in doc, f"{owner}.{name} does not return container_inspect's dict"


@pytest.mark.parametrize("name", ["container_start", "container_stop", "container_inspect",
                                  "container_exec", "container_logs", "container_enter",
                                  "container_connection_add", "container_connection_rm"])
def test_forwarded_methods_name_what_they_add_and_unreachable(name):
    doc = inspect.getdoc(getattr(HubService, name))
    assert "Unreachable" in doc and "NoSuchContainer" in doc
    if name in ("container_start", "container_stop", "container_inspect", "container_connection_add"):
        assert "``host``" in doc


def test_known_keys_are_documented():
    assert "lxc_version" in inspect.getdoc(AgentService.ops_facts)
    rm = inspect.getdoc(AgentService.image_rm)
    assert all(k in rm for k in ("removed_layers", "freed_bytes"))
    beat = inspect.getdoc(HubService.host_heartbeat)
    assert all(k in beat for k in ("Raises", "InvalidArgument", "NoSuchHost", "Unauthorized"))
