"""The manager's bounded memory per unit, and how it reaches a policy."""

from __future__ import annotations

import json

from enmei.model import Decision, Outcome, RemedyState, Severity, Tick, UnitEvent, UnitEventKind, Verdict, VerdictKind
from enmei.policy.history import History


def _exit(t: float, unit: str = "api") -> UnitEvent:
    return UnitEvent(unit, UnitEventKind.EXITED, t, {})


def test_events_and_decisions_are_kept_per_unit_in_milliseconds() -> None:
    h = History()
    h.observe(_exit(10.0))
    h.observe(Verdict("api", "d", VerdictKind.ANOMALY, Severity.WARNING, 11.0005, "slow", {}))
    h.observe(Outcome("api-1", "api", "restart", RemedyState.FAILED, 9.0, 12.0, "", {}))
    h.observe(Tick(13.0, 0.0))
    h.decided([Decision("restart", "api", "r", rule="exit-restart"),
               Decision("alert", "api", "a", rule="exit-restart")], 14.0)
    snap = h.snapshot()["api"]
    assert snap["e"] == {"exited": [10_000]}
    assert snap["v"] == {"anomaly": [11_001]}
    assert snap["o"] == {"restart:failed": [12_000]}
    assert snap["d"] == {"exit-restart": [14_000]}  # a rule counts once per evaluation
    assert snap["a"] == {"restart": [14_000], "alert": [14_000]}
    assert snap["r"] == [[11_001, "anomaly", "d", "warning", "slow"]]


def test_bounds_per_key_keys_and_horizon() -> None:
    h = History(per_key=4, keys=3, horizon_s=100.0)
    for i in range(10):
        h.observe(_exit(float(i)))
    assert h.snapshot()["api"]["e"]["exited"] == [6000, 7000, 8000, 9000]
    for k in ("a", "b", "c", "d"):
        h.decided([Decision("none", "api", "x", rule=k)], 50.0 + ord(k))
    assert sorted(h.snapshot()["api"]["d"]) == ["b", "c", "d"]  # the stalest key went
    h.observe(_exit(500.0))
    assert h.snapshot()["api"]["e"]["exited"] == [500_000]
    assert h.snapshot()["api"]["d"] == {}


def test_payload_holds_the_tables_and_recent_verdicts_as_text_and_drops_what_expired() -> None:
    h = History(horizon_s=60.0)
    h.observe(_exit(10.0))
    h.observe(Verdict("api", "d", VerdictKind.PANIC, Severity.CRITICAL, 11.0, "oops", {}))
    text = h.payload(["api", "db"], 20.0)
    data = json.loads(text)
    assert data["db"] == ""
    tables, recent = data["api"]
    assert tables["e"] == {"exited": [10_000]} and json.loads(recent) == [[11_000, "panic", "d", "critical", "oops"]]
    assert h.payload(["api"], 20.0) == h.payload(["api"], 20.0)
    later = json.loads(h.payload(["api"], 100.0))["api"]
    assert later[0]["e"] == {} and json.loads(later[1]) == []


def test_non_finite_times_are_ignored() -> None:
    h = History()
    h.observe(_exit(float("nan")))
    h.observe(Verdict("api", "d", VerdictKind.AGING, Severity.WARNING, float("inf"), "x", {}))
    assert h.snapshot()["api"]["e"] == {} and h.snapshot()["api"]["r"] == []
