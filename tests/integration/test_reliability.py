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
    assert result["detected"] == result["trials"] == 60
    assert result["named_exactly"] == result["named_exactly_of"]
