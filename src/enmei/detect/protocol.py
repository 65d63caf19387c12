"""The unit-detector seam: what the engine feeds every observation of a unit to, and what comes back.

A *unit detector* watches one unit. The engine hands it each :class:`~enmei.model.Observation` of the
unit (numbers in ``values``, text in ``lines``) and gets back a :class:`Judgement`: the verdicts it
reached and, for detectors that speak for the unit's health, :class:`HealthReport` s. It never acts:
the engine journals the verdicts, passes them to the policy and applies the health.

::

    det = registry.build(context, options)       # one per [[units.NAME.detectors]] entry (or default)
    judgement = det.feed(obs)                     # usually Judgement() — nothing to say
    det.reset()                                   # a new instance of the service runs now
    det.state()                                   # JSON-ready summary, for the web and the report
    det.limits()                                  # {"http.latency_s": Limit(...)}: control limits now

Promises every unit detector keeps (``tests/unit/detect/test_detect_contract.py`` checks them on each
registered kind):

- ``feed`` never raises for what it is fed: an observation of another probe, with missing, NaN or
  non-numeric values, no lines or odd text gives a judgement (usually empty), never an exception.
- Deterministic: no clock (time is ``obs.mono``), no randomness, no I/O.
- Bounded: memory does not grow with the length of the stream.
- ``state()`` and ``limits()`` are plain values (``json.dumps`` works; no NaN) and change nothing.
- ``reset()`` forgets what belongs to the old instance (streaks, trends); what it keeps (a latency
  baseline) it says in its docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from enmei.model import Health, Observation, Verdict

__all__ = ["NOTHING", "DetectorContext", "HealthReport", "InjectorInfo", "Judgement", "Limit", "ProbeInfo",
           "UnitDetector"]


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What a detector says of the unit's health, as seen from one ``source`` (a probe, an injector).

    The unit's health is combined from the newest report of every source (see
    :class:`~enmei.detect.unitset.UnitDetectors`): FAILING or DEGRADED from any source at once, OK only
    when every source's newest report is OK.
    """

    source: str
    health: Health
    reason: str


@dataclass(frozen=True, slots=True)
class Judgement:
    """What one observation made a detector conclude: verdicts, and health reports."""

    verdicts: tuple[Verdict, ...] = ()
    health: tuple[HealthReport, ...] = ()


NOTHING = Judgement()


@dataclass(frozen=True, slots=True)
class Limit:
    """A control chart's centre line and single-value limits now, in the metric's own unit."""

    centre: float
    lower: float
    upper: float

    def as_dict(self) -> dict[str, float]:
        return {"centre": self.centre, "lower": self.lower, "upper": self.upper}


@dataclass(frozen=True, slots=True)
class ProbeInfo:
    """A probe of the unit, as a detector needs to know it (``fail_after`` for active probes only)."""

    name: str
    kind: str
    fail_after: int | None = None
    role: str = "liveness"  # "readiness": its failures degrade the unit's health, never a verdict


@dataclass(frozen=True, slots=True)
class InjectorInfo:
    """An injector of the unit: what its observations carry (``watch``) and the configured bound."""

    name: str
    kind: str
    watch: str | None = None
    max_reaction: float | None = None


@dataclass(frozen=True, slots=True)
class DetectorContext:
    """What a detector factory learns about its unit (plain values: no live objects, no config models)."""

    unit: str
    probes: tuple[ProbeInfo, ...] = ()
    injectors: tuple[InjectorInfo, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class UnitDetector(Protocol):
    """One detector of one unit (see the module docstring for the promises)."""

    kind: str  # the registered kind it was built from
    name: str  # unique within the unit

    def feed(self, obs: Observation) -> Judgement: ...

    def reset(self) -> None: ...

    def state(self) -> dict[str, Any]: ...

    def limits(self) -> dict[str, Limit]: ...
