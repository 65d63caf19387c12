"""The aging benchmark's machinery: the recorded set is read as labelled, the counting rules."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from enmei.bench import aging
from enmei.detect.base import StreamingDetector


def test_the_recorded_set_is_there_labelled_and_split() -> None:
    index = json.loads((aging.data_dir() / "index.json").read_text())
    series = index["series"]
    assert {m["split"] for m in series.values()} == {"dev", "heldout"}
    for split in ("dev", "heldout"):
        got = aging.load_recorded(aging.data_dir(), split)
        assert len(got) == sum(1 for m in series.values() if m["split"] == split)
        assert {s.label for s in got} == {"leak", "normal"}
        assert {s.kind for s in got if s.label == "normal"} >= {"buffer_pool", "maxmemory", "cache", "gc",
                                                                "diurnal"}
        for s in got:
            assert s.source == "real" and len(s.t) >= 20 and (np.diff(s.t) > 0).all()
            if s.leak:
                assert s.values.max() <= s.limit * 1.02  # it died at its limit
            else:
                assert s.limit == pytest.approx(1.5 * s.values.max(), rel=1e-6)


class AlarmAt(StreamingDetector):
    """Alarms from ``at`` on: to check the benchmark's counting."""

    kind: ClassVar[str] = "test_alarm_at"

    def __init__(self, at: float) -> None:
        super().__init__()
        self.at = at

    def _step(self, x: float, t: float) -> float:
        return 1.0 if t >= self.at else 0.0

    def _params(self) -> dict[str, Any]:
        return {"at": self.at}

    def _dump(self) -> Any:
        return None

    def _load(self, data: Any) -> None:
        pass


def at(when: float) -> Callable[[float], StreamingDetector]:
    return lambda limit: AlarmAt(when)


def series(name: str, label: str, start: float | None = None) -> aging.Series:
    t = np.arange(100.0)
    return aging.Series(name, label, "k", "synthetic", "dev", t, t.copy(), 200.0, start)


def test_counting_rules() -> None:
    leaks = [series("late", "leak", 50.0)]
    found = aging.evaluate(leaks, at(60.0))
    assert (found["found"], found["false_alarms"]) == (1, 0)
    assert found["median_delay_s"] == 10.0 and found["min_lead_s"] == 39.0
    early = aging.evaluate(leaks, at(10.0))  # before the leak began: a miss and a false alarm
    assert (early["found"], early["false_alarms"]) == (0, 1)
    assert aging.evaluate(leaks, at(math.inf))["found"] == 0  # never: it died first
    normal = aging.evaluate([series("n", "normal")], at(99.0))
    assert (normal["false_alarms"], normal["normal"]) == (1, 1)


def test_no_recorded_series_is_an_empty_part(tmp_path: Path) -> None:
    assert aging.load_recorded(tmp_path, "heldout") == []
