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
- :mod:`~enmei.detect.pipeline` — :class:`UnitJudge`, the seam the engine calls per observation.
"""

from enmei.detect.aging import TrendDetector
from enmei.detect.base import Alarm, Detector, StateFormatError, StreamingDetector, Threshold
from enmei.detect.baselines import WindowedGaussian
from enmei.detect.charts import CUSUM, EWMA, Shewhart
from enmei.detect.ensemble import MaxOf, detector_from_state
from enmei.detect.narrow import Narrower, Suspect
from enmei.detect.novelty import NoveltyDetector
from enmei.detect.pipeline import UnitJudge

__all__ = [
    "CUSUM",
    "EWMA",
    "Alarm",
    "Detector",
    "MaxOf",
    "Narrower",
    "NoveltyDetector",
    "Shewhart",
    "StateFormatError",
    "StreamingDetector",
    "Suspect",
    "Threshold",
    "TrendDetector",
    "UnitJudge",
    "WindowedGaussian",
    "detector_from_state",
]
