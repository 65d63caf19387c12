"""The default ``latency`` detector: the benchmarked scorer on each probe's log latency, one-sided."""

from __future__ import annotations

import itertools
import math
import random

from enmei.detect.latency import LatencyDetector, LatencyOptions, LatencyStream
from enmei.detect.latency_keys import LEARNING
from enmei.detect.metric import scorer
from enmei.model import Observation, Verdict


def feed(det: LatencyDetector, probe: str, t: float, latency: float) -> list[Verdict]:
    return list(det.feed(Observation("web", probe, True, t, 1e9 + t, {"latency_s": latency}, None, ())).verdicts)


def noisy(rng: random.Random, base: float, sd: float = 0.2) -> float:
    return base * math.exp(rng.gauss(0.0, sd))


def test_a_stream_scores_what_the_benchmarked_scorer_scores_on_the_clipped_log() -> None:
    """One path: after learning, the stream's inner detector is ``scorer(learning)`` fed
    ``max(ln x, learned median)`` (two-sided: ``ln x``), learning values included."""
    rng = random.Random(5)
    xs = [noisy(rng, 0.01) * (4 if 200 <= i < 210 else 1) for i in range(300)]
    for side in ("up", "both"):
        stream = LatencyStream(learning=60, side=side, confirm=1)
        for i, x in enumerate(xs):
            stream.update(x, float(i))
        ref = scorer(60)
        med = stream.median
        for i, x in enumerate(xs):
            y = math.log(x)
            ref.update(max(y, med) if side == "up" else y, float(i))
        assert stream.inner.state() == ref.state()


def test_a_sustained_slowdown_is_judged_within_samples_and_names_its_probe() -> None:
    rng = random.Random(1)
    det = LatencyDetector("web", LatencyOptions(kind="latency"))
    out: list[tuple[int, Verdict]] = []
    for i in range(LEARNING + 400):
        for probe, base in (("root", 0.002), ("items", 0.003), ("search", 0.004)):
            slow = 3.0 if probe == "search" and i >= LEARNING + 300 else 1.0
            out += [(i, v) for v in feed(det, probe, float(i), noisy(rng, base) * slow)]
    first = [(i, v) for i, v in out if not v.evidence["repeat"]]
    assert [v.evidence["suspect"] for _, v in first] == ["search"]
    i, v = first[0]
    assert LEARNING + 300 <= i <= LEARNING + 305  # confirmed by the next sample: one sample late
    assert v.detector == "latency:latency_s" and v.evidence["probe"] == v.evidence["component"] == "search"
    assert v.evidence["value"] > v.evidence["centre"] and v.evidence["side"] == "up"
    assert v.evidence["alpha"] < v.evidence["alpha_level"] == 1e-6
    assert set(det.limits()) == {"root.latency_s", "items.latency_s", "search.latency_s"}
    # While it lasts: a repeat every repeat_s (60 samples here), evidence "repeat", rule "lasting".
    repeats = [i for i, v in out if v.evidence["repeat"]]
    assert repeats and all(b - a == 60 for a, b in itertools.pairwise(repeats))
    assert all(v.evidence["rule"] == "lasting" for _, v in out if v.evidence["repeat"])


def test_faster_is_no_anomaly_one_sided_but_is_two_sided() -> None:
    """A speed-up to a quarter, held for 300 samples, then back: no verdict one-sided; two-sided it is one
    (a quarter: ln 4 is 7 sigmas of this noise, so the confirming sample is beyond the learned spread too)."""
    def run(side: str) -> list[Verdict]:
        rng = random.Random(2)
        det = LatencyDetector("web", LatencyOptions(kind="latency", side=side, hold_off_s=0))
        got: list[Verdict] = []
        for i in range(LEARNING + 700):
            fast = 1 / 4 if LEARNING + 200 <= i < LEARNING + 500 else 1.0
            got += feed(det, "items", float(i), noisy(rng, 0.003) * fast)
        return got

    assert run("up") == []
    both = run("both")
    assert both and both[0].evidence["value"] < both[0].evidence["centre"]


def test_an_isolated_slow_request_is_no_anomaly() -> None:
    """Single 20x slow requests (one in 50) never make a verdict: a score needs the next sample too."""
    rng = random.Random(3)
    det = LatencyDetector("web", LatencyOptions(kind="latency"))
    got: list[Verdict] = []
    for i in range(LEARNING + 2000):
        spike = 20.0 if i > LEARNING and i % 50 == 0 else 1.0
        got += feed(det, "http", float(i), noisy(rng, 0.003) * spike)
    assert got == []


def test_a_verdict_on_one_probe_never_holds_off_another() -> None:
    rng = random.Random(4)
    det = LatencyDetector("web", LatencyOptions(kind="latency", repeat_s=None))
    got: list[tuple[int, str]] = []
    for i in range(LEARNING + 200):
        for probe in ("a", "b"):
            slow = 3.0 if (probe == "a" and i >= LEARNING + 50) or (probe == "b" and i >= LEARNING + 100) else 1.0
            got += [(i, v.evidence["probe"]) for v in feed(det, probe, float(i), noisy(rng, 0.003) * slow)]
    assert [p for _, p in got] == ["a", "b"]  # b's verdict inside a's 300 s hold-off
    assert got[1][0] - got[0][0] < 300


def test_bad_input_and_failed_probes_are_skipped() -> None:
    det = LatencyDetector("web", LatencyOptions(kind="latency"))
    for i, value in enumerate([math.nan, math.inf, "slow", None, -1.0]):
        det.feed(Observation("web", "http", True, float(i), 0.0, {"latency_s": value}, None, ()))  # type: ignore[dict-item]
    det.feed(Observation("web", "http", False, 9.0, 0.0, {"latency_s": 9.0}, "timeout", ()))
    # only the finite number (-1.0, floored) was learned
    assert det.streams["http"].state()["data"]["body"]["learn"] == [[math.log(1e-4), 4.0]]


def test_one_slow_request_seen_before_does_not_hide_a_later_sustained_slowdown() -> None:
    """The scorer judges a value by the range it has seen: one 150 ms request (in the learning or after
    it) once hid a 30x slowdown to 60 ms for good. The sustained rule judges it ~8 samples in."""
    for spike_at in (10, LEARNING + 50):
        rng = random.Random(spike_at)
        det = LatencyDetector("web", LatencyOptions(kind="latency", hold_off_s=5))
        t = 0.0
        for i in range(LEARNING + 100):
            feed(det, "http", t, 0.15 if i == spike_at else noisy(rng, 0.002, 0.3))
            t += 1.0
        got: list[tuple[int, Verdict]] = []
        for i in range(60):
            got += [(i, v) for v in feed(det, "http", t, noisy(rng, 0.062, 0.1))]
            t += 1.0
        assert got, f"spike at {spike_at}: the sustained slowdown was never judged"
        i, v = got[0]
        assert i <= 10 and v.evidence["rule"] == "sustained" and not v.evidence["repeat"], (i, v.evidence)


def test_the_sustained_rule_stays_silent_on_autocorrelated_noise_and_survives_a_restore() -> None:
    """AR(1) log-latency noise (r 0.8): the widening for autocorrelation keeps the rule silent; the
    level and the rule's edge are saved in the state."""
    rng = random.Random(3)
    stream = LatencyStream(learning=LEARNING)
    level = scorer(LEARNING).level_for(1e-6)
    z, rules = 0.0, []
    for i in range(6000):
        z = 0.8 * z + math.sqrt(1 - 0.8 ** 2) * rng.gauss(0.0, 0.2)
        if stream.update(0.01 * math.exp(z), float(i)) >= level:
            rules.append(stream.evidence().get("rule"))
    assert "sustained" not in rules, rules
    again = LatencyStream.from_state(stream.state())
    assert again.sustained_level == stream.sustained_level and again.state() == stream.state()
