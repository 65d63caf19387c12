"""Control limits from a live detector, action lists, log tails."""

from __future__ import annotations

import math
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from enmei.detect.pipeline import UnitJudge
from enmei.model import Observation, VerdictKind
from enmei.web.views import line_shape, live_limits_now, log_tail


def engine_with(judge: Any) -> Any:
    return SimpleNamespace(judges={"web": judge}, probes={"web": [SimpleNamespace(name="http")]})


def test_live_limits_are_the_ones_the_detector_reports_in_its_verdicts() -> None:
    judge = UnitJudge("web", learning=40, hold_off_s=0.0)
    assert live_limits_now(engine_with(judge), "web") == {}  # nothing learned yet: no limits invented
    rng = random.Random(7)
    verdicts = []
    for i in range(400):
        latency = 0.010 * math.exp(rng.gauss(0, 0.1)) * (8.0 if i >= 60 else 1.0)
        verdicts += judge.feed(Observation("web", "http", True, float(i), 1e9 + i, {"latency_s": latency}))
        if i == 50:
            live = live_limits_now(engine_with(judge), "web")["http"]
            assert live.lower < live.centre < live.upper and live.source == "live detector"
            assert 0.005 < live.centre < 0.02
    anomaly = next(v for v in verdicts if v.kind is VerdictKind.ANOMALY)
    live = live_limits_now(engine_with(judge), "web")["http"]
    assert live.centre == pytest.approx(anomaly.evidence["centre"])
    assert live.lower == pytest.approx(anomaly.evidence["lower"])
    assert live.upper == pytest.approx(anomaly.evidence["upper"])


def test_no_judge_no_limits() -> None:
    assert live_limits_now(engine_with(None), "web") == {}
    assert live_limits_now(SimpleNamespace(judges={}, probes={}), "web") == {}


def test_log_tail_reads_only_the_end(tmp_path: Path) -> None:
    path = tmp_path / "web.stderr.log"
    path.write_text("x" * 5000 + "\n" + "".join(f"line {i}\n" for i in range(100)))
    out = log_tail(path, lines=3, max_bytes=200)
    assert out["lines"] == ["line 97", "line 98", "line 99"] and out["size"] > 5000
    assert out["shapes"] == [{"shape": "line <n>", "count": 3}]
    assert log_tail(tmp_path / "missing.log")["error"] == "no log yet"
    assert log_tail(None)["error"] == "this backend captures no such log"


def test_line_shape_masks_variable_parts() -> None:
    assert line_shape("pid 4242 at 0xdeadbeef from 10.0.0.1:55") == "pid <n> at <hex> from <ip>"
