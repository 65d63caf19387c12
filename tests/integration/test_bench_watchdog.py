"""``enmei bench watchdog`` runs end to end on real processes: each kill -9 of the watched enmei is seen by
the watcher, restarted by it (not by the bench), journaled by the new enmei as the watcher's report, and
nothing durable is lost or repeated. Fails on the old code: there was no watcher and no bench."""

from __future__ import annotations

import pytest

from enmei.bench import watchdog

pytestmark = pytest.mark.integration


def test_two_kills_are_detected_restored_and_lose_nothing() -> None:
    result = watchdog.run(kills=2, seed=3)
    assert result["kills"] == 2, result["notes"]
    assert result["missing_reports"] == 0, result["notes"]
    assert result["lost_records"] == 0 and result["duplicate_remedies"] == 0, result["notes"]
    assert result["unadopted_units"] == 0 and result["verify_failures"] == 0, result["notes"]
    assert result["detected_median_s"] is not None and 0 < result["detected_median_s"] < result["restored_median_s"]
    assert result["mid_remedy_kills"] == 1
