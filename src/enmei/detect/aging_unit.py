"""The ``aging`` unit detector: one :class:`~enmei.detect.aging.TrendDetector` per watched resource.

Options (``[[units.NAME.detectors]]`` with ``kind = "aging"``; the defaults are those of
``[units.NAME.detect]``, whose ``aging_*`` keys are these without the prefix)::

    limits = {rss_bytes = "512MiB", num_fds = 1024}   # default: what the unit can really reach (below)
    bucket_s = 5  window = 24  min_buckets = 8  warmup_s = 10  alpha = 1e-3  urgency = 0.5
    slope_ratio = 0.5  horizon_s = 86400  hold_off_s = 1800      (enmei.detect.aging_keys.DEFAULTS)

Without ``limits`` a unit's resources are watched up to what it can really reach
(:func:`enmei.detect.aging_keys.default_limits`): ``rss_bytes`` up to its ``memory_max`` (the engine
passes it in the detector context as ``extra["memory_max_bytes"]``), else the machine's memory;
``num_fds`` up to its open-files limit.

For each resource found in an observation's values the detector scores the sample; a
:class:`~enmei.detect.base.Threshold` at ``1 - alpha`` makes AGING verdicts (source ``aging:METRIC``)
with evidence: metric, value, level (the floor), spread, limit, slope_per_s, recent_slope_per_s,
exhaust_in_s, mk_z, mk_p, window_s, bucket_s, buckets, urgent, rule, probe, repeat. Severity is CRITICAL
if exhaustion is predicted within ``min(3600, horizon_s)``, else WARNING. After a verdict the stream of
that resource holds off for ``hold_off_s`` (and until its score has been below the level for 30 s);
while the trend persists it is reported again every hour.

``min_buckets`` that can never reach ``alpha`` is refused when the options are read, with the reason
(:func:`enmei.detect.aging_keys.min_buckets_problem`). ``reset()`` starts every trend over (a restart
frees what leaked).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from enmei.detect.aging import TrendDetector
from enmei.detect.aging_keys import DEFAULTS as D
from enmei.detect.aging_keys import AgingLimits, default_limits, limits_of, min_buckets_problem
from enmei.detect.base import Threshold
from enmei.detect.protocol import NOTHING, DetectorContext, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Observation, Severity, Verdict, VerdictKind

__all__ = ["AgingDetector", "AgingOptions"]

_QUIET_S = 30.0
_REPEAT_S = 3600.0


class AgingOptions(DetectorOptions):
    limits: AgingLimits | None = None
    bucket_s: float = Field(default=D["bucket_s"], gt=0)
    alpha: float = Field(default=D["alpha"], gt=0, lt=0.5)
    window: int = Field(default=int(D["window"]), ge=6, le=120)
    min_buckets: int = Field(default=int(D["min_buckets"]), ge=4, le=120)
    warmup_s: float = Field(default=D["warmup_s"], ge=0)
    horizon_s: float = Field(default=D["horizon_s"], gt=0)
    urgency: float = Field(default=D["urgency"], gt=0)
    slope_ratio: float = Field(default=D["slope_ratio"], ge=0, le=1)
    hold_off_s: float = Field(default=D["hold_off_s"], ge=0)

    @model_validator(mode="after")
    def _can_fire(self) -> AgingOptions:
        problem = min_buckets_problem(self.min_buckets, self.alpha, prefix="")
        if problem is not None:
            raise ValueError(problem)
        return self


def _plain(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x


def _number(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


class AgingDetector:
    """AGING verdicts from resource trends (one per metric of ``limits``)."""

    def __init__(self, unit: str, opts: AgingOptions, limits: dict[str, float]) -> None:
        self.kind = "aging"
        self.name = opts.detector_name
        self.unit = unit
        self.opts = opts
        self.aging_limits = dict(limits)
        self.critical_exhaust_s = min(3600.0, opts.horizon_s)
        self.detectors: dict[str, TrendDetector] = {}
        self.gates: dict[str, Threshold] = {}

    def _for(self, metric: str) -> tuple[TrendDetector, Threshold]:
        det = self.detectors.get(metric)
        if det is None:
            o = self.opts
            det = self.detectors[metric] = TrendDetector(
                limit=self.aging_limits[metric], bucket_s=o.bucket_s, window=max(o.window, o.min_buckets),
                min_buckets=o.min_buckets, horizon_s=o.horizon_s, warmup_s=o.warmup_s,
                slope_ratio=o.slope_ratio, urgency=o.urgency)
            self.gates[metric] = Threshold(1.0 - o.alpha, hold_off_s=o.hold_off_s, quiet_s=_QUIET_S,
                                           repeat_s=_REPEAT_S)
        return det, self.gates[metric]

    def feed(self, obs: Observation) -> Judgement:
        out: list[Verdict] = []
        for metric in self.aging_limits:
            if metric in obs.values:
                v = self._one(obs, metric, _number(obs.values[metric]))
                if v is not None:
                    out.append(v)
        return Judgement(tuple(out)) if out else NOTHING

    def _one(self, obs: Observation, metric: str, value: float) -> Verdict | None:
        det, gate = self._for(metric)
        t = obs.mono
        score = det.update(value, t)
        ev = det.evidence()
        alarm = gate.judge(score, t, ev)
        if alarm is None:
            return None
        exhaust = ev.get("exhaust_in_s")
        evidence = {k: _plain(ev.get(k)) for k in (
            "level", "spread", "limit", "slope_per_s", "recent_slope_per_s", "exhaust_in_s", "mk_z", "mk_p",
            "window_s", "bucket_s", "buckets", "urgent")}
        evidence.update({"metric": metric, "value": value, "rule": alarm.rule, "probe": obs.probe,
                         "repeat": bool(alarm.evidence.get("repeat"))})
        crit = isinstance(exhaust, (int, float)) and exhaust <= self.critical_exhaust_s
        when = _duration(exhaust) if isinstance(exhaust, (int, float)) else "an unknown time"
        slope = float(ev.get("slope_per_s") or 0.0)
        return Verdict(self.unit, f"aging:{metric}", VerdictKind.AGING,
                       Severity.CRITICAL if crit else Severity.WARNING, t,
                       f"{metric} grows {_amount(metric, slope)}/s and reaches its limit "
                       f"{_amount(metric, self.aging_limits[metric])} in {when}", evidence)

    def reset(self) -> None:
        """Forget every trend: a new instance has not leaked yet."""
        self.detectors.clear()
        self.gates.clear()

    def state(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for metric, limit in self.aging_limits.items():
            det = self.detectors.get(metric)
            ev = det.evidence() if det is not None else {}
            out[metric] = {"limit": limit, **{k: _plain(ev.get(k)) for k in (
                "level", "slope_per_s", "exhaust_in_s", "buckets", "bucket_s", "rule")}}
        return {"metrics": out}

    def limits(self) -> dict[str, Limit]:
        return {}


def _amount(metric: str, value: float) -> str:
    """A value for a person: bytes in KiB/MiB/GiB, other counts as they are."""
    if metric.endswith("_bytes"):
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{value / size:.3g} {unit}"
        return f"{value:.3g} B"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _aging(ctx: DetectorContext, opts: AgingOptions) -> AgingDetector:
    limits = limits_of(opts.limits)
    if limits is None:
        raw = ctx.extra.get("memory_max_bytes")
        limits = default_limits(float(raw) if isinstance(raw, (int, float)) else None)
    return AgingDetector(ctx.unit, opts, limits)


register("aging", AgingOptions, _aging, example={"limits": {"rss_bytes": 2e6}, "bucket_s": 1, "min_buckets": 8,
                                                     "warmup_s": 0})
