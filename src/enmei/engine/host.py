"""The host as a target of decisions: what a host-scope remedy acts through, and what the engine keeps
about it (the remedy running on it, its restart budget).

The engine keeps one ``HostRuntime``. Like a unit it runs one remedy at a time, and the remedies that
count as restarts are counted against its own budget (``HOST_BUDGET`` unless the engine is given
another): a policy asking for a host remedy with that budget spent is refused on the record and alerted,
never carried out in a loop. Unlike a unit it has no lifecycle states: its remedies act on backends and
units, which keep theirs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from enmei.clock import Clock
from enmei.model import Severity
from enmei.policy.actions import HOST
from enmei.remedy.base import UnitControl
from enmei.remedy.budget import RestartBudget
from enmei.visor.base import Backend

if TYPE_CHECKING:
    from enmei.engine.remedies import RemedyRun

__all__ = ["HOST_BUDGET", "HostRuntime"]

#: three host restarts (replacing a hypervisor, re-executing enmei) an hour, by default
HOST_BUDGET = RestartBudget(backoff_first_s=0.0, backoff_factor=1.0, backoff_max_s=0.0, budget=3, window_s=3600.0)

AlertFn = Callable[[str | None, str, Severity, Mapping[str, Any]], None]


class HostRuntime:
    """Implements ``enmei.remedy.HostControl`` over the engine's backends and units."""

    def __init__(self, clock: Clock, *, backends: Mapping[str, Backend], units: Mapping[str, UnitControl],
                 alert: AlertFn, budget: RestartBudget = HOST_BUDGET) -> None:
        self.name = HOST
        self.clock = clock
        self._backends = backends
        self._units = units
        self._alert = alert
        self.budget = budget
        self.restarts: deque[float] = deque(maxlen=max(64, budget.budget * 4))
        self.remedy: RemedyRun | None = None
        self.state = "host"  # for the outcome record, where a unit has its lifecycle state

    @property
    def backends(self) -> Mapping[str, Backend]:
        return self._backends

    @property
    def units(self) -> Mapping[str, UnitControl]:
        return self._units

    def alert(self, message: str, severity: Severity, data: Mapping[str, Any] | None = None) -> None:
        self._alert(None, message, severity, data or {})
