"""``enmei bench policy`` measures what it says (a short run: the figures themselves are the bench's)."""

from __future__ import annotations

import pytest

from enmei.bench.policy import GOAL_PER_S, run, stream
from enmei.model import Tick

pytestmark = pytest.mark.integration


def test_a_short_run_reports_its_figures() -> None:
    result = run(400, warmup=100)
    assert result["evaluations"] == 400 and result["sandbox"] == "process"
    assert result["evaluations_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["policy_errors"] == 0 and result["decisions"] > 0
    assert result["goal_per_s"] == GOAL_PER_S and result["meets_goal"] == (result["evaluations_per_s"] >= GOAL_PER_S)


def test_the_stream_is_seeded_and_mixed() -> None:
    a, b = stream(300, seed=1), stream(300, seed=1)
    assert a == b
    kinds = {type(e).__name__ for e, _ in a}
    assert kinds == {"Tick", "Verdict", "UnitEvent", "Outcome"}
    assert 0.15 < sum(isinstance(e, Tick) for e, _ in a) / len(a) < 0.35
