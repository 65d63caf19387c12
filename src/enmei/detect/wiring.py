"""How the engine gets a unit's detectors: ``[[units.NAME.detectors]]`` over the defaults.

A unit's detectors are, in this order:

1. the defaults its config calls for — ``probe_failures`` when it has an active probe (http, tcp) or an
   injector; ``latency`` (options from ``[units.NAME.detect]``) when it has an HTTP probe and
   ``detect.latency`` is on; ``aging`` when ``detect.aging`` is on and the unit has a ``process`` probe
   or sets ``detect.aging_limits`` (limits default to what the unit can reach: its ``memory_max``,
   which the context carries as ``extra["memory_max_bytes"]``, else the machine's memory);
   ``reaction`` for each keys injector with a ``max_reaction``;
2. its ``[[units.NAME.detectors]]`` entries: an entry *replaces* the default of the same name (a
   detector's name defaults to its kind; ``reaction:INJECTOR`` for a reaction detector), any other
   entry is added.

Every kind comes from :mod:`enmei.detect.registry`; this module names no detector beyond the defaults.
"""

from __future__ import annotations

import dataclasses

from enmei.config.model import HttpProbe, KeysInjector, LogProbe, ProcessProbe, UnitBase
from enmei.detect.aging_keys import memory_max_bytes
from enmei.detect.aging_unit import AgingOptions
from enmei.detect.failures import ProbeFailureOptions
from enmei.detect.latency import LatencyOptions
from enmei.detect.protocol import DetectorContext
from enmei.detect.reaction import ReactionOptions
from enmei.detect.registry import DetectorOptions, build
from enmei.detect.unitset import UnitDetectors

__all__ = ["context_for", "default_options", "judge_factory", "unit_detectors"]


def context_for(unit: str, spec: UnitBase) -> DetectorContext:
    """What a detector factory learns of ``unit`` (its probes and injectors, as plain values; its
    ``memory_max`` in bytes as ``extra["memory_max_bytes"]`` when it has one)."""
    ctx = spec.detector_context(unit)
    memory_max = memory_max_bytes(spec)
    if memory_max is None:
        return ctx
    return dataclasses.replace(ctx, extra={**ctx.extra, "memory_max_bytes": memory_max})


def default_options(spec: UnitBase) -> list[DetectorOptions]:
    """The detectors a unit gets when it configures none (see the module docstring)."""
    d = spec.detect
    out: list[DetectorOptions] = []
    if any(not isinstance(p, (ProcessProbe, LogProbe)) for p in spec.probes) or spec.injectors:
        out.append(ProbeFailureOptions(kind="probe_failures"))
    if d.latency and any(isinstance(p, HttpProbe) for p in spec.probes):
        out.append(LatencyOptions(kind="latency", learning=d.latency_learning, alpha=d.latency_alpha,
                                  hold_off_s=d.latency_hold_off_s))  # the benchmarked scorer, one-sided
    if d.aging and (d.aging_limits is not None or any(isinstance(p, ProcessProbe) for p in spec.probes)):
        out.append(AgingOptions(kind="aging", limits=d.aging_limits, bucket_s=d.aging_bucket_s,
                                alpha=d.aging_alpha, window=d.aging_window, min_buckets=d.aging_min_buckets,
                                warmup_s=d.aging_warmup_s, horizon_s=d.aging_horizon_s, urgency=d.aging_urgency,
                                slope_ratio=d.aging_slope_ratio, hold_off_s=d.aging_hold_off_s))
    for inj in spec.injectors:
        if isinstance(inj, KeysInjector) and inj.max_reaction is not None:
            out.append(ReactionOptions(kind="reaction", injector=inj.name))
    return out


def unit_detectors(unit: str, spec: UnitBase) -> UnitDetectors:
    """The detectors of ``unit``, built. Raises ``ValueError`` if an entry does not fit the unit (a
    ``reaction`` detector naming no injector of it)."""
    configured = list(spec.detectors)
    replaced = {o.detector_name for o in configured}
    options = [o for o in default_options(spec) if o.detector_name not in replaced] + configured
    ctx = context_for(unit, spec)
    return UnitDetectors(unit, [build(ctx, o) for o in options])


judge_factory = unit_detectors  # the name `enmei up` and the benchmarks pass to Engine(judge_factory=...)
