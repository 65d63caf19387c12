"""``enmei bench policy`` measures what it says (a short run: the figures themselves are the bench's)."""

from __future__ import annotations

import pytest

from enmei.bench.policy import GOAL_PER_S, run, stream
from enmei.model import Tick

pytestmark = pytest.mark.integration


def test_a_short_run_reports_its_figures() -> None:
    result = run(400, warmup=100)
    assert result["evaluations"] == 400 and result["sandbox"] == "in-process" and result["stream"] == "troubled"
    assert result["evaluations_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert result["policy_errors"] == 0 and result["decisions"] > 0
    assert result["goal_per_s"] == GOAL_PER_S and result["meets_goal"] == (result["evaluations_per_s"] >= GOAL_PER_S)
    for part in ("incidents", "sandboxed"):
        assert result[part]["evaluations"] == 400 and result[part]["evaluations_per_s"] > 0
    assert set(result["incidents"]["by_handler"]) == {"on_exit", "on_verdict", "on_outcome", "on_tick"}


@pytest.mark.parametrize(("kind", "ticks"), [("troubled", (0.85, 0.99)), ("incidents", (0.15, 0.35))])
def test_the_streams_are_seeded_and_mixed(kind: str, ticks: tuple[float, float]) -> None:
    a, b = stream(600, seed=1, kind=kind), stream(600, seed=1, kind=kind)
    assert a == b
    assert {type(e).__name__ for e, _ in a} == {"Tick", "Verdict", "UnitEvent", "Outcome"}
    share = sum(isinstance(e, Tick) for e, _ in a) / len(a)
    assert ticks[0] < share < ticks[1]
