"""Threshold: alarm once, hold off, re-arm after quiet; repeats; state."""

from __future__ import annotations

import json
import math

import pytest

from enmei.detect.base import StateFormatError, Threshold


def drive(th: Threshold, scores: list[float], t0: float = 0.0) -> list[float]:
    """Times of the alarms for one score per second."""
    return [t0 + i for i, s in enumerate(scores) if th.judge(s, t0 + i, {"rule": "r"}) is not None]


def test_alarms_once_per_episode_and_rearms_after_hold_off_and_quiet() -> None:
    th = Threshold(0.9, hold_off_s=100, quiet_s=10)
    scores = [0.0] * 5 + [0.95] * 300 + [0.1] * 20 + [0.95] * 5
    assert drive(th, scores) == [5.0, 325.0]


def test_no_rearm_before_hold_off_even_if_quiet() -> None:
    th = Threshold(0.9, hold_off_s=100, quiet_s=10)
    scores = [0.95] + [0.0] * 50 + [0.95] + [0.0] * 60 + [0.95]
    assert drive(th, scores) == [0.0, 112.0]


def test_repeat_while_the_episode_lasts() -> None:
    th = Threshold(0.9, hold_off_s=100, quiet_s=10, repeat_s=60)
    alarms = []
    for i in range(200):
        a = th.judge(0.99, float(i), {"rule": "x", "value": i})
        if a is not None:
            alarms.append(a)
    assert [a.t for a in alarms] == [0.0, 60.0, 120.0, 180.0]
    assert alarms[0].rule == "x"
    assert alarms[1].evidence["repeat"] is True
    assert alarms[0].evidence["value"] == 0


def test_hysteresis_rearm_level() -> None:
    th = Threshold(0.9, hold_off_s=0, quiet_s=5, rearm_level=0.5)
    # hovering between 0.5 and 0.9 never re-arms
    assert drive(th, [0.95] + [0.7] * 30 + [0.95]) == [0.0]


def test_bad_scores_and_times() -> None:
    th = Threshold(0.9)
    assert th.judge(math.nan, 1.0) is None
    assert th.judge(0.95, math.nan) is not None
    assert th.judge(0.95, -5.0) is None  # backwards: treated as the last time
    with pytest.raises(ValueError, match="level"):
        Threshold(1.5)


def test_state_round_trip() -> None:
    a = Threshold(0.9, hold_off_s=30, quiet_s=5, repeat_s=20)
    b_scores = [0.95, 0.2, 0.95] + [0.0] * 40 + [0.99] * 30
    drive(a, b_scores[:10])
    b = Threshold.from_state(json.loads(json.dumps(a.state(), allow_nan=False)))
    assert drive(a, b_scores[10:], 10.0) == drive(b, b_scores[10:], 10.0)
    with pytest.raises(StateFormatError):
        Threshold.from_state({**a.state(), "version": 2})
