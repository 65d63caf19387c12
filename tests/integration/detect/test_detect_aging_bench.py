"""The aging benchmark end to end on the held-out labelled set (recorded real processes and synthetic
series): every leak found before it dies, no alarm on growth that levels off — and the old detector,
on the recorded part, does not manage both (the full comparison is `enmei bench aging`, minutes long)."""

from __future__ import annotations

import pytest

from enmei.bench import aging

pytestmark = pytest.mark.integration


def test_aging_benchmark_on_the_heldout_set() -> None:
    out = aging.run("heldout", detectors=["enmei"], cost_n=0)
    assert out["real_series"] == 10  # tests/data/aging: the recorded held-out series are there
    assert out["synthetic_series"] > 0
    assert out["detection_rate"] == 1.0
    assert out["false_alarms"] == 0
    assert out["min_lead_s"] > 0.0
    assert out["median_delay_s"] is not None
    assert out["us_per_sample"] > 0
    real = out["detectors"]["enmei"]["real"]
    assert (real["leaks"], real["normal"], real["found"], real["false_alarms"]) == (5, 5, 5, 0)
    recorded = aging.load_recorded(aging.data_dir(), "heldout")
    for name in ("old_defaults", "old_tuned"):
        old = aging.evaluate(recorded, aging.DETECTORS[name])
        assert old["detection_rate"] < 1.0 or old["false_alarms"] > 0, (name, old)
