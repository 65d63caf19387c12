"""Aging: Mann–Kendall and Sen's slope, the trend detector, and the benchmark's generator."""

from __future__ import annotations

import itertools
import json
import math
import random

import numpy as np
import pytest

from enmei.bench import aging as bench
from enmei.detect.aging import TrendDetector, mann_kendall, min_p, sen_slope


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
    values = [100e6 + rate * i + r.gauss(0, 1e6) for i in range(5 * 3600)]
    life = (1e9 - 100e6) / rate  # 5 h from the first sample to the limit
    first, ev = run(TrendDetector(limit=1e9), values)
    assert first is not None
    # urgency 0.5: when the time left is half the evidence, which the scales' spans quantise (a third of
    # the room left in theory; here about a fifth).
    assert first < life * 0.85
    assert ev["rule"] == "leak"
    assert ev["slope_per_s"] == pytest.approx(rate, rel=0.1)
    truth = (1e9 - values[int(first)]) / rate
    assert ev["exhaust_in_s"] == pytest.approx(truth, rel=0.15)
    assert ev["exhaust_in_s"] <= 0.5 * ev["window_s"]
    assert {"mk_z", "mk_p", "limit", "level", "buckets", "window_s", "bucket_s", "spread"} <= set(ev)


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
    assert det.evidence()["rule"] == "not_urgent"


def test_falling_resource_with_direction_down() -> None:
    det = TrendDetector(limit=0.0, direction="down", warmup_s=60.0)
    free = [8e9 - 300_000.0 * i for i in range(8 * 3600)]
    first, ev = run(det, free)
    assert first is not None
    assert ev["slope_per_s"] == pytest.approx(-300_000.0, rel=0.05)
    assert 0 < ev["exhaust_in_s"] <= free[int(first)] / 300_000.0 * 1.05


def test_warmup_gaps_and_integer_resources() -> None:
    det = TrendDetector(limit=1024.0, warmup_s=600.0)
    assert det.update(10.0, 0.0) == 0.0
    assert det.evidence()["rule"] == "warmup"
    # fds leak one per 20 s, sampled with gaps
    t = 600.0
    first = None
    while t < 6 * 3600:
        s = det.update(30.0 + math.floor(t / 20.0), t)
        if s >= 0.999 and first is None:
            first = t
        t += 1.0 if (t // 600) % 2 == 0 else 7.0
    assert first is not None
    assert 30.0 + math.floor(first / 20.0) < 1024.0


# -- issue 13: the reproductions --------------------------------------------------------------------

MIB = 2.0**20


def machine_memory_percent(leak: bool, seed: int = 0) -> list[float]:
    """Issue 13, "Aging": memory % of a machine at 5-minute samples, limit 100. Flat for 3 h, then a
    rise of 2.4 h at a rate that predicts exhaustion 3.1 h after its end; the normal series then stays
    on its plateau, the leaking one goes on rising to the limit (at 8.5 h)."""
    r = random.Random(seed)
    out = []
    for i in range(30 * 12):
        h = i / 12
        v = 29.0 if h < 3 else 29.0 + (min(h, 5.4) - 3) * 12.9 if not leak else 29.0 + (h - 3) * 12.9
        out.append(min(max(v, 29.0), 100.0) + r.gauss(0, 0.7))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_rise_that_plateaus_is_not_a_leak_and_the_leak_is_found_before_the_limit(seed: int) -> None:
    normal = machine_memory_percent(False, seed)
    leak = machine_memory_percent(True, seed)
    t = [300.0 * i for i in range(len(normal))]
    det = TrendDetector(limit=100.0)
    assert max(det.update(v, ti) for v, ti in zip(normal, t, strict=True)) < 0.999  # the old one: 5.1 h in
    det = TrendDetector(limit=100.0)
    first = next((ti for v, ti in zip(leak, t, strict=True) if det.update(v, ti) >= 0.999), None)
    assert first is not None
    assert first / 3600 < 8.5 - 0.5  # at least half an hour before the limit
    assert det.evidence()["exhaust_in_s"] > 1800


def test_six_buckets_can_fire_when_the_significance_allows_it() -> None:
    """Issue 13: min_buckets = 6 could never fire (hidden p < 1e-3 and a per-third check). The smallest
    p-value of 6 buckets is min_p(6); at a threshold above it, 6 clean buckets fire."""
    assert min_p(6) == pytest.approx(0.00427, rel=0.01)
    assert min_p(8) < 1e-3
    det = TrendDetector(limit=None, bucket_s=5.0, min_buckets=6, warmup_s=0.0)
    level = 1.0 - 0.005
    first = None
    for i in range(200):
        if det.update(20 * MIB + 2 * MIB * i, float(i)) >= level:
            first = i
            break
    assert first is not None
    assert first <= 6 * 5 + 5  # judged when the 6th bucket closes
    assert det.evidence()["buckets"] == 6


def test_without_a_limit_a_trend_alone_alarms() -> None:
    """Issue 13 item 5: TrendDetector(limit=None) could never alarm (score capped at 0.5)."""
    det = TrendDetector(limit=None)
    r = random.Random(5)
    first, ev = run(det, [50 * MIB + 100_000.0 * i + r.gauss(0, 0.2 * MIB) for i in range(3600)])
    assert first is not None
    assert ev["rule"] == "leak" and ev["exhaust_in_s"] is None
    det = TrendDetector(limit=None)
    assert run(det, [50 * MIB + r.gauss(0, 0.2 * MIB) for i in range(3600)])[0] is None


def test_the_fast_leak_with_defaults_is_judged_before_it_dies() -> None:
    """Issue 13, first new-user scenario: 2 MiB/s, dies at 300 MiB (its memory_max). With the old
    defaults (600 s warm-up, 20 x 60 s buckets) no verdict came; now one comes with time to act."""
    det = TrendDetector(limit=300 * MIB)
    r = random.Random(6)
    for i in range(200):
        rss = 20 * MIB + 2 * MIB * i + r.gauss(0, 0.3 * MIB)
        if rss >= 300 * MIB:
            pytest.fail(f"died at {i} s without a verdict")
        if det.update(rss, float(i)) >= 0.999:
            ev = det.evidence()
            assert ev["rule"] == "leak"
            assert rss < 250 * MIB  # at least 25 s before the limit at 2 MiB/s
            assert ev["exhaust_in_s"] == pytest.approx((300 * MIB - rss) / (2 * MIB), abs=10)
            return
    pytest.fail("no verdict")


def test_a_sawtooth_near_the_limit_counts_its_peaks() -> None:
    """The headroom: a GC sawtooth meets the limit at its peaks, not at its floor."""
    det = TrendDetector(limit=1e9, warmup_s=0.0)
    for i in range(4 * 3600):
        det.update(100e6 + 50_000.0 * i + 200e6 * ((i % 60) / 60), float(i))
    ev = det.evidence()
    assert ev["spread"] == pytest.approx(200e6 * 59 / 60, rel=0.1)


class Counting(TrendDetector):
    judged = 0

    def _judge(self, k: int, now: float) -> None:
        self.judged += 1
        super()._judge(k, now)


def test_cost_per_sample_is_bounded_whatever_the_sampling() -> None:
    """O(1) amortised: at 5-minute samples as at 1 s, a sample judges at most a few scales (the issue saw
    every 5-minute sample close a bucket and rerun the whole test)."""
    for dt, bound in ((1.0, 0.3), (300.0, 0.6)):
        det = Counting(limit=1e12)
        for i in range(5000):
            det.update(1e8 + 1000.0 * i, i * dt)
        assert det.judged / 5000 <= bound, (dt, det.judged)


def test_state_round_trip_mid_stream() -> None:
    det = TrendDetector(limit=1e9)
    r = random.Random(8)
    data = [(100e6 + 30_000.0 * i + r.gauss(0, 1e6), float(i)) for i in range(8000)]
    for v, t in data[:4000]:
        det.update(v, t)
    twin = TrendDetector.from_state(json.loads(json.dumps(det.state())))
    assert [det.update(v, t) for v, t in data[4000:]] == [twin.update(v, t) for v, t in data[4000:]]


def test_synthetic_set_is_deterministic_split_apart_and_labelled() -> None:
    dev, dev2, held = bench.synthetic("dev"), bench.synthetic("dev"), bench.synthetic("heldout")
    assert [s.name for s in dev] == [s.name for s in dev2]
    assert all(np.array_equal(x.values, y.values) for x, y in zip(dev, dev2, strict=True))
    assert not any(np.array_equal(x.values, y.values) for x, y in zip(dev, held, strict=True))
    assert {s.kind for s in dev} == set(bench.LEAK_KINDS) | set(bench.NORMAL_KINDS)
    for s in dev + held:
        assert s.source == "synthetic"
        assert np.isfinite(s.values).all() and len(s.t) == len(s.values)
        if s.leak:
            assert s.leak_start_s is not None and s.leak_start_s < s.t[-1]
            assert s.values[-1] >= 0.9 * s.limit  # a leak runs until it (nearly) reaches its limit
        else:
            assert s.limit == pytest.approx(1.5 * s.values.max())
