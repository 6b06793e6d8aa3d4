"""The hub's served method table is its RPC surface (dcctl, agents, tests and
the router call it): pinned here, method by method (arguments with their
types and defaults, access level, shielded, stream, env redaction), so that
moving code between the hub's modules cannot change it unnoticed.

After a deliberate change, write the new table with
``python3 -m tests.unit.test_hub_surface > tests/data/hub_methods.json``.
"""
from __future__ import annotations

import json
import os
import tempfile

from dcctl import wire
from hub.registry import Registry
from hub.service import HubService
from hub.store import HubStore

PINNED = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "hub_methods.json")


def served() -> dict:
    """The method table of a HubService, as plain data."""
    with tempfile.TemporaryDirectory() as d:
        store = HubStore(d)
        try:
            table = wire.method_table(HubService(store, Registry(os.path.join(d, "registry"))))
        finally:
            store.close()
    return {name: {"args": spec.inspect_args(), "access": spec.exposed.access, "shielded": spec.exposed.shielded,
                   "stream": spec.exposed.stream, "redact_env": spec.exposed.redact_env}
            for name, spec in sorted(table.items())}


def test_the_served_method_table_is_the_pinned_one():
    with open(PINNED) as f:
        pinned = json.load(f)
    now = served()
    assert sorted(now) == sorted(pinned), "methods added or gone"
    for name in pinned:
        assert now[name] == pinned[name], name


if __name__ == "__main__":
    print(json.dumps(served(), indent=1, sort_keys=True))
