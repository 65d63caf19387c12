"""The aging benchmark end to end: every leak found before exhaustion, no false alarm."""

from __future__ import annotations

import pytest

from enmei.bench import aging

pytestmark = pytest.mark.integration


def test_aging_benchmark() -> None:
    out = aging.run(seed=0)
    assert {"detection_rate", "false_alarms", "median_delay_s"} <= set(out)
    assert out["detection_rate_exhausting"] == 1.0  # every leak that reaches its limit: found before it
    assert out["detection_rate"] >= 0.5
    assert out["false_alarms"] == 0.0
    assert out["min_lead_s"] > 0.0
