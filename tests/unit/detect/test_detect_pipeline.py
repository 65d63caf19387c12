"""The engine seam: UnitJudge turns observations into ANOMALY and AGING verdicts."""

from __future__ import annotations

import itertools
import json
import math
import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enmei.detect.base import StateFormatError
from enmei.detect.charts import cusum_arl0
from enmei.detect.pipeline import UnitJudge, cusum_h_for_arl0
from enmei.model import Observation, VerdictKind

LIMITS = {"rss_bytes": 512 * 2**20, "num_fds": 1024.0}


def http(t: float, latency: float, probe: str = "http", ok: bool = True) -> Observation:
    return Observation("web", probe, ok, t, 1e9 + t, {"latency_s": latency, "status": 200.0})


def proc(t: float, rss: float, fds: float = 30.0) -> Observation:
    return Observation("web", "proc", True, t, 1e9 + t,
                       {"rss_bytes": rss, "num_fds": fds, "cpu_percent": 2.0, "num_threads": 8.0})


def lat(r: random.Random, median: float = 0.02) -> float:
    return math.exp(r.gauss(math.log(median), 0.25))


def test_latency_shift_gives_an_anomaly_per_slowed_component_naming_itself() -> None:
    judge = UnitJudge("web", learning=200, repeat_s=None)
    r = random.Random(0)
    verdicts = []
    for s in range(2000):
        slow_items = s >= 1000
        slow_root = s >= 1004
        verdicts += judge.feed(http(s, lat(r) * (4 if slow_items else 1), "http:/api/items"))
        verdicts += judge.feed(http(s, lat(r) * (1.8 if slow_root else 1), "http"))
        verdicts += judge.feed(http(s, lat(r), "http:/api/users"))
    # Each slowed component's own stream alarms once (no repeats asked for); the healthy one never.
    assert [v.evidence["component"] for v in verdicts] == ["http:/api/items", "http"]
    v = verdicts[0]
    assert v.kind == VerdictKind.ANOMALY
    assert v.unit == "web"
    assert 1000 <= v.mono <= 1010
    ev = v.evidence
    assert ev["suspect"] == "http:/api/items" == ev["first_deviation"]
    assert ev["side"] == "up" and ev["lower"] == 0.0
    assert ev["lower"] < ev["centre"] < ev["upper"]
    assert ev["value"] > 2 * ev["centre"]
    assert ev["limits"] == [ev["lower"], ev["upper"]]
    assert {"rule", "window", "component", "detector", "z", "ranking", "metric"} <= set(ev)
    json.dumps(ev, allow_nan=False)
    # The root's verdict names the root (its own stream alarmed); the narrowing says items began first.
    root = verdicts[1].evidence
    assert root["suspect"] == "http" and root["first_deviation"] == "http:/api/items"


def test_faster_latency_is_not_an_anomaly_unless_two_sided() -> None:
    for side, expected in (("up", 0), ("both", 1)):
        judge = UnitJudge("web", learning=100, side=side, repeat_s=None)
        r = random.Random(7)
        verdicts = [v for s in range(600) for v in judge.feed(http(s, lat(r) * (0.3 if s >= 300 else 1)))]
        assert len(verdicts) == expected, side
        if verdicts:
            assert verdicts[0].evidence["rule"] in ("cusum_down", "ewma_beyond_limit")


def test_each_probe_has_its_own_hold_off() -> None:
    # /item alarms first; /search then drifts to 3x slower well inside /item's 300 s hold-off: it gets
    # its own verdict, naming itself.
    judge = UnitJudge("web", learning=100, hold_off_s=300.0, repeat_s=None)
    r = random.Random(8)
    verdicts = []
    for s in range(700):
        verdicts += judge.feed(http(s, lat(r) * (5 if 200 <= s < 230 else 1), "http:/item"))
        verdicts += judge.feed(http(s, lat(r) * (3 if s >= 300 else 1), "http:/search"))
        verdicts += judge.feed(http(s, lat(r), "http:/cart"))
    got = [(v.evidence["component"], v.evidence["suspect"], v.mono) for v in verdicts]
    assert [g[:2] for g in got] == [("http:/item", "http:/item"), ("http:/search", "http:/search")]
    assert 200 <= got[0][2] < 210 and 300 <= got[1][2] < 315


def test_a_lasting_slowdown_is_reported_again_every_repeat_s() -> None:
    judge = UnitJudge("web", learning=100, hold_off_s=300.0)  # repeat_s 60 by default
    r = random.Random(9)
    verdicts = [v for s in range(500) for v in judge.feed(http(s, lat(r) * (3 if s >= 200 else 1)))]
    times = [v.mono for v in verdicts]
    assert 200 <= times[0] < 210
    assert [v.evidence["repeat"] for v in verdicts] == [False] + [True] * (len(verdicts) - 1)
    assert len(verdicts) >= 4 and all(b - a == pytest.approx(60, abs=1.01) for a, b in itertools.pairwise(times))


def test_no_false_alarms_in_control() -> None:
    judge = UnitJudge("web")
    r = random.Random(1)
    verdicts = [v for s in range(5000) for v in judge.feed(http(s, lat(r)))]
    assert verdicts == []


def test_hold_off_then_rearm() -> None:
    judge = UnitJudge("web", learning=100, hold_off_s=60.0, quiet_s=10.0, repeat_s=None)
    r = random.Random(2)
    times = []
    for s in range(600):
        bad = 200 <= s < 300 or 400 <= s < 420
        for v in judge.feed(http(s, lat(r) * (10 if bad else 1))):
            times.append(v.mono)
    assert len(times) == 2
    assert 200 <= times[0] < 205
    assert 400 <= times[1] < 405


def test_failed_probes_and_bad_values_are_ignored() -> None:
    judge = UnitJudge("web", learning=50)
    r = random.Random(3)
    for s in range(100):
        judge.feed(http(s, lat(r)))
    assert judge.feed(http(100, 50.0, ok=False)) == []
    assert judge.feed(http(101, math.nan)) == []
    assert judge.feed(http(102, math.inf)) == []
    assert judge.feed(Observation("web", "tcp", True, 103.0, 0.0, {"connect_s": 9.0})) == []
    assert judge.feed(http(99.0, lat(r))) == []  # time going backwards


def test_leak_gives_aging_with_exhaustion_time_and_repeats_hourly() -> None:
    judge = UnitJudge("web", aging_limits=LIMITS)
    r = random.Random(4)
    verdicts = []
    rss = 100 * 2**20
    for s in range(5 * 3600):
        if s > 1800:
            rss += 20_000
        verdicts += judge.feed(proc(float(s), rss + r.gauss(0, 2**20), 30 + r.randint(0, 4)))
    aging = [v for v in verdicts if v.kind == VerdictKind.AGING]
    assert aging
    assert all(v.evidence["metric"] == "rss_bytes" for v in aging)
    first = aging[0]
    # Acted on once the time left is within half the evidence (TrendDetector's urgency), before the limit.
    assert first.mono < 1800 + (LIMITS["rss_bytes"] - 100 * 2**20) / 20_000  # before the limit is reached
    ev = first.evidence
    assert ev["exhaust_in_s"] > 0
    assert ev["limit"] == LIMITS["rss_bytes"]
    assert ev["slope_per_s"] == pytest.approx(20_000, rel=0.2)
    gaps = [b.mono - a.mono for a, b in itertools.pairwise(aging)]
    assert all(g >= 3600 for g in gaps)


def test_reset_forgets_aging() -> None:
    judge = UnitJudge("web", aging_limits=LIMITS)
    for s in range(1000):
        judge.feed(proc(float(s), 1e8 + 1000 * s))
    assert judge.aging
    judge.reset()
    assert not judge.aging
    judge.reset(latency=True)
    assert not judge.narrower.detectors


def test_state_round_trip_gives_identical_verdicts() -> None:
    def stream(judge: UnitJudge, start: int, stop: int) -> list[tuple[float, str, str]]:
        r = random.Random(start)
        out = []
        for s in range(start, stop):
            out += judge.feed(http(s, lat(r) * (5 if s > 900 else 1)))
            out += judge.feed(proc(float(s), 1e8 + 30_000 * s + r.gauss(0, 1e6)))
        return [(v.mono, v.kind.value, v.summary) for v in out]

    a = UnitJudge("web", aging_limits=LIMITS, learning=200)
    stream(a, 0, 800)
    b = UnitJudge.from_state(json.loads(json.dumps(a.state(), allow_nan=False)))
    c = UnitJudge("other")
    c.restore(a.state())
    tail_a, tail_b, tail_c = stream(a, 800, 5000), stream(b, 800, 5000), stream(c, 800, 5000)
    assert tail_a
    assert tail_a == tail_b == tail_c
    with pytest.raises(StateFormatError):
        UnitJudge.from_state({**a.state(), "kind": "novelty"})


def test_cost_per_observation() -> None:
    judge = UnitJudge("web", aging_limits=LIMITS)
    r = random.Random(5)
    obs = []
    for s in range(3000):
        obs.append(http(s, lat(r), "http:/a"))
        obs.append(http(s, lat(r), "http:/b"))
        obs.append(proc(float(s), 1e8 + r.gauss(0, 1e6)))
    started = time.perf_counter()
    for o in obs:
        judge.feed(o)
    per = (time.perf_counter() - started) / len(obs)
    assert per < 200e-6  # the aim is < 50 µs; leave room for a loaded test machine


def test_cusum_limit_for_arl() -> None:
    h = cusum_h_for_arl0(1e6)
    assert cusum_arl0(h, 0.5) == pytest.approx(1e6, rel=1e-6)


bad_values = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(-1.0), st.just(0.0),
                       st.just(1e308), st.none(), st.text(max_size=3))
observations = st.lists(st.tuples(
    st.sampled_from(["http", "http:/a", "proc", "tcp"]), st.booleans(),
    st.floats(min_value=-1e6, max_value=1e6) | st.just(math.nan), bad_values, bad_values),
    max_size=120)


@settings(max_examples=40, deadline=None)
@given(obs=observations)
def test_bad_observations_never_crash(obs: list[tuple[str, bool, float, object, object]]) -> None:
    judge = UnitJudge("web", aging_limits=LIMITS, learning=5, aging_warmup_s=0.0, aging_bucket_s=1.0,
                      aging_min_buckets=6, aging_window=12)
    for probe, ok, mono, a, b in obs:
        values = {"latency_s": a, "rss_bytes": b, "num_fds": a}
        for v in judge.feed(Observation("web", probe, ok, mono, 0.0, values)):  # type: ignore[arg-type]
            assert v.kind in (VerdictKind.ANOMALY, VerdictKind.AGING)
            json.dumps(v.evidence, allow_nan=False)
    json.dumps(judge.state(), allow_nan=False)


def test_isolated_slow_requests_do_not_alarm_but_a_slowdown_does() -> None:
    judge = UnitJudge("web")
    r = random.Random(6)
    verdicts = []
    for s in range(4000):
        x = lat(r)
        if s % 97 == 0:
            x *= 50  # a GC pause, now and then
        if s >= 3000:
            x *= 2
        verdicts += judge.feed(http(s, x))
    firsts = [v for v in verdicts if not v.evidence["repeat"]]  # the slowdown lasts: repeats every 60 s
    assert len(firsts) == 1
    assert 3000 <= firsts[0].mono < 3030 and verdicts[0] is firsts[0]
