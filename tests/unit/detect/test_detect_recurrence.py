"""The recurrence discount (enmei.detect.recurrence) and the novelty detector's hour-given-value rule."""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import pytest

from enmei.detect.base import StreamingDetector, detector_from_state
from enmei.detect.metric import scorer
from enmei.detect.novelty import NoveltyDetector
from enmei.detect.recurrence import RecurrenceDiscount


class Scripted(StreamingDetector):
    """A calibrated detector whose nominal alpha per sample is given by the sample's value itself
    (``x`` is ``-ln alpha``; 0 means nothing to report): the I/O edge the discount reads."""

    kind: ClassVar[str] = "scripted"

    def _step(self, x: float, t: float) -> float:
        self._ev = {"value": x}
        return 0.0 if x <= 0.0 else x / (1.0 + x)  # score = s/(1+s), s = -ln alpha

    def alpha_of(self, score: float) -> float:
        if not score > 0.0:
            return 1.0
        return math.exp(-score / (1.0 - score))

    def level_for(self, alpha: float) -> float:
        s = -math.log(alpha)
        return s / (1.0 + s)

    def _params(self) -> dict[str, Any]:
        return {}

    def _dump(self) -> Any:
        return None

    def _load(self, data: Any) -> None:
        pass


def surprises(det: StreamingDetector, xs: list[float]) -> list[float]:
    out = []
    for i, x in enumerate(xs):
        s = det.update(x, float(i))
        out.append(-math.log(det.alpha_of(s)) if s > 0 else 0.0)
    return out


def test_the_first_event_is_untouched_and_the_kth_like_it_is_k_times_less_surprising() -> None:
    det = RecurrenceDiscount(Scripted(), gamma=1.0)
    got = surprises(det, [10.0, 0.0, 10.0, 0.0, 10.0, 10.0])
    assert got[0] == pytest.approx(10.0)
    assert got[2] == pytest.approx(10.0 - math.log(2))
    assert got[4] == pytest.approx(10.0 - math.log(3))
    assert got[5] == pytest.approx(10.0 - math.log(4))
    assert got[1] == got[3] == 0.0  # nothing reported: nothing counted, nothing discounted
    assert det.evidence()["recurrences"] == 3


def test_only_earlier_evidence_at_least_as_strong_counts() -> None:
    det = RecurrenceDiscount(Scripted(), gamma=1.0)
    got = surprises(det, [3.0, 3.0, 3.0, 12.0, 3.0])
    assert got[3] == pytest.approx(12.0)  # three weaker ones before it: a new strength, not a recurrence
    assert got[4] == pytest.approx(3.0 - math.log(5))  # four before it were at least as strong
    assert RecurrenceDiscount(Scripted(), gamma=0.0).update(5.0, 0.0) == Scripted().update(5.0, 0.0)


def test_a_discount_below_nothing_reports_nothing_and_bad_arguments_are_refused() -> None:
    det = RecurrenceDiscount(Scripted(), gamma=2.0)
    got = surprises(det, [0.5] * 5)
    assert got[0] == pytest.approx(0.5) and got[4] == 0.0
    for bad in ({"gamma": -1.0}, {"gamma": math.nan}, {"bin_width": 0.0}, {"bins": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            RecurrenceDiscount(Scripted(), **bad)


def test_memory_is_bounded_and_the_state_round_trips() -> None:
    det = RecurrenceDiscount(NoveltyDetector(learning=60, resolutions=(4, 8), rest=1), bins=50)
    xs = [(i % 7) + (40.0 if i % 97 == 0 else 0.0) for i in range(3000)]
    first = [det.update(x, 60.0 * i) for i, x in enumerate(xs[:2000])]
    assert max(first) > 0.0
    state = json.loads(json.dumps(det.state(), allow_nan=False))
    assert len(state["data"]["body"]["hist"]) <= 50
    copy = detector_from_state(state)
    assert [copy.update(x, 60.0 * i) for i, x in enumerate(xs[2000:], 2000)] == \
        [det.update(x, 60.0 * i) for i, x in enumerate(xs[2000:], 2000)]


def test_a_staircase_alarms_less_with_the_discount() -> None:
    """A series that steps to a new level every 300 samples: each step is as new as the first to the
    novelty detector, but a recurrence to the discount — the default scorer reports the later steps
    well below the first."""
    xs = [float(i // 300) for i in range(3000)]
    plain = NoveltyDetector(learning=300, rest=1)
    ours = scorer(learning=300, rest=1)
    p = [plain.update(x, 60.0 * i) for i, x in enumerate(xs)]
    o = [ours.update(x, 60.0 * i) for i, x in enumerate(xs)]
    steps = list(range(600, 3000, 300))
    assert o[steps[0]] == pytest.approx(p[steps[0]])
    assert all(o[s] < p[s] for s in steps[2:])
    assert o[steps[-1]] < o[steps[0]]


def test_an_hour_of_day_is_news_only_for_a_value_already_known() -> None:
    """A value in a cell never seen is news to ``sequence``; with ``hour_given_value`` (the default)
    the ``hour`` family does not count it a second time, but a known value at a new hour still is."""
    day = 86400.0
    learn = [(float(i % 3), 600.0 * i) for i in range(200)]  # values 0..2, only within the first 33 h
    for given, hour_news in ((True, False), (False, True)):
        det = NoveltyDetector(learning=200, rest=1, hour_given_value=given)
        for x, t in learn:
            det.update(x, t)
        det.update(50.0, 3 * day)  # a cell never seen
        assert (det.evidence()["surprises"]["hour"] > 0.0) is hour_news
    det = NoveltyDetector(learning=24, rest=1, resolutions=(4,))
    for i in range(24):
        det.update(float(i % 2), 60.0 * i)  # values 0, 1, all in hour 0
    det.update(1.0, 5 * 3600.0 + 10)  # known value, hour 5 never seen with it
    assert det.evidence()["surprises"]["hour"] > 0.0
