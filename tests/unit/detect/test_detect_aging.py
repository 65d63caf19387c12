"""Aging: Mann–Kendall and Sen's slope, the trend detector, and the benchmark's generator."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest

from enmei.bench import aging as bench
from enmei.detect.aging import TrendDetector, mann_kendall, sen_slope


def naive_mk(y: list[float]) -> float:
    return float(sum(np.sign(b - a) for a, b in itertools.combinations(y, 2)))


def test_mann_kendall_matches_definition_and_ties() -> None:
    r = random.Random(0)
    y = [float(r.randrange(10)) for _ in range(40)]
    s, _, p = mann_kendall(np.array(y))
    assert s == naive_mk(y)
    assert 0.0 <= p <= 1.0
    s, _z, p = mann_kendall(np.arange(30.0))
    assert s == 30 * 29 / 2
    assert p < 1e-9
    assert mann_kendall(np.full(20, 3.0))[2] == 1.0  # only ties: no evidence
    assert mann_kendall(np.arange(30.0)[::-1])[2] > 0.999


def test_sen_slope_is_robust_to_outliers() -> None:
    t = np.arange(50.0)
    y = 2.0 * t + 7.0
    y[10] = 1e6
    slope, intercept = sen_slope(t, y)
    assert slope == pytest.approx(2.0)
    assert intercept == pytest.approx(7.0)


def run(det: TrendDetector, values: list[float]) -> tuple[float | None, dict[str, object]]:
    first = None
    ev: dict[str, object] = {}
    for i, v in enumerate(values):
        if det.update(v, float(i)) >= 0.999 and first is None:
            first = float(i)
            ev = det.evidence()
    return first, ev


def test_leak_found_with_exhaustion_estimate() -> None:
    r = random.Random(1)
    rate = 50_000.0
    values = [100e6 + rate * i + r.gauss(0, 1e6) for i in range(3 * 3600)]
    first, ev = run(TrendDetector(limit=1e9), values)
    assert first is not None
    assert first < 3600
    assert ev["rule"] == "mann_kendall"
    assert ev["slope_per_s"] == pytest.approx(rate, rel=0.1)
    truth = (1e9 - values[int(first)]) / rate
    assert ev["exhaust_in_s"] == pytest.approx(truth, rel=0.15)
    assert {"mk_z", "mk_p", "limit", "level", "buckets", "window_s"} <= set(ev)


@pytest.mark.parametrize("kind", ["step", "plateau", "gc", "flat"])
def test_no_aging_on_controls(kind: str) -> None:
    r = random.Random(2)
    values = []
    for i in range(4 * 3600):
        v = 100e6 + r.gauss(0, 1e6)
        if kind == "step" and i > 5000:
            v += 100e6
        if kind == "plateau":
            v += min(max(i - 5000, 0) / 240, 1.0) * 100e6
        if kind == "gc":
            v += 30e6 * ((i % 47) / 47)
        values.append(v)
    assert run(TrendDetector(limit=1e9), values)[0] is None


def test_far_exhaustion_is_not_urgent() -> None:
    det = TrendDetector(limit=1e12, horizon_s=3600.0)
    values = [100e6 + 10_000.0 * i for i in range(3 * 3600)]
    scores = [det.update(v, float(i)) for i, v in enumerate(values)]
    assert max(scores) <= 0.5
    assert det.evidence()["exhaust_in_s"] > 3600.0


def test_falling_resource_with_direction_down() -> None:
    det = TrendDetector(limit=0.0, direction="down", warmup_s=60.0)
    free = [8e9 - 300_000.0 * i for i in range(2 * 3600)]
    first, ev = run(det, free)
    assert first is not None
    assert ev["slope_per_s"] == pytest.approx(-300_000.0, rel=0.05)
    assert ev["exhaust_in_s"] > 0


def test_warmup_gaps_and_integer_resources() -> None:
    det = TrendDetector(limit=1024.0, warmup_s=600.0)
    assert det.update(10.0, 0.0) == 0.0
    assert det.evidence()["rule"] == "warmup"
    # fds leak one per 20 s, sampled with gaps
    t = 600.0
    first = None
    while t < 4 * 3600:
        s = det.update(30.0 + math.floor(t / 20.0), t)
        if s >= 0.999 and first is None:
            first = t
        t += 1.0 if (t // 600) % 2 == 0 else 7.0
    assert first is not None


def test_generator_is_deterministic_and_well_formed() -> None:
    a = bench.generate(seed=3, duration_s=9000, repeats=1)
    b = bench.generate(seed=3, duration_s=9000, repeats=1)
    assert [s.kind for s in a] == [s.kind for s in b]
    assert all(np.array_equal(x.values, y.values) for x, y in zip(a, b, strict=True))
    kinds = {s.kind for s in a}
    assert set(bench.LEAK_KINDS) | set(bench.CONTROL_KINDS) == kinds
    for s in a:
        assert len(s.values) == 9000
        assert np.isfinite(s.values).all()
        if s.leak:
            assert s.leak_start_s is not None
            assert s.rate_per_s > 0
            before = s.values[: int(s.leak_start_s)]
            after = s.values[-600:]
            assert after.mean() > before.mean()
        else:
            assert s.exhaust_at_s is None


def test_leaks_reach_the_limit_at_the_intended_times() -> None:
    for s in bench.generate(seed=0, duration_s=6 * 3600, repeats=1):
        if s.kind == "leak" and s.rate_per_s == max(bench.LEAK_RATES):
            assert s.exhaust_at_s is not None
            assert s.leak_start_s is not None
            hours = (s.exhaust_at_s - s.leak_start_s) / 3600
            assert 0.8 < hours < 1.2
