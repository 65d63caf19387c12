"""Failure and precursor detection: streaming detectors (score) apart from thresholds (decide).

- :mod:`~enmei.detect.base` — the protocol every detector keeps (streaming, O(1), no look-ahead,
  scores in [0, 1], versioned JSON state, defined behaviour on bad input) and :class:`Threshold`.
- :mod:`~enmei.detect.charts` — Shewhart individuals / X̄ with Western Electric and Nelson rules,
  EWMA, CUSUM, with a robust learning phase.
- :mod:`~enmei.detect.narrow` — one chart per component; the suspect is the first (then strongest)
  to deviate.
- :mod:`~enmei.detect.aging` — Mann–Kendall / Sen's slope trend of a resource, time to exhaustion.
- :mod:`~enmei.detect.novelty` — the context-novelty anomaly detector (enmei's NAB entry).
- :mod:`~enmei.detect.nab_score` — the NAB v1.1 scorer; :mod:`~enmei.detect.baselines` — NAB's
  windowed Gaussian.
- :mod:`~enmei.detect.pipeline` — :class:`UnitJudge`: latency charts and aging trends of one unit.

Unit detectors (what the engine feeds each observation of a unit; see :mod:`~enmei.detect.protocol`),
registered by kind in :mod:`~enmei.detect.registry` and configured by ``[[units.NAME.detectors]]``:

- ``probe_failures`` (:mod:`~enmei.detect.failures`) — consecutive failures of active probes, and the
  unit's health;
- ``latency`` (:mod:`~enmei.detect.latency`) — the benchmarked scorer (:mod:`~enmei.detect.metric`)
  on each probe's log latency, one-sided; ``latency_charts`` (:mod:`~enmei.detect.judges`) — the
  control charts above; ``aging`` (:mod:`~enmei.detect.aging_unit`);
- ``reaction`` (:mod:`~enmei.detect.reaction`) — an injection's reaction against its bound;
- ``log_pattern`` (:mod:`~enmei.detect.logmatch`) — log or console lines matching a pattern;
- ``keylogger`` (:mod:`~enmei.detect.keylogger`) — a guest's disk writes or network output following
  typed key bursts more than silent controls (a permutation test), outbound traffic nothing explains.

:class:`UnitDetectors` (:mod:`~enmei.detect.unitset`) holds one unit's detectors and combines their
health reports. A unit that configures none gets ``probe_failures``, ``latency``, ``aging`` and
``reaction`` as ``[units.NAME.detect]`` and its probes and injectors call for them
(:mod:`~enmei.detect.wiring`); an entry replaces the default of its name.

The names below are imported on first use (PEP 562): the config imports :mod:`~enmei.detect.registry`
to validate ``[[units.NAME.detectors]]``, and that must not load every detector (nor numpy) for
``enmei check`` or the policy sandbox. The registry loads the built-in kinds when first asked.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, typed, for the type checker (at run time they resolve on first use)
    from enmei.detect.aging import TrendDetector
    from enmei.detect.base import Alarm, Detector, StateFormatError, StreamingDetector, Threshold, detector_from_state
    from enmei.detect.baselines import WindowedGaussian
    from enmei.detect.charts import CUSUM, EWMA, Shewhart
    from enmei.detect.ensemble import MaxOf
    from enmei.detect.narrow import Narrower, Suspect
    from enmei.detect.novelty import NoveltyDetector
    from enmei.detect.pipeline import UnitJudge
    from enmei.detect.protocol import DetectorContext, HealthReport, Judgement, Limit, UnitDetector
    from enmei.detect.registry import DetectorOptions, register
    from enmei.detect.unitset import UnitDetectors

_EXPORTS: dict[str, str] = {
    "TrendDetector": "aging",
    "Alarm": "base", "Detector": "base", "StateFormatError": "base", "StreamingDetector": "base",
    "Threshold": "base",
    "WindowedGaussian": "baselines",
    "CUSUM": "charts", "EWMA": "charts", "Shewhart": "charts",
    "MaxOf": "ensemble", "detector_from_state": "base",
    "Narrower": "narrow", "Suspect": "narrow",
    "NoveltyDetector": "novelty",
    "UnitJudge": "pipeline",
    "DetectorContext": "protocol", "HealthReport": "protocol", "Judgement": "protocol", "Limit": "protocol",
    "UnitDetector": "protocol",
    "DetectorOptions": "registry", "register": "registry",
    "UnitDetectors": "unitset",
}

__all__ = [
    "CUSUM",
    "EWMA",
    "Alarm",
    "Detector",
    "DetectorContext",
    "DetectorOptions",
    "HealthReport",
    "Judgement",
    "Limit",
    "MaxOf",
    "Narrower",
    "NoveltyDetector",
    "Shewhart",
    "StateFormatError",
    "StreamingDetector",
    "Suspect",
    "Threshold",
    "TrendDetector",
    "UnitDetector",
    "UnitDetectors",
    "UnitJudge",
    "WindowedGaussian",
    "detector_from_state",
    "register",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'enmei.detect' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"enmei.detect.{module}"), name)
    globals()[name] = value  # once resolved, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
