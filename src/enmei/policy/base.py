"""The policy seam: events and a read-only view of the units in, decisions out.

A policy is pure: ``decide(event, view)`` looks only at its arguments (the view carries the time), does
no I/O and changes nothing; the engine journals and executes what it returns. ``version`` identifies
the policy's content (a hash for a policy file) and is written into every decision record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from enmei.model import Decision, Event, Health, UnitState

__all__ = ["Policy", "ReloadablePolicy", "UnitView", "View"]


@dataclass(frozen=True)
class UnitView:
    """What a policy may know about one unit."""

    name: str
    backend: str
    state: UnitState
    health: Health
    alive: bool
    uptime_s: float | None  # since the current instance started; None when not running
    remedy: str | None  # the action of the remedy running now, if any
    restarts_in_window: int
    budget: int
    window_s: float
    next_delay_s: float  # backoff before the next restart, from the restart history
    escalate_retry_s: float
    rejuvenate_every_s: float | None
    rejuvenate_window_s: float
    stop_timeout_s: float
    capabilities: frozenset[str] = frozenset()
    # the shipped policy's circuit breaker (escalate.breaker_*), and the last reset (monotonic; None: never)
    breaker_failures: int = 4
    breaker_within_s: float = 120.0
    breaker_open_s: float = 300.0
    last_reset: float | None = None
    reset_after_s: float = 10.0

    @property
    def budget_left(self) -> int:
        return max(0, self.budget - self.restarts_in_window)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "backend": self.backend, "state": str(self.state), "health": str(self.health),
            "alive": self.alive, "uptime_s": self.uptime_s, "remedy": self.remedy,
            "restarts_in_window": self.restarts_in_window, "budget": self.budget,
            "budget_left": self.budget_left, "window_s": self.window_s, "next_delay_s": self.next_delay_s,
            "escalate_retry_s": self.escalate_retry_s, "rejuvenate_every_s": self.rejuvenate_every_s,
            "rejuvenate_window_s": self.rejuvenate_window_s, "stop_timeout_s": self.stop_timeout_s,
            "capabilities": sorted(self.capabilities), "breaker_failures": self.breaker_failures,
            "breaker_within_s": self.breaker_within_s, "breaker_open_s": self.breaker_open_s,
            "last_reset": self.last_reset, "reset_after_s": self.reset_after_s,
        }


@dataclass(frozen=True)
class View:
    """The supervisor as a policy sees it at ``now`` (monotonic seconds)."""

    now: float
    units: Mapping[str, UnitView] = field(default_factory=dict)


class Policy(Protocol):
    version: str

    def decide(self, event: Event, view: View) -> list[Decision]: ...


@runtime_checkable
class ReloadablePolicy(Policy, Protocol):
    """A policy loaded from a file (``enmei.policy.manager.PolicyManager``): it can reload itself, and it
    reports what the journal should hold as ``policy`` records instead of raising.

    ``check_reload()`` is called on every tick: the notices of a reload (``reloaded``, ``rejected``), usually
    none. ``drain_notices()`` returns the other notices not yet taken (``loaded``, ``error``), to be called
    after every ``decide``. ``close()`` ends whatever the policy runs in (its sandbox process).
    """

    def check_reload(self) -> list[dict[str, Any]]: ...

    def drain_notices(self) -> list[dict[str, Any]]: ...

    def close(self) -> None: ...
