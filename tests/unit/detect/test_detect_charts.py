"""Control charts: rules, learning phase, limits, nominal false-alarm rates."""

from __future__ import annotations

import random

import pytest

from enmei.detect.charts import (
    CUSUM,
    EWMA,
    SHEWHART_RULES,
    Shewhart,
    classic_centre_sigma,
    cusum_arl0,
    robust_centre_sigma,
)


def learned(chart: Shewhart | EWMA | CUSUM, n: int, seed: int = 0) -> random.Random:
    r = random.Random(seed)
    for i in range(n):
        chart.update(r.gauss(0.0, 1.0), float(i))
    return r


def feed_z(chart: Shewhart, zs: list[float]) -> list[float]:
    return [chart.update(chart.centre + z * chart.sigma, 1000.0 + i) for i, z in enumerate(zs)]


def nelson() -> Shewhart:
    c = Shewhart(learning=200, rules="nelson")
    learned(c, 200)
    return c


def test_learning_phase_scores_zero_then_fixes_limits() -> None:
    c = Shewhart(learning=50)
    r = random.Random(1)
    scores = [c.update(10 + r.gauss(0, 2), float(i)) for i in range(50)]
    assert scores == [0.0] * 50
    assert c.learned
    assert c.centre == pytest.approx(10, abs=1.0)
    assert c.sigma == pytest.approx(2, rel=0.3)
    ev = c.evidence()
    assert ev["rule"] == "learning"
    c.update(10.0, 50.0)
    ev = c.evidence()
    assert {"value", "centre", "lower", "upper", "z", "rule", "window"} <= set(ev)
    assert ev["lower"] < ev["centre"] < ev["upper"]


@pytest.mark.parametrize(("rule", "zs"), [
    ("beyond_limit", [3.5]),
    ("2of3_beyond_2s", [2.5, 0.1, 2.4]),
    ("4of5_beyond_1s", [1.5, 1.2, 0.2, 1.3, 1.6]),
    ("9_same_side", [0.3] * 9),
    ("6_trending", [-1.0, -0.6, -0.2, 0.2, 0.6, 0.9]),
    ("14_alternating", [0.5 if i % 2 else -0.5 for i in range(14)]),
    ("15_within_1s", [0.1] * 15),
    ("8_outside_1s", [1.5, -1.5] * 4),
])
def test_nelson_rules_fire(rule: str, zs: list[float]) -> None:
    c = nelson()
    feed_z(c, [0.0])  # break any run the learning phase left
    fired = c.evidence()["fired"]
    assert rule not in fired or rule == "15_within_1s"
    scores = feed_z(c, zs)
    assert rule in c.evidence()["fired"]
    assert scores[-1] >= c.alarm_level


def test_western_electric_preset_and_strongest_rule_named() -> None:
    c = Shewhart(learning=200)
    learned(c, 200)
    assert c.rules == SHEWHART_RULES["western_electric"]
    feed_z(c, [0.2] * 7 + [4.0])
    ev = c.evidence()
    assert set(ev["fired"]) >= {"beyond_limit", "8_same_side"}
    assert ev["rule"] == "beyond_limit"  # the rarer evidence wins


def test_no_rule_scores_stay_below_alarm_level() -> None:
    c = Shewhart(learning=200)
    r = learned(c, 200)
    for i in range(3000):
        s = c.update(r.gauss(0, 1), 300.0 + i)
        assert (s >= c.alarm_level) == (c.evidence()["rule"] != "none")


def test_false_alarm_rate_matches_nominal_alpha() -> None:
    c = Shewhart(learning=2000, rules=("beyond_limit",))
    r = learned(c, 2000, seed=7)
    alarms = sum(c.update(r.gauss(0, 1), float(i)) >= c.alarm_level for i in range(40000))
    assert 40000 * 0.0027 * 0.5 < alarms < 40000 * 0.0027 * 1.6


def test_xbar_scores_only_complete_subgroups() -> None:
    c = Shewhart(learning=20, subgroup=5)
    r = random.Random(3)
    for i in range(100):
        c.update(r.gauss(0, 1), float(i))
    assert c.learned
    assert c.update(0.0, 100.0) == 0.0
    assert c.evidence()["rule"] == "filling"
    for i in range(3):
        c.update(2.0, 101.0 + i)
    s = c.update(2.0, 104.0)  # mean of (0, 2, 2, 2, 2) = 1.6 sigma, / sqrt(5) -> 3.6 sigma_xbar
    assert s >= c.alarm_level
    assert c.evidence()["rule"] == "beyond_limit"


def test_ewma_detects_a_small_sustained_shift_faster_than_individuals() -> None:
    e, s = EWMA(learning=300), Shewhart(learning=300, rules=("beyond_limit",))
    r = random.Random(5)
    for i in range(300):
        v = r.gauss(0, 1)
        e.update(v, float(i))
        s.update(v, float(i))
    first_e = first_s = None
    for i in range(400):
        v = r.gauss(1.0, 1)
        if first_e is None and e.update(v, 300.0 + i) >= e.alarm_level:
            first_e = i
        if first_s is None and s.update(v, 300.0 + i) >= s.alarm_level:
            first_s = i
    assert first_e is not None
    assert first_s is None or first_e < first_s


def test_cusum_arl_and_change_point() -> None:
    assert cusum_arl0(5.0, 0.5) == pytest.approx(469, rel=0.02)
    assert cusum_arl0(4.0, 0.5) < cusum_arl0(5.0, 0.5)
    c = CUSUM(learning=300)
    r = learned(c, 300)
    first = None
    for i in range(200):
        s = c.update(r.gauss(0.0 if i < 50 else 1.5, 1.0), 1000.0 + i)
        if first is None and s >= c.alarm_level:
            first = i
    assert first is not None
    assert 50 <= first < 70
    ev = c.evidence()
    assert ev["rule"] == "cusum_up"
    # the last time the statistic left zero: at the shift or in a noise excursion just before it
    assert ev["since"] is not None
    assert 1030.0 <= ev["since"] <= 1000.0 + first


def test_robust_estimation_ignores_outliers() -> None:
    r = random.Random(9)
    clean = [r.gauss(50, 5) for _ in range(500)]
    dirty = clean[:450] + [5000.0] * 50
    centre, sigma = robust_centre_sigma(dirty)
    assert centre == pytest.approx(50, abs=1.5)
    assert sigma == pytest.approx(5, rel=0.15)
    mean, sd = classic_centre_sigma(dirty, individuals=False)
    assert mean > 400
    assert sd > 1000
    # mostly equal values: the MAD is 0, the fallback still gives a spread
    centre, sigma = robust_centre_sigma([1.0] * 80 + [2.0] * 20)
    assert centre == 1.0
    assert sigma > 0.0


def test_unknown_rule_and_bad_parameters() -> None:
    with pytest.raises(ValueError, match="unknown rules"):
        Shewhart(rules=("nope",))
    with pytest.raises(ValueError, match="lam"):
        EWMA(lam=0.0)
    with pytest.raises(ValueError, match="h > 0"):
        CUSUM(h=0.0)
    with pytest.raises(ValueError, match="learning"):
        Shewhart(learning=1)
