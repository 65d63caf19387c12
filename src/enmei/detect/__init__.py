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
- ``latency``, ``aging`` (:mod:`~enmei.detect.judges`) — the statistical detectors above;
- ``reaction`` (:mod:`~enmei.detect.reaction`) — an injection's reaction against its bound;
- ``log_pattern`` (:mod:`~enmei.detect.logmatch`) — log or console lines matching a pattern.

:class:`UnitDetectors` (:mod:`~enmei.detect.unitset`) holds one unit's detectors and combines their
health reports. A unit that configures none gets ``probe_failures``, ``latency``, ``aging`` and
``reaction`` as ``[units.NAME.detect]`` and its probes and injectors call for them
(:mod:`~enmei.detect.wiring`).
"""

from enmei.detect.aging import TrendDetector
from enmei.detect.base import Alarm, Detector, StateFormatError, StreamingDetector, Threshold
from enmei.detect.baselines import WindowedGaussian
from enmei.detect.charts import CUSUM, EWMA, Shewhart
from enmei.detect.ensemble import MaxOf, detector_from_state
from enmei.detect.narrow import Narrower, Suspect
from enmei.detect.novelty import NoveltyDetector
from enmei.detect.pipeline import UnitJudge
from enmei.detect.protocol import DetectorContext, HealthReport, Judgement, Limit, UnitDetector
from enmei.detect.registry import DetectorOptions, register
from enmei.detect.unitset import UnitDetectors

# The built-in unit-detector kinds register themselves on import.
from enmei.detect import failures, judges, logmatch, reaction  # noqa: F401  isort: skip

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
