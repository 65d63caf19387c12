"""The registry of probe kinds: each probe module registers the config model it builds probes from.

::

    register(ExecProbeConfig, lambda site, cfg: ExecProbe(site.unit, site.name, cfg, site.clock))

``make_probes`` (``enmei.monitor``) looks each ``[[units.NAME.probes]]`` entry's model up here; adding a
probe is a module that registers itself (and its model in the config's ``ProbeConfig`` union).
``register`` refuses a model that is already registered (``ValueError``): two modules never silently
replace each other's probe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from enmei.clock import Clock
from enmei.config.model import UnitBase
from enmei.monitor.base import Probe
from enmei.visor.base import Backend

__all__ = ["ProbeSite", "make", "register", "registered"]


@dataclass(frozen=True)
class ProbeSite:
    """Where a probe is made: its unit (name and config), its name, the unit's backend, the clock."""

    unit: str
    name: str
    spec: UnitBase
    backend: Backend
    clock: Clock


ProbeFactory = Callable[[ProbeSite, Any], Probe]
_FACTORIES: dict[type[BaseModel], ProbeFactory] = {}


def register(model: type[BaseModel], factory: ProbeFactory) -> None:
    """Build probes of config ``model`` with ``factory(site, cfg)``. ``ValueError`` if already registered."""
    if model in _FACTORIES:
        raise ValueError(f"a probe for {model.__name__} is already registered")
    _FACTORIES[model] = factory


def registered() -> tuple[type[BaseModel], ...]:
    return tuple(_FACTORIES)


def make(site: ProbeSite, cfg: BaseModel) -> Probe:
    """The probe ``cfg`` describes. ``LookupError`` for a config model no module registered."""
    factory = _FACTORIES.get(type(cfg))
    if factory is None:
        raise LookupError(f"no probe registered for {type(cfg).__name__}")
    return factory(site, cfg)
