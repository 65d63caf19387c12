"""``enmei bench fleet`` at a small size: every figure the issue asks for is there (measured or said to be
not measured), and the ones measured meet their goals."""

from __future__ import annotations

import json

import pytest

from ..conftest import enmei

pytestmark = pytest.mark.integration


@pytest.mark.timeout(180)
def test_bench_fleet_reports_postgres_beside_sqlite_and_failover() -> None:
    r = enmei("bench", "fleet", "--json", "--records", "2000", "--trials", "2", "--ttl-s", "1", timeout=170)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out["journal_append_per_s_postgres"] > 0 and out["journal_append_per_s_sqlite"] > 0
    assert out["postgres_kill"]["chain_ok"] and out["lost_records"] == 0
    assert out["postgres_kill"]["records_acknowledged"] >= 3000
    assert len(out["failover_detect_s_all"]) == 2 and out["split_brain_events"] == 0 and out["fenced_actions"] > 0
    assert out["failover_detect_s_max"] < 1.0 + 5.0  # the TTL plus a loaded machine's slack
    assert out["failover_restore_s"] == "not measured" and out["duplicate_remedies"] == "not measured"
