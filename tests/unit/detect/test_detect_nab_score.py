"""The NAB scorer on synthetic corpora, checked against a direct, loop-by-loop reading of NAB."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from enmei.bench.nab import detect_series
from enmei.detect.nab_score import (
    DEFAULT_PROFILES,
    CostMatrix,
    NabSeries,
    event_counts,
    probation_length,
    scaled_sigmoid,
    score_at_threshold,
    score_corpus,
)
from enmei.detect.novelty import NoveltyDetector


def make_series(name: str, n: int, windows: list[tuple[int, int]]) -> NabSeries:
    t0 = datetime(2020, 1, 1)
    stamps = tuple(t0 + timedelta(minutes=5 * i) for i in range(n))
    return NabSeries(name, stamps, np.zeros(n), tuple(windows))


def naive_file_score(series: NabSeries, hits: np.ndarray, cm: CostMatrix) -> float:
    """One file at one threshold, the way NAB's sweeper describes it."""
    prob = probation_length(len(series.values))
    total = 0.0
    for lo, hi in series.windows:
        width = hi - lo + 1
        first = next((i for i in range(max(lo, prob), hi + 1) if hits[i]), None)
        if first is None:
            total -= cm.fn_weight
        else:
            total += cm.tp_weight * scaled_sigmoid(-(hi - first + 1) / width) / scaled_sigmoid(-1.0)
    for i in range(prob, len(hits)):
        if not hits[i] or any(lo <= i <= hi for lo, hi in series.windows):
            continue
        before = [(lo, hi) for lo, hi in series.windows if hi < i]
        if not before:
            total -= cm.fp_weight
        else:
            lo, hi = before[-1]
            total += cm.fp_weight * scaled_sigmoid(abs(hi - i) / (hi - lo))
    return total


def naive_corpus(corpus: list[NabSeries], scores: list[np.ndarray], cm: CostMatrix) -> float:
    cands = sorted({float(s) for sc, ser in zip(scores, corpus, strict=True)
                    for s in sc[probation_length(len(ser.values)):]} | {math.inf}, reverse=True)
    return max(sum(naive_file_score(ser, sc >= th, cm) for ser, sc in zip(corpus, scores, strict=True))
               for th in cands)


def synthetic(seed: int) -> tuple[list[NabSeries], list[np.ndarray]]:
    r = random.Random(seed)
    corpus, scores = [], []
    for f in range(4):
        n = r.randint(200, 600)
        windows = []
        at = probation_length(n) + r.randint(-10, 40)
        while at + 30 < n and len(windows) < 3:
            w = r.randint(5, 40)
            windows.append((at, min(at + w, n - 1)))
            at += w + r.randint(10, 150)
        corpus.append(make_series(f"f{f}", n, windows))
        scores.append(np.array([round(r.random() ** 8, 2) for _ in range(n)]))
    return corpus, scores


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_sweep_equals_direct_reading(seed: int) -> None:
    corpus, scores = synthetic(seed)
    result = score_corpus(corpus, scores)
    for name, cm in DEFAULT_PROFILES.items():
        assert result[name].raw == pytest.approx(naive_corpus(corpus, scores, cm), abs=1e-9)
        assert sum(result[name].per_file.values()) == pytest.approx(result[name].raw, abs=1e-9)


def test_null_perfect_and_normalisation() -> None:
    corpus = [make_series("a", 1000, [(400, 449), (700, 749)]), make_series("b", 500, [])]
    null = [np.zeros(1000), np.zeros(500)]
    perfect = [np.zeros(1000), np.zeros(500)]
    perfect[0][[400, 700]] = 1.0
    for name in DEFAULT_PROFILES:
        assert score_corpus(corpus, null)[name].score == 0.0
        assert score_corpus(corpus, perfect)[name].score == pytest.approx(100.0)
    res = score_corpus(corpus, perfect)["standard"]
    assert res.raw == pytest.approx(2.0)
    assert res.null == -2.0
    assert res.perfect == 2.0
    assert res.detected_windows == 2
    assert res.false_positives == 0


def test_probation_is_not_scored_and_early_detection_pays_more() -> None:
    corpus = [make_series("a", 1000, [(400, 449)])]
    during_probation = np.zeros(1000)
    during_probation[[10, 400]] = 1.0
    assert score_corpus(corpus, [during_probation])["standard"].score == pytest.approx(100.0)
    late = np.zeros(1000)
    late[440] = 1.0
    assert 0 < score_corpus(corpus, [late])["standard"].score < 100.0
    assert probation_length(1000) == 150
    assert probation_length(100_000) == 750


def test_sigmoid_and_bad_input() -> None:
    assert scaled_sigmoid(-1.0) == pytest.approx(0.98661, abs=1e-5)
    assert scaled_sigmoid(0.0) == 0.0
    assert scaled_sigmoid(3.0) == -1.0
    corpus = [make_series("a", 300, [(150, 180)])]
    with pytest.raises(ValueError, match="10 scores for 300 rows"):
        score_corpus(corpus, [np.zeros(10)])
    with pytest.raises(ValueError, match="0 score arrays for 1 series"):
        score_corpus(corpus, [])
    nan_scores = np.full(300, np.nan)
    assert score_corpus(corpus, [nan_scores])["standard"].score == 0.0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fixed_threshold_equals_the_direct_reading_at_that_threshold(seed: int) -> None:
    corpus, scores = synthetic(seed)
    cm = DEFAULT_PROFILES["standard"]
    for th in (0.3, 0.6, 0.9):
        got = score_at_threshold(corpus, scores, th)["standard"]
        want = sum(naive_file_score(s, sc >= th, cm) for s, sc in zip(corpus, scores, strict=True))
        assert got.raw == pytest.approx(want, abs=1e-9)
        assert got.threshold == th


def test_optimised_is_the_best_fixed_one_and_nothing_detected_scores_zero() -> None:
    corpus, scores = synthetic(4)
    best = score_corpus(corpus, scores)["standard"]
    at_best = score_at_threshold(corpus, scores, best.threshold)["standard"]
    assert at_best.score == pytest.approx(best.score)
    for th in (0.1, 0.5, 0.95):
        assert score_at_threshold(corpus, scores, th)["standard"].score <= best.score + 1e-9
    assert score_at_threshold(corpus, scores, math.inf)["standard"].score == pytest.approx(0.0)
    with pytest.raises(ValueError, match="NaN"):
        score_at_threshold(corpus, scores, math.nan)


def test_event_counts() -> None:
    t0 = datetime(2020, 1, 1)
    n = 200
    series = NabSeries("a.csv", tuple(t0 + timedelta(minutes=i) for i in range(n)), np.zeros(n),
                       ((100, 109), (150, 159)))
    sc = np.zeros(n)
    sc[[105, 106, 170, 180]] = 1.0  # the first window twice, the second missed, two false alarms
    ev = event_counts([series], [sc], 0.5)
    assert (ev.windows, ev.hits, ev.false_alarms) == (2, 1, 2)
    assert ev.normal_rows == n - 30 - 20  # probation (30 rows) and window rows are not normal rows
    assert ev.f1 == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))
    assert ev.false_alarms_per_1000 == pytest.approx(2000 / 150)
    assert event_counts([series], [np.zeros(n)], 0.5).f1 == 0.0


def test_zone_aware_timestamps_are_read_by_their_zone() -> None:
    naive = datetime(2024, 3, 1, 12, 0)
    stamps = (naive, naive.replace(tzinfo=UTC) + timedelta(minutes=1),
              datetime(2024, 3, 1, 14, 2, tzinfo=timezone(timedelta(hours=2))),
              datetime.fromisoformat("2024-03-01T12:03:00Z"))
    s = NabSeries("z.csv", stamps, np.zeros(4), ())
    base = (naive - datetime(1970, 1, 1)).total_seconds()
    assert s.seconds().tolist() == [base, base + 60, base + 120, base + 180]


def test_a_short_series_is_scored_by_a_detector_sized_for_it() -> None:
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    n = 400
    values = np.sin(np.arange(n) / 5.0)
    values[300:305] = 25.0
    series = NabSeries("short.csv", tuple(t0 + timedelta(minutes=i) for i in range(n)), values,
                       ((295, 310),))
    assert not NoveltyDetector().learning < n  # the default learns longer than this series lasts
    scores = detect_series(series)  # sized from the series: learning = probation = 60 rows
    assert np.count_nonzero(scores[series.probation:]) > 0
    assert float(np.argmax(scores)) in range(300, 306)
    assert NoveltyDetector.for_rows(n).learning == series.probation == 60


def test_fixed_threshold_with_two_files_of_one_name() -> None:
    corpus, scores = synthetic(5)
    twins = [NabSeries("same.csv", s.timestamps, s.values, s.windows) for s in corpus]
    best = score_corpus(twins, scores)["standard"]
    assert score_at_threshold(twins, scores, best.threshold)["standard"].raw == pytest.approx(best.raw)
