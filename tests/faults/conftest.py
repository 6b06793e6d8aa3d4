"""Fault tests reuse the fleet fixtures (a module-scoped local fleet)."""
from tests.fleet.conftest import fleet, hub  # noqa: F401 (fixtures)

__all__ = ["fleet", "hub"]
