"""The hub's state behind one store interface.

``HubStore`` is the embedded SQLite implementation (hub/store/sqlite.py),
the default for a single hub.  Other implementations (etcd, for several
hubs) live beside it in this package and keep the same methods.
"""
from hub.store.base import Store
from hub.store.sqlite import HubStore

__all__ = ["HubStore", "Store"]
