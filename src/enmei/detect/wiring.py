"""How the engine gets its detectors: one ``UnitJudge`` per unit, configured by ``[units.NAME.detect]``."""

from __future__ import annotations

from enmei.config.model import HttpProbe, UnitBase
from enmei.detect.pipeline import UnitJudge

__all__ = ["judge_factory"]


def judge_factory(unit: str, spec: UnitBase) -> UnitJudge | None:
    """The judge for ``unit``, or None when nothing in its config calls for one (no HTTP probe with
    latency charts on, no aging limits)."""
    d = spec.detect
    latency = d.latency and any(isinstance(p, HttpProbe) for p in spec.probes)
    if not latency and not d.aging_limits:
        return None
    return UnitJudge(
        unit,
        latency_metric="latency_s" if latency else "-",  # "-" is never a value name: latency off
        aging_limits=d.aging_limits, learning=d.latency_learning, alpha=d.latency_alpha,
        hold_off_s=d.latency_hold_off_s, aging_bucket_s=d.aging_bucket_s, aging_min_buckets=d.aging_min_buckets,
        aging_warmup_s=d.aging_warmup_s, aging_horizon_s=d.aging_horizon_s, aging_hold_off_s=d.aging_hold_off_s,
        critical_exhaust_s=min(3600.0, d.aging_horizon_s),
    )
