"""The built-in policy: the minimum every unit gets when no policy file is given.

Rules (each decision names its rule):

* ``exit-restart``: a unit exited on its own -> restart after the backoff delay, while budget is left.
* ``probe-restart``: a probe failed N times in a row -> restart, while budget is left.
* ``retry-after-failure``: a start/restart/escalation failed and the unit is down -> restart with
  backoff, or escalate.
* ``budget-escalate``: no budget left -> escalate (alert, then slow retries). Never a silent give-up.
* ``panic-phase-reboot``: a guest kernel panicked -> phase-based reboot (backends with ``phase_reboot``);
  ``phase-then-cold``: that failed -> cold reboot; ``cold-then-restart``: that failed too -> restart.
* ``aging-rejuvenate``: a resource trends to exhaustion -> rejuvenate within the time left.
* ``scheduled-rejuvenate``: ``rejuvenate.every_s`` has passed since the unit started -> rejuvenate.
"""

from __future__ import annotations

from enmei.model import (
    Decision,
    Event,
    Outcome,
    RemedyState,
    Tick,
    UnitEvent,
    UnitEventKind,
    Verdict,
    VerdictKind,
    describe_exit,
)
from enmei.policy.base import UnitView, View

__all__ = ["BuiltinPolicy"]

_RETRY_AFTER = frozenset({"start", "restart", "escalate", "rejuvenate"})


class BuiltinPolicy:
    version = "builtin-1"

    def decide(self, event: Event, view: View) -> list[Decision]:
        if isinstance(event, Tick):
            return self._tick(view)
        unit = view.units.get(event.unit)
        if unit is None or unit.remedy is not None:
            return []
        if isinstance(event, UnitEvent):
            if event.kind in (UnitEventKind.EXITED, UnitEventKind.START_FAILED):
                return [self._restart_or_escalate(unit, "exit-restart", _exit_reason(event))]
            return []
        if isinstance(event, Verdict):
            if event.kind is VerdictKind.PROBE_FAILED:
                return [self._restart_or_escalate(unit, "probe-restart", event.summary)]
            if event.kind is VerdictKind.PANIC:
                if "phase_reboot" in unit.capabilities:  # the capability the phase_reboot remedy needs
                    return [Decision("phase_reboot", unit.name, f"guest panic: {event.summary}",
                                     policy=self.version, rule="panic-phase-reboot")]
                return [self._restart_or_escalate(unit, "panic-restart", event.summary)]
            if event.kind is VerdictKind.AGING and unit.alive:
                left = float(event.evidence.get("exhaust_in_s", unit.rejuvenate_window_s * 4))
                window = max(0.0, min(unit.rejuvenate_window_s, left / 4))
                return [Decision("rejuvenate", unit.name, f"aging: {event.summary}", {"window_s": window},
                                 policy=self.version, rule="aging-rejuvenate")]
            return []
        if isinstance(event, Outcome) and event.state is not RemedyState.SUCCEEDED and event.action == "phase_reboot":
            return [Decision("cold_reboot", unit.name, f"phase reboot {event.state}: {event.detail}",
                             policy=self.version, rule="phase-then-cold")]
        if isinstance(event, Outcome) and event.state is not RemedyState.SUCCEEDED and event.action == "cold_reboot":
            return [self._restart_or_escalate(unit, "cold-then-restart", f"cold reboot {event.state}: {event.detail}")]
        if (isinstance(event, Outcome) and event.state is not RemedyState.SUCCEEDED
                and event.action in _RETRY_AFTER and not unit.alive):
            return [self._restart_or_escalate(unit, "retry-after-failure",
                                              f"{event.action} {event.state}: {event.detail}")]
        return []

    def _restart_or_escalate(self, unit: UnitView, rule: str, reason: str) -> Decision:
        if unit.budget_left <= 0:
            why = (f"restart budget spent ({unit.restarts_in_window} restarts in {unit.window_s:g}s); "
                   f"last: {reason}")
            return Decision("escalate", unit.name, why, {"retry_in_s": unit.escalate_retry_s, "why": why},
                            policy=self.version, rule="budget-escalate")
        return Decision("restart", unit.name, reason, {"delay_s": unit.next_delay_s}, policy=self.version, rule=rule)

    def _tick(self, view: View) -> list[Decision]:
        out: list[Decision] = []
        for unit in view.units.values():
            every = unit.rejuvenate_every_s
            if every and unit.alive and unit.remedy is None and unit.uptime_s is not None and unit.uptime_s >= every:
                out.append(Decision("rejuvenate", unit.name, f"scheduled: up for {unit.uptime_s:.0f}s",
                                    {}, policy=self.version, rule="scheduled-rejuvenate"))
        return out


def _exit_reason(event: UnitEvent) -> str:
    return f"{describe_exit(event.detail)} after {event.detail.get('uptime_s', '?')}s"
