"""The remedy registry: ``REMEDIES`` maps a decision's ``action`` to its remedy class.

Its own module so that a mechanism in a module of its own can ``register`` itself without importing the
``enmei.remedy`` package it is part of (which imports it, to have it registered): no import cycle.
"""

from __future__ import annotations

from enmei.remedy.base import Remedy

__all__ = ["REMEDIES", "register", "unregister"]

REMEDIES: dict[str, type[Remedy]] = {}


def register(remedy: type[Remedy]) -> type[Remedy]:
    """Add a remedy class under its ``name`` (usable as a class decorator).

    Raises ``ValueError`` if the name is taken by another remedy class:
    a second registration never silently replaces the first. ``unregister`` undoes one (for tests).
    """
    name = getattr(remedy, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"remedy {remedy.__name__}: set a class attribute 'name'")
    old = REMEDIES.get(name)
    if old is not None and old is not remedy:
        raise ValueError(f"remedy {name!r} is already registered ({old.__module__}.{old.__qualname__})")
    REMEDIES[name] = remedy
    return remedy


def unregister(name: str) -> None:
    """Remove the remedy registered under ``name`` (unknown names are ignored)."""
    REMEDIES.pop(name, None)
