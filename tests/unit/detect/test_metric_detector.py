"""The ``metric`` unit detector runs exactly the benchmarked scorer; scores share one calibration."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from enmei.bench.nab import detect_series, make_detector
from enmei.detect import registry
from enmei.detect.alarm import OneAlarmPerEpisode
from enmei.detect.baselines import RollingRobustZ, WindowedGaussian
from enmei.detect.charts import CUSUM, EWMA
from enmei.detect.metric import MetricDetector, MetricOptions, scorer
from enmei.detect.nab_score import NabSeries
from enmei.detect.novelty import NoveltyDetector
from enmei.detect.protocol import DetectorContext
from enmei.model import Observation, VerdictKind


def a_series(n: int = 3000, seed: int = 0) -> NabSeries:
    r = random.Random(seed)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    values = np.array([10 + 3 * math.sin(2 * math.pi * i / 288) + r.gauss(0, 0.3) for i in range(n)])
    values[2500:2510] += 15.0
    return NabSeries("s.csv", tuple(t0 + timedelta(minutes=5 * i) for i in range(n)), values, ((2480, 2530),))


def test_the_unit_detector_scores_exactly_what_the_benchmark_scores() -> None:
    series = a_series()
    bench = detect_series(series, make_detector(series))
    opts = registry.get("metric").options.model_validate(
        {"kind": "metric", "metric": "requests", "learning": series.probation})
    det = registry.build(DetectorContext("web"), opts)
    assert isinstance(det, MetricDetector)
    verdicts = []
    for v, t in zip(series.values.tolist(), series.seconds().tolist(), strict=True):
        verdicts += det.feed(Observation("web", "stats", True, t, t, {"requests": v, "other": 1.0})).verdicts
    # Same scorer, same samples: identical scores (the stream's last one, and every one via a twin).
    twin = scorer(learning=series.probation)
    assert [twin.update(v, t) for v, t in zip(series.values.tolist(), series.seconds().tolist(), strict=True)] \
        == bench.tolist()
    level = det.level
    hits = np.flatnonzero(bench >= level)
    assert len(verdicts) >= 1 and len(hits) >= 1
    first = verdicts[0]
    assert first.kind is VerdictKind.ANOMALY and first.detector == "metric:metric"
    assert first.mono == series.seconds()[hits[0]]  # the first benchmark score at the level is the verdict
    ev = first.evidence
    assert ev["suspect"] == "stats" == ev["probe"] and ev["alpha"] < 1e-4 and ev["metric"] == "requests"
    assert 2480 <= int(np.argmax(bench)) <= 2530  # the strongest evidence is the injected anomaly
    assert any(series.seconds()[2480] <= v.mono <= series.seconds()[2530] for v in verdicts)


def test_other_probes_bad_values_and_a_probe_filter() -> None:
    det = MetricDetector("web", MetricOptions(kind="metric", metric="x", probe="a", learning=10))
    assert det.feed(Observation("web", "b", True, 1.0, 1.0, {"x": 1.0})).verdicts == ()
    assert det.feed(Observation("web", "a", True, 2.0, 2.0, {"x": "oops"})).verdicts == ()  # type: ignore[dict-item]
    assert det.feed(Observation("web", "a", True, 3.0, 3.0, {"y": 1.0})).verdicts == ()
    assert list(det.streams) == []
    det.feed(Observation("web", "a", True, 4.0, 4.0, {"x": 1.0}))
    assert list(det.streams) == ["a"]


@pytest.mark.parametrize("make", [
    lambda: EWMA(learning=10), lambda: CUSUM(learning=10), WindowedGaussian,
    lambda: RollingRobustZ(window=50), lambda: NoveltyDetector(learning=10),
    lambda: OneAlarmPerEpisode(NoveltyDetector(learning=10, rest=1), rest=3), lambda: scorer(20),
])
@pytest.mark.parametrize("alpha", [1e-2, 1e-4, 1e-8])
def test_one_threshold_means_one_false_alarm_probability(make, alpha: float) -> None:  # type: ignore[no-untyped-def]
    det = make()
    level = det.level_for(alpha)
    assert 0.0 < level < 1.0
    assert det.alpha_of(level) == pytest.approx(alpha, rel=1e-6)
    assert det.level_for(alpha / 10) > level  # rarer means higher
    with pytest.raises(ValueError, match="alpha"):
        det.level_for(0.0)


def test_charts_alarm_level_is_their_calibrated_level() -> None:
    chart = CUSUM(learning=10, h=5.0)
    alpha = 1.0 - chart.alarm_level
    assert chart.level_for(alpha) == pytest.approx(chart.alarm_level)
