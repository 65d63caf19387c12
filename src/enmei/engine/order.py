"""Order between units: ``after`` and ``requires`` (the config checked that they name units and have no
cycle: ``enmei.config.model.Config``).

* **Start**: a unit starts once every unit it is ``after`` (or ``requires``) is *up* — RUNNING, which for
  a unit with a start-up condition means the condition held. An ``after``-only dependency that is not
  going to come up (not autostart, escalated, its start attempt over and failed) no longer holds the
  unit back: ``after`` orders, it does not require. A ``requires`` dependency holds it until it is up.
* **Stop**: in reverse — a unit is stopped only once every unit after it (or requiring it) has stopped.
* **Blame**: while a required unit is *down* (not RUNNING, being repaired, or failing its probes), the
  dependent's probe failures and exits are its dependency's, not its own: they are not judged, the
  journal says "waiting for db", and a dependent that exited meanwhile is started again once the
  dependency is back.

Pure over unit views: the engine asks, and acts on the answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from enmei.config.model import UnitBase
from enmei.model import Health, UnitState

__all__ = ["Order", "UnitLike"]


class UnitLike(Protocol):
    """What the order reads of a unit (``enmei.engine.unit.UnitRuntime`` has it)."""

    @property
    def state(self) -> UnitState: ...

    @property
    def health(self) -> Health: ...

    @property
    def busy(self) -> bool:
        """A remedy is running on it."""


#: states a unit is in when it is not going to come up by itself
_SETTLED_DOWN = frozenset({UnitState.STOPPED, UnitState.ESCALATED, UnitState.EXITED})


@dataclass(frozen=True)
class Order:
    """The dependency graph of one config's units."""

    after: Mapping[str, tuple[str, ...]]  # unit -> every unit it starts after (``after`` and ``requires``)
    requires: Mapping[str, tuple[str, ...]]

    @classmethod
    def of(cls, units: Mapping[str, UnitBase]) -> Order:
        return cls({n: tuple(dict.fromkeys([*u.after, *u.requires])) for n, u in units.items()},
                   {n: tuple(u.requires) for n, u in units.items()})

    def dependents(self, name: str) -> tuple[str, ...]:
        """The units that start after ``name`` (and so stop before it)."""
        return tuple(n for n, deps in self.after.items() if name in deps)

    def blocking_start(self, name: str, units: Mapping[str, UnitLike],
                       attempted: frozenset[str] | set[str]) -> list[str]:
        """The dependencies ``name`` still waits for before it may start; [] when it may start now.
        ``attempted``: the units whose first start attempt is over (so an ``after``-only one that is down
        and not repaired is not waited for any more)."""
        waits: list[str] = []
        required = self.requires.get(name, ())
        for dep in self.after.get(name, ()):
            unit = units.get(dep)
            if unit is None or unit.state is UnitState.RUNNING:
                continue
            if dep not in required and dep in attempted and unit.state in _SETTLED_DOWN and not unit.busy:
                continue  # after orders, it does not require: that one is not coming up
            waits.append(dep)
        return waits

    def down_required(self, name: str, units: Mapping[str, UnitLike]) -> list[str]:
        """The units ``name`` requires that are down now: not RUNNING, being repaired, or failing."""
        out: list[str] = []
        for dep in self.requires.get(name, ()):
            unit = units.get(dep)
            if unit is None:
                continue
            # Not ``busy``: a remedy that waits (a rejuvenation's quiet moment) leaves it up; one that
            # restarts it moves it out of RUNNING, and a failing one is FAILING.
            if unit.state is not UnitState.RUNNING or unit.health is Health.FAILING:
                out.append(dep)
        return out

    def stop_after(self, name: str) -> tuple[str, ...]:
        """The units that must be stopped before ``name`` is."""
        return self.dependents(name)

    def start_order(self) -> list[str]:
        """Every unit, each after the units it is after (config order among equals)."""
        done: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            for dep in self.after.get(n, ()):
                if dep in self.after:
                    visit(dep)
            done.append(n)

        for n in self.after:
            visit(n)
        return done
