"""The contract every streaming detector keeps (see enmei.detect.base), run over every detector; and the
contract of unit detectors (enmei.detect.protocol), run over every registered kind."""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enmei.detect import registry
from enmei.detect.aging import TrendDetector
from enmei.detect.alarm import OneAlarmPerEpisode, rested
from enmei.detect.base import StateFormatError, StreamingDetector, detector_from_state, detector_kinds
from enmei.detect.baselines import RollingRobustZ, WindowedGaussian
from enmei.detect.charts import CUSUM, EWMA, Shewhart
from enmei.detect.ensemble import MaxOf
from enmei.detect.latency import LatencyStream
from enmei.detect.novelty import NoveltyDetector
from enmei.detect.protocol import DetectorContext, HealthReport, InjectorInfo, Judgement, Limit, ProbeInfo, UnitDetector
from enmei.detect.recurrence import RecurrenceDiscount
from enmei.model import Health, Observation, Severity, Verdict, VerdictKind, as_dict

Factory = Callable[[], StreamingDetector]

FACTORIES: dict[str, Factory] = {
    "shewhart_we": lambda: Shewhart(learning=20),
    "shewhart_nelson": lambda: Shewhart(learning=20, rules="nelson"),
    "xbar": lambda: Shewhart(learning=10, subgroup=4),
    "ewma": lambda: EWMA(learning=20),
    "cusum": lambda: CUSUM(learning=20),
    "classic_ewma": lambda: EWMA(learning=20, robust=False),
    "max_of": lambda: MaxOf([Shewhart(learning=20), EWMA(learning=20), CUSUM(learning=20)]),
    "windowed_gaussian": lambda: WindowedGaussian(window=50),
    "novelty": lambda: NoveltyDetector(learning=60, resolutions=(4, 8), rest=10, season_s=20 * 60.0),
    "rolling_robust_z": lambda: RollingRobustZ(window=100),
    "one_alarm_per_episode": lambda: OneAlarmPerEpisode(RollingRobustZ(window=100), rest=15),
    "novelty_rested": lambda: OneAlarmPerEpisode(NoveltyDetector(learning=60, resolutions=(4, 8), rest=1,
                                                                 season_s=20 * 60.0), rest=10),
    "recurrence_discount": lambda: RecurrenceDiscount(NoveltyDetector(learning=60, resolutions=(4, 8), rest=1,
                                                                      season_s=20 * 60.0)),
    "aging": lambda: TrendDetector(limit=500.0, bucket_s=1200.0, window=12, min_buckets=9, warmup_s=20.0),
    "latency_stream": lambda: LatencyStream(learning=60),
    "latency_stream_both": lambda: LatencyStream(learning=60, side="both", log=False, confirm=1),
}
ALL = sorted(FACTORIES)


def series(n: int = 600, seed: int = 0) -> list[tuple[float, float]]:
    """A seasonal, slightly trending, noisy series with a spike and a level shift; 60 s apart."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        v = 100 + 10 * math.sin(2 * math.pi * i / 20) + 0.2 * i + r.gauss(0, 1)
        if i == n // 2:
            v += 60
        if i > 3 * n // 4:
            v += 15
        out.append((v, 60.0 * i))
    return out


def run(det: StreamingDetector, data: list[tuple[float, float]]) -> list[float]:
    return [det.update(v, t) for v, t in data]


def roundtrip(det: StreamingDetector) -> StreamingDetector:
    text = json.dumps(det.state(), allow_nan=False)
    return detector_from_state(json.loads(text))


@pytest.mark.parametrize("name", ALL)
def test_scores_are_finite_and_in_unit_interval(name: str) -> None:
    scores = run(FACTORIES[name](), series())
    assert all(0.0 <= s <= 1.0 and math.isfinite(s) for s in scores)
    assert max(scores) > 0.0


@pytest.mark.parametrize("name", ALL)
def test_state_round_trip_gives_identical_scores(name: str) -> None:
    data = series(700, seed=1)
    reference = run(FACTORIES[name](), data)
    for cut in (0, 5, 61, 300, 555):
        det = FACTORIES[name]()
        head = run(det, data[:cut])
        restored = roundtrip(det)
        assert head + run(restored, data[cut:]) == reference, f"diverged after restoring at {cut}"


@pytest.mark.parametrize("name", ALL)
def test_restore_in_place(name: str) -> None:
    data = series(300, seed=2)
    a = FACTORIES[name]()
    run(a, data[:150])
    b = FACTORIES[name]()
    b.restore(json.loads(json.dumps(a.state())))
    assert run(a, data[150:]) == run(b, data[150:])


@pytest.mark.parametrize("name", ALL)
def test_no_look_ahead(name: str) -> None:
    data = series(500, seed=3)
    full = run(FACTORIES[name](), data)
    for k in (1, 77, 250, 499):
        assert run(FACTORIES[name](), data[:k]) == full[:k]


@pytest.mark.parametrize("name", ALL)
def test_bad_states_are_refused(name: str) -> None:
    det = FACTORIES[name]()
    run(det, series(120))
    good = det.state()
    other = "ewma" if good["kind"] != "ewma" else "cusum"
    for bad in ({**good, "kind": other}, {**good, "version": 99}, {**good, "format": "pickle"},
                {**good, "params": None}, {**good, "data": {"t_last": None, "body": {"nonsense": 1}}}):
        with pytest.raises(StateFormatError):
            type(det).from_state(bad)
    with pytest.raises(StateFormatError):
        detector_from_state({**good, "kind": "no-such-detector"})


def test_every_kind_is_restorable() -> None:
    kinds = {f().kind for f in FACTORIES.values()}
    assert kinds == set(detector_kinds())


@pytest.mark.parametrize("name", ALL)
def test_cost_per_sample_does_not_grow(name: str) -> None:
    """O(1): the state stays bounded and late samples cost no more than early ones."""
    r = random.Random(4)
    data = [(float(r.randrange(20)) + 50.0 * (i % 40 < 20), 60.0 * i) for i in range(8000)]
    det = FACTORIES[name]()
    run(det, data[:1000])
    early = time.perf_counter()
    run(det, data[1000:3000])
    early = time.perf_counter() - early
    size_early = len(json.dumps(det.state()))
    run(det, data[3000:6000])
    late = time.perf_counter()
    run(det, data[6000:8000])
    late = time.perf_counter() - late
    size_late = len(json.dumps(det.state()))
    assert size_late <= 1.3 * size_early + 2000
    assert late <= 4.0 * early + 0.05


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
values = st.one_of(finite, st.just(math.nan), st.just(math.inf), st.just(-math.inf),
                   st.sampled_from([1e308, -1e308, 1e-308, 0.0, 1e150, -1e200]))
stamps = st.one_of(st.floats(min_value=-1e12, max_value=1e12), st.just(math.nan), st.just(math.inf))


@pytest.mark.parametrize("name", ALL)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.lists(st.tuples(values, stamps), min_size=0, max_size=150))
def test_bad_input_never_crashes(name: str, data: list[tuple[float, float]]) -> None:
    det = FACTORIES[name]()
    for v, t in data:
        before = json.dumps(det.state(), allow_nan=False) if not math.isfinite(v) else None
        s = det.update(v, t)
        assert 0.0 <= s <= 1.0
        assert math.isfinite(s)
        if before is not None:
            assert s == 0.0
            assert det.evidence()["skipped"] is True
            assert json.dumps(det.state(), allow_nan=False) == before
    json.dumps(det.state(), allow_nan=False)


@pytest.mark.parametrize("name", ALL)
def test_constant_series_then_a_change(name: str) -> None:
    det = FACTORIES[name]()
    scores = [det.update(7.0, 60.0 * i) for i in range(400)]
    assert all(math.isfinite(s) for s in scores)
    # A ramp away from the constant: a change for the charts, a trend for the aging detector.
    after = [det.update(7.0 + 0.05 * (i + 1), 60.0 * (400 + i)) for i in range(400)]
    assert max(after) > max(scores[100:] or [0.0])


@pytest.mark.parametrize("name", ALL)
def test_clock_never_runs_backwards(name: str) -> None:
    det = FACTORIES[name]()
    data = series(200)
    shuffled = [(v, t if i % 7 else t - 1e6) for i, (v, t) in enumerate(data)]
    scores = run(det, shuffled)
    assert all(0.0 <= s <= 1.0 for s in scores)


# -- unit detectors: every registered kind (enmei.detect.protocol) ----------------------------------

CONTEXT = DetectorContext(
    "u", probes=(ProbeInfo("http", "http", 3), ProbeInfo("proc", "process"), ProbeInfo("log", "log")),
    injectors=(InjectorInfo("typing", "keys", "wr_bytes", 100.0),))
ODD_VALUES: list[object] = [math.nan, math.inf, -math.inf, "x", None, -1.0, 1e308, 0.0]


def unit_stream(n: int, seed: int) -> list[Observation]:
    """Mixed observations of the contract's unit: passing and failing probes, a latency slowdown, a
    growing rss, log lines, injections with their reactions, odd values and times that go backwards."""
    r = random.Random(seed)
    out: list[Observation] = []
    for i in range(n):
        t = float(i) if i % 97 else float(i) - 50.0
        slow = 8.0 if n // 2 < i < n // 2 + 40 else 1.0
        ok = r.random() > (0.6 if n // 3 < i < n // 3 + 6 else 0.05)
        vals: dict[str, object] = {"latency_s": 0.01 * math.exp(r.gauss(0, 0.1)) * slow, "status": 200.0}
        if i % 31 == 0:
            vals["latency_s"] = r.choice(ODD_VALUES)
        out.append(Observation("u", "http", ok, t, 1e9 + t, vals, None if ok else "refused"))  # type: ignore[arg-type]
        out.append(Observation("u", "proc", True, t, 1e9 + t, {"rss_bytes": 1e6 + 1e4 * i, "num_fds": 8.0}))
        if i % 5 == 0:
            lines = tuple(r.choice(["GET / 200", "ERROR: boom", "Traceback (most recent call last):", "",
                                    "\x00\ufffd odd", "x" * 500]) for _ in range(r.randrange(0, 6)))
            out.append(Observation("u", "log", True, t, 1e9 + t, {"lines_per_s": float(len(lines))}, None, lines))
        if i % 11 == 0:
            inj_ok = r.random() > 0.2
            moved = r.choice([0.0, 50.0, 500.0, math.nan])
            out.append(Observation("u", "typing", inj_ok, t, 1e9 + t,
                                   {"reaction_wr_bytes": moved} if inj_ok else {}, None if inj_ok else "no keys"))
        if i % 13 == 0:
            out.append(Observation("u", "other", False, math.nan, 0.0, {}, "a probe nobody watches"))
    return out


def build_kind(kind: str) -> UnitDetector:
    return registry.build(CONTEXT, registry.get(kind).options.model_validate(registry.get(kind).example))


def feed_all(det: UnitDetector, stream: list[Observation]) -> list[Judgement]:
    return [det.feed(o) for o in stream]


def unit_contract(kind: str) -> None:
    det = build_kind(kind)
    assert isinstance(det, UnitDetector)
    opts = registry.get(kind).options.model_validate(registry.get(kind).example)
    assert det.kind == kind and det.name == opts.detector_name
    stream = unit_stream(600, seed=5)
    judged = feed_all(det, stream)
    # Every answer is a Judgement of plain, JSON-ready values about this unit.
    for j in judged:
        assert isinstance(j, Judgement)
        for v in j.verdicts:
            assert isinstance(v, Verdict) and v.unit == "u" and isinstance(v.kind, VerdictKind)
            assert isinstance(v.severity, Severity) and v.summary and v.detector
            json.dumps(as_dict(v), allow_nan=False)
        for h in j.health:
            assert isinstance(h, HealthReport) and isinstance(h.health, Health) and h.source
    json.dumps(det.state(), allow_nan=False)
    json.dumps({k: v.as_dict() for k, v in det.limits().items()}, allow_nan=False)
    for lim in det.limits().values():
        assert isinstance(lim, Limit) and lim.lower <= lim.centre <= lim.upper
    # Deterministic, and state()/limits() change nothing.
    twin = build_kind(kind)
    again: list[Judgement] = []
    for o in stream:
        again.append(twin.feed(o))
        twin.state()
        twin.limits()
    assert again == judged
    # reset() is safe at any point, and the detector still answers afterwards.
    det.reset()
    feed_all(det, unit_stream(50, seed=6))
    json.dumps(det.state(), allow_nan=False)
    # Bounded: the state does not grow with the length of the stream.
    long = build_kind(kind)
    feed_all(long, unit_stream(800, seed=7))
    early = len(json.dumps(long.state()))
    feed_all(long, unit_stream(3000, seed=8))
    assert len(json.dumps(long.state())) <= 1.5 * early + 2000


BUILTIN_KINDS = registry.kinds()


@pytest.mark.parametrize("kind", BUILTIN_KINDS)
def test_unit_detector_contract(kind: str) -> None:
    unit_contract(kind)


def test_kinds_registered_later_keep_the_contract_too() -> None:
    """Kinds registered after collection (by another module, e.g. a test's own detector)."""
    for kind in registry.kinds():
        if kind not in BUILTIN_KINDS:
            unit_contract(kind)


def test_some_kinds_have_something_to_say_on_the_contract_stream() -> None:
    """The stream reaches the detectors' verdicts (a contract checked on silence alone proves little)."""
    said = {k: sum(len(j.verdicts) for j in feed_all(build_kind(k), unit_stream(600, seed=5)))
            for k in BUILTIN_KINDS}
    assert all(said[k] > 0 for k in ("probe_failures", "latency", "aging", "reaction", "log_pattern")), said


def test_the_alarm_rule_apart_gives_the_novelty_detectors_own_scores() -> None:
    """The rest rule is a separate component: wrapping a rule-less novelty detector (rest = 1) in it
    gives exactly the scores of the detector with the rule built in."""
    data = series(900, seed=5)
    built_in = run(NoveltyDetector(learning=60, resolutions=(4, 8), rest=25, season_s=20 * 60.0), data)
    apart = run(OneAlarmPerEpisode(NoveltyDetector(learning=60, resolutions=(4, 8), rest=1, season_s=20 * 60.0),
                                   rest=25), data)
    assert apart == built_in and max(apart) > 0.0


def test_the_rule_applied_afterwards_equals_the_streaming_rule() -> None:
    data = series(900, seed=6)
    raw = run(NoveltyDetector(learning=60, resolutions=(4, 8), rest=1, season_s=20 * 60.0), data)
    for rest in (1, 7, 40):
        streaming = run(OneAlarmPerEpisode(NoveltyDetector(learning=60, resolutions=(4, 8), rest=1,
                                                           season_s=20 * 60.0), rest=rest), data)
        assert rested(raw, rest) == streaming
    with pytest.raises(ValueError, match="rest"):
        rested(raw, 0)
