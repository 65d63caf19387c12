"""``enmei bench deploy`` end to end, one trial of each kind (a real enmei, real servers, a real load)."""

from __future__ import annotations

import pytest

from enmei.bench import deploy

pytestmark = pytest.mark.integration


def test_bench_deploy_reports_restart_and_handover_side_by_side() -> None:
    out = deploy.run(runs=1, rate=200.0)
    for key in ("failed_requests_restart", "failed_requests_handover", "max_gap_s_restart", "max_gap_s_handover"):
        assert key in out, out
    trials = out["trials"]
    assert [t["outcome"] for kind in ("restart", "restart_held", "handover") for t in trials[kind]] == \
        ["succeeded"] * 3
    # The load was there throughout: at least 200 requests/s to each unit (a 10 % margin for scheduling).
    assert all(r >= 180 for r in out["rate_per_s_measured"]), out["rate_per_s_measured"]
    assert out["failed_requests_handover"] == 0, trials["handover"]
    assert out["failed_requests_restart_held"] == 0, trials["restart_held"]
    # A server that binds its own port refuses connections while it restarts: the comparison is real.
    assert out["failed_requests_restart"] > 0 and "refused" in trials["restart"][0]["errors"], trials["restart"]
    assert out["max_gap_s_restart"] > out["max_gap_s_handover"]
