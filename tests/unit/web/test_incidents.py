"""Incident chains from journal records: links, retries, windows that start mid-incident, filters."""

from __future__ import annotations

from typing import Any

from enmei.report.incidents import Rec, build_incidents, filter_incidents


def rec(seq: int, record_kind: str, unit: str = "web", **body: Any) -> Rec:
    return Rec(seq, 1000.0 + seq, record_kind, unit, body)


CHAIN = [
    rec(1, "unit.event", event="started"),
    rec(2, "verdict", kind="probe_failed", summary="probe http failed 3 times"),
    rec(3, "decision", action="restart", rule="probe-restart", policy="builtin-1", cause_seq=2, reason="r"),
    rec(4, "remedy.start", action="restart", remedy_id="web-3", decision_seq=3),
    rec(5, "unit.event", event="exited", signal="SIGKILL"),  # the restart's own stop: no decision cites it
    rec(6, "remedy.outcome", action="restart", remedy_id="web-3", decision_seq=3, state="failed", duration_s=1.5),
    rec(7, "decision", action="restart", rule="retry-after-failure", policy="builtin-1", cause_seq=6),
    rec(8, "remedy.start", action="restart", remedy_id="web-7", decision_seq=7),
    rec(9, "remedy.outcome", action="restart", remedy_id="web-7", decision_seq=7, state="succeeded", duration_s=0.5),
    rec(10, "unit.event", "db", event="exited", code=3),
    rec(11, "decision", "db", action="restart", rule="exit-restart", cause_seq=10),
    rec(12, "decision", "db", action="restart", rule="manual", policy="operator:web", cause_seq=None,
        suppressed="remedy db-11 (restart) is running"),
    rec(13, "verdict", kind="probe_recovered", summary="probe http passes again"),
    rec(14, "decision", action="fly", rule="manual", cause_seq=None, rejected="no remedy named 'fly'"),
]


def test_a_retry_continues_its_incident() -> None:
    incs = {i.key: i for i in build_incidents(CHAIN)}
    probe = incs[2]
    assert probe.kind == "probe_failed" and probe.unit == "web"
    assert [(s.action, s.state, s.duration_s) for s in probe.steps] == [("restart", "failed", 1.5),
                                                                       ("restart", "succeeded", 0.5)]
    assert probe.state == "succeeded" and probe.summary == "probe http failed 3 times"
    assert probe.opened == 1002.0 and probe.updated == 1009.0


def test_exits_are_causes_only_when_answered() -> None:
    incs = build_incidents(CHAIN)
    assert [i.key for i in incs] == [2, 10, 12, 13, 14]
    db = incs[1]
    assert db.kind == "exited" and db.summary == "exited: exit code 3" and db.state == "decided"


def test_decisions_without_a_cause_and_their_states() -> None:
    incs = {i.key: i for i in build_incidents(CHAIN)}
    assert incs[12].kind == "manual" and incs[12].state == "suppressed" and incs[12].cause is None
    assert incs[14].state == "rejected"
    assert incs[13].kind == "probe_recovered" and incs[13].state == "judged" and not incs[13].steps


def test_order_of_input_does_not_matter() -> None:
    a = [i.as_dict() for i in build_incidents(CHAIN)]
    b = [i.as_dict() for i in build_incidents(list(reversed(CHAIN)))]
    assert a == b


def test_a_window_that_starts_mid_incident_fetches_the_cause() -> None:
    by_seq = {r.seq: r for r in CHAIN}
    window = [r for r in CHAIN if r.seq >= 6]
    incs = build_incidents(window, fetch=by_seq.get)
    first = incs[0]
    assert first.key == 2 and first.kind == "probe_failed"
    assert [s.decision.seq for s in first.steps] == [3, 7] and first.state == "succeeded"
    # without fetch the outcome is the first thing known, and the retry it caused follows it
    bare = build_incidents(window)
    assert bare[0].key == 6 and bare[0].kind == "remedy.outcome"
    assert [s.decision.seq for s in bare[0].steps] == [7] and bare[0].state == "succeeded"


def test_an_outcome_without_a_decision_is_kept() -> None:
    incs = build_incidents([rec(1, "remedy.outcome", remedy_id="web-0", state="cancelled",
                                detail="interrupted by a supervisor restart; not repeated")])
    assert incs[0].kind == "remedy.outcome" and "interrupted" in incs[0].summary


def test_filters() -> None:
    incs = build_incidents(CHAIN)
    assert [i.key for i in filter_incidents(incs, unit="db")] == [10, 12]
    assert [i.key for i in filter_incidents(incs, kind="manual")] == [12, 14]
    assert [i.key for i in filter_incidents(incs, action="restart", state="succeeded")] == [2]
    assert filter_incidents(incs, unit="web", kind="exited") == []


def test_a_record_with_a_non_object_body() -> None:
    class Raw:
        seq, wall, kind, unit, body = 1, 1.0, "verdict", "web", "[1, 2]"

    r = Rec.of(Raw())
    assert r.body == {"raw": [1, 2]}
    assert build_incidents([r])[0].summary == ""


UPDATE = [
    rec(20, "decision", "vm", action="shadow_update", rule="manual", policy="operator:ctl", cause_seq=None,
        reason="requested by operator"),
    rec(21, "remedy.start", "vm", action="shadow_update", remedy_id="vm-20", decision_seq=20),
    rec(22, "remedy.step", "vm", action="shadow_update", remedy_id="vm-20", step="clone", took_s=0.61, pid=7),
    rec(23, "remedy.step", "vm", action="shadow_update", remedy_id="vm-20", step="boot", took_s=9.8),
    rec(24, "unit.event", "vm", event="started", pid=8),
    rec(25, "remedy.step", "vm", action="shadow_update", remedy_id="vm-20", step="snapshot", took_s=1.2),
    rec(26, "remedy.step", "vm", action="shadow_update", remedy_id="vm-20", step="swap", took_s=0.4,
        downtime_s=0.302),
    rec(27, "remedy.step", "vm", action="shadow_update", remedy_id="vm-20", step="verify", took_s=3.1, ok=True),
    rec(28, "remedy.step", "vm", action="restart", remedy_id="vm-other", step="stray"),  # another remedy's
    rec(29, "remedy.outcome", "vm", action="shadow_update", remedy_id="vm-20", decision_seq=20, state="succeeded",
        duration_s=15.3),
]


def test_an_update_is_one_incident_with_its_phases_and_timings() -> None:
    (inc,) = build_incidents(UPDATE)
    (step,) = inc.steps
    assert (inc.kind, inc.state, step.action, step.duration_s) == ("manual", "succeeded", "shadow_update", 15.3)
    assert [(p["step"], p["took_s"]) for p in step.phase_list()] == [
        ("clone", 0.61), ("boot", 9.8), ("snapshot", 1.2), ("swap", 0.4), ("verify", 3.1)]
    assert step.phase_list()[3]["downtime_s"] == 0.302 and step.phase_list()[4]["ok"] is True
    assert inc.as_dict()["steps"][0]["phases"][0] == {"step": "clone", "seq": 22, "wall": 1022.0, "took_s": 0.61}
    assert inc.updated == 1029.0
    # an update interrupted by a supervisor restart: the successor's outcome (by remedy id) closes it
    cut = [r for r in UPDATE if r.seq <= 23] + [rec(40, "remedy.outcome", "vm", action="shadow_update",
                                                   remedy_id="vm-20", state="cancelled", started_seq=21,
                                                   detail="interrupted by a supervisor restart; not repeated")]
    (inc,) = build_incidents(cut)
    assert inc.state == "cancelled" and [p["step"] for p in inc.steps[0].phase_list()] == ["clone", "boot"]
