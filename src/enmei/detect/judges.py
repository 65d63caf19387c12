"""``latency_charts``: control charts on each probe's latency (the ``latency`` default before round 6).

A unit's default ``latency`` detector is now the benchmarked scorer (:mod:`enmei.detect.latency`); the
charts remain for users who want them — a verdict within seconds after ``learning`` samples on a
stable latency, nominal false-alarm rates of normal theory — as a kind of their own. To make them a
unit's default, replace the default by name::

    [[units.web.detectors]]
    kind = "latency_charts"
    name = "latency"

``latency_charts`` is a :class:`~enmei.detect.pipeline.UnitJudge` restricted to its latency half, so
its verdicts are exactly the judge's (see that module for the statistics and the evidence); ``aging``
lives in :mod:`enmei.detect.aging_unit`:

- ``latency_charts`` — one EWMA + CUSUM chart on the log latency of each probe reporting ``metric``;
  ANOMALY verdicts (detector ``charts:METRIC``). ``reset()`` keeps the learned baseline (a restart
  does not change what normal latency is). ``limits()`` gives each learned chart's single-value limits.
- ``aging`` — the floor of each resource trending towards its limit without slowing down
  (:mod:`enmei.detect.aging`); AGING verdicts with the predicted time to exhaustion. ``reset()``
  starts the trends over (a restart frees what leaked).

Options (``[[units.NAME.detectors]]``), with the defaults of ``[units.NAME.detect]``::

    kind = "latency_charts"   metric = "latency_s"  learning = 300  alpha = 1e-6  side = "up"  hold_off_s = 300
                       repeat_s = 60   (per probe: each probe's chart has its own hold-off)
    kind = "aging"     see enmei.detect.aging_unit
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from enmei.detect.pipeline import UnitJudge
from enmei.detect.protocol import DetectorContext, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Observation

__all__ = ["LatencyChartsDetector", "LatencyChartsOptions"]


class LatencyChartsOptions(DetectorOptions):
    metric: str = "latency_s"
    learning: int = Field(default=300, ge=10)
    alpha: float = Field(default=1e-6, gt=0, lt=0.5)
    hold_off_s: float = Field(default=300.0, ge=0)
    side: Literal["up", "both"] = "up"
    repeat_s: float | None = Field(default=60.0, gt=0)


def _plain(x: Any) -> Any:
    """A value safe for JSON: non-finite floats become None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


class LatencyChartsDetector:
    """ANOMALY verdicts from latency control charts (one per probe reporting the metric)."""

    def __init__(self, unit: str, opts: LatencyChartsOptions) -> None:
        self.kind = "latency_charts"
        self.name = opts.detector_name
        self.judge = UnitJudge(unit, latency_metric=opts.metric, learning=opts.learning, alpha=opts.alpha,
                               hold_off_s=opts.hold_off_s, side=opts.side, repeat_s=opts.repeat_s)

    def feed(self, obs: Observation) -> Judgement:
        return Judgement(tuple(self.judge.feed(obs)))

    def reset(self) -> None:
        """Nothing to forget: the baseline of a service's latency outlives one instance of it."""

    def state(self) -> dict[str, Any]:
        n = self.judge.learning
        comps: dict[str, Any] = {}
        for component, det in self.judge.narrower.detectors.items():
            ev = det.evidence()
            comps[component] = {"learning": n, "score": _plain(ev.get("score")), "rule": ev.get("rule")}
        lim = self.judge.limits()
        for series, limit in lim.items():
            comps.setdefault(series.rsplit(".", 1)[0], {})["limits"] = limit.as_dict()
        for component, gate in self.judge.latency_gates.items():
            comps.setdefault(component, {})["armed"] = gate.armed
        armed = all(g.armed for g in self.judge.latency_gates.values())
        return {"metric": self.judge.latency_metric, "armed": armed, "side": self.judge.side, "components": comps}

    def limits(self) -> dict[str, Limit]:
        return self.judge.limits()


def _latency(ctx: DetectorContext, opts: LatencyChartsOptions) -> LatencyChartsDetector:
    return LatencyChartsDetector(ctx.unit, opts)


register("latency_charts", LatencyChartsOptions, _latency, example={"learning": 20, "hold_off_s": 0})
