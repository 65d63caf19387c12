"""Narrowing: the component that deviates first (then most) is the suspect."""

from __future__ import annotations

import json
import random

from enmei.detect.charts import CUSUM, EWMA, Shewhart
from enmei.detect.ensemble import MaxOf
from enmei.detect.narrow import Narrower


def chart() -> MaxOf:
    return MaxOf([Shewhart(learning=100, rules=("beyond_limit",), sigmas=4.0),
                  EWMA(learning=100, sigmas=4.0), CUSUM(learning=100, h=8.0)])


def simulate(shifts: dict[str, tuple[int, float]], n: int = 400, seed: int = 0,
             narrower: Narrower | None = None) -> Narrower:
    """Components sampled in turn once a second; ``shifts[c] = (start, size in sigmas)``."""
    nar = narrower or Narrower(chart, onset_level=0.999)
    r = random.Random(seed)
    comps = ["a", "b", "c", "d"]
    for i in range(n):
        for c in comps:
            start, size = shifts.get(c, (n + 1, 0.0))
            nar.update(c, r.gauss(size if i >= start else 0.0, 1.0), float(i))
    return nar


def test_first_to_deviate_is_the_suspect_even_if_weaker_later() -> None:
    nar = simulate({"b": (300, 4.0), "c": (320, 8.0)})
    ranked = nar.ranking()
    assert [s.component for s in ranked[:2]] == ["b", "c"]
    assert nar.suspect() is not None
    assert nar.suspect().component == "b"
    assert ranked[0].onset_t < ranked[1].onset_t
    assert ranked[1].strength > ranked[0].strength


def test_simultaneous_onsets_ranked_by_strength() -> None:
    nar = simulate({"a": (300, 3.0), "d": (300, 9.0)})
    assert [s.component for s in nar.ranking()[:2]] == ["d", "a"]


def test_episode_ends_after_quiet() -> None:
    nar = Narrower(chart, onset_level=0.999, quiet_s=10.0)
    r = random.Random(1)
    for i in range(150):
        nar.update("x", r.gauss(0, 1), float(i))
    nar.update("x", 6.0, 150.0)
    assert nar.suspect() is not None
    for i in range(151, 200):
        nar.update("x", r.gauss(0, 1), float(i))
    assert nar.suspect() is None


def test_in_control_components_are_not_ranked() -> None:
    assert simulate({}, n=300).ranking() == []


def test_component_cap_and_forget() -> None:
    nar = Narrower(chart, max_components=2)
    assert nar.update("a", 1.0, 0.0) == 0.0
    assert nar.update("b", 1.0, 0.0) == 0.0
    nar.update("c", 1.0, 0.0)
    assert set(nar.detectors) == {"a", "b"}
    nar.forget("a")
    assert set(nar.detectors) == {"b"}
    nar.forget()
    assert nar.detectors == {}


def test_state_round_trip() -> None:
    a = simulate({"b": (300, 4.0)}, n=310, seed=3)
    b = Narrower(chart, onset_level=0.5)
    b.restore(json.loads(json.dumps(a.state(), allow_nan=False)))
    assert b.onset_level == a.onset_level
    simulate({"b": (0, 4.0)}, n=30, seed=4, narrower=a)
    simulate({"b": (0, 4.0)}, n=30, seed=4, narrower=b)
    assert a.ranking() == b.ranking()
