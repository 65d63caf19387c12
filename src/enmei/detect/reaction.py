"""The reaction to an injection, judged: kind ``reaction`` (the keys injector's bound).

An injector only acts and observes: the keys injector types into the unit and reports how far a counter
moved (``reaction_wr_bytes``). This detector judges that value against a bound — the seed report's "this
guest writes to disk whenever someone types"::

    [[units.vm.detectors]]
    kind = "reaction"
    injector = "typing"          # the injector whose observations it judges
    metric = "reaction_wr_bytes" # default: reaction_<watch> of that injector
    max_reaction = 4096          # default: the injector's own max_reaction

A reaction above ``max_reaction`` gives one PROBE_FAILED verdict per run of out-of-bounds reactions
(the default policy restarts on it, as it did when the injector judged itself) and FAILING health;
the next reaction within bounds gives PROBE_RECOVERED and OK. Failed injections (``ok`` false: the
keys could not be sent) are left to the ``probe_failures`` detector. Every keys injector with a
``max_reaction`` gets one of these by default, named ``reaction:INJECTOR``; an entry for that injector
replaces it.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from enmei.detect.protocol import NOTHING, DetectorContext, HealthReport, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Health, Observation, Severity, Verdict, VerdictKind

__all__ = ["ReactionDetector", "ReactionOptions"]


class ReactionOptions(DetectorOptions):
    injector: str
    metric: str | None = None
    max_reaction: float | None = Field(default=None, ge=0)

    @property
    def detector_name(self) -> str:
        """``reaction:INJECTOR`` unless named: one per injector, the name its default has."""
        return self.name or f"reaction:{self.injector}"


class ReactionDetector:
    def __init__(self, unit: str, injector: str, metric: str, max_reaction: float, name: str) -> None:
        self.kind = "reaction"
        self.name = name
        self.unit = unit
        self.injector = injector
        self.metric = metric
        self.max_reaction = float(max_reaction)
        self.out_of_bounds = False
        self.last: float | None = None

    @property
    def source(self) -> str:
        return f"reaction:{self.injector}"

    def feed(self, obs: Observation) -> Judgement:
        if obs.probe != self.injector or not obs.ok:
            return NOTHING
        try:
            value = float(obs.values[self.metric])
        except (KeyError, TypeError, ValueError):
            return NOTHING
        if not math.isfinite(value):
            return NOTHING
        self.last = value
        bound = self.max_reaction
        if value > bound:
            msg = f"{self.metric} moved by {value:g} after injection {self.injector} (bound {bound:g})"
            health = (HealthReport(self.source, Health.FAILING, msg),)
            if self.out_of_bounds:
                return Judgement((), health)
            self.out_of_bounds = True
            return Judgement((Verdict(self.unit, self.source, VerdictKind.PROBE_FAILED, Severity.CRITICAL, obs.mono,
                                      f"injection {self.injector}: {msg}",
                                      {"probe": self.injector, "injector": self.injector, "metric": self.metric,
                                       "value": value, "limit": bound, "rule": f"{self.metric} > {bound:g}"}),),
                             health)
        ok = (HealthReport(self.source, Health.OK, f"injection {self.injector}: reaction within bounds"),)
        if not self.out_of_bounds:
            return Judgement((), ok)
        self.out_of_bounds = False
        return Judgement((Verdict(self.unit, self.source, VerdictKind.PROBE_RECOVERED, Severity.INFO, obs.mono,
                                  f"injection {self.injector}: reaction within bounds again ({value:g})",
                                  {"probe": self.injector, "metric": self.metric, "value": value,
                                   "limit": bound}),), ok)

    def reset(self) -> None:
        self.out_of_bounds = False
        self.last = None

    def state(self) -> dict[str, Any]:
        return {"injector": self.injector, "metric": self.metric, "max_reaction": self.max_reaction,
                "last": self.last, "out_of_bounds": self.out_of_bounds}

    def limits(self) -> dict[str, Limit]:
        return {}


def _build(ctx: DetectorContext, opts: ReactionOptions) -> ReactionDetector:
    inj = next((i for i in ctx.injectors if i.name == opts.injector), None)
    if inj is None:
        names = ", ".join(i.name for i in ctx.injectors) or "none"
        raise ValueError(f"the reaction detector names injector {opts.injector!r}, which this unit lacks "
                         f"(injectors: {names})")
    metric = opts.metric or f"reaction_{inj.watch or 'wr_bytes'}"
    bound = opts.max_reaction if opts.max_reaction is not None else inj.max_reaction
    if bound is None:
        raise ValueError(f"the reaction detector for {opts.injector!r} needs a max_reaction "
                         "(here or on the injector)")
    return ReactionDetector(ctx.unit, inj.name, metric, bound, opts.detector_name)


register("reaction", ReactionOptions, _build, example={"injector": "typing", "max_reaction": 100})
