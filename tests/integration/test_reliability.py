"""Short versions of the reliability benchmarks: the long runs are `enmei bench crash|tamper`."""

from __future__ import annotations

import pytest

from enmei.bench import crash, tamper

pytestmark = pytest.mark.integration


def test_kill9_of_the_supervisor_loses_nothing_and_repeats_nothing() -> None:
    result = crash.run(points=4, seed=7, settle_s=1.0)
    assert result["lost_records"] == 0, result["notes"]
    assert result["duplicate_remedies"] == 0, result["notes"]
    assert result["unadopted_units"] == 0, result["notes"]
    assert result["verify_failures"] == 0, result["notes"]
    assert result["journal_records"] > 50


def test_every_tampering_is_detected_and_named() -> None:
    result = tamper.run(trials=60, records=600, seed=3)
    # every kind the threat model says can be detected, is (cut-then-restart, replaced journal and a
    # rollback against a witness included: issue 11 D3, D10) ...
    assert result["detected_of_detectable"] == result["detectable"] == 54
    for kind in ("cut_restart", "replace", "rollback_witness"):
        assert result["by_kind"][kind]["detected"] == result["by_kind"][kind]["trials"] == 6
    # ... and what it says cannot be (journal and head rolled back together, no witness) is not claimed
    assert result["by_kind"]["rollback_no_witness"] == {"trials": 6, "detected": 0, "named_exactly": 0,
                                                        "named_at_or_before": 0}
    assert result["named_exactly"] == result["named_exactly_of"]
