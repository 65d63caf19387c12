"""Replay: what a policy would have decided over a past journal, as a dry run, beside what was decided.

The events a supervisor passed to its policy are rebuilt from the journal, in the engine's order and
with the engine's gates: an exit (``unit.event`` exited) while no remedy ran on the unit, every verdict
but ``probe_recovered``, every remedy outcome but a cancelled one, and each tick that decided something
(a tick that decided nothing leaves no record; it is not replayed). An event's evaluation is placed
where its first decision was journaled (decisions are journaled when made), else at its own record.

The view: where the original decided, its decision records carry the exact view of their unit and the
time (``view``, ``now``) — those are used. Everything else is rebuilt from the records so far: state and
health from ``unit.state``/``unit.health``, the running remedy from decisions and outcomes, restarts in
the window from the executed restart/escalate decisions, the fixed fields from the unit's nearest exact
view. Times of records without one of the engine's clock readings are estimated from the nearest record
that has one. A supervisor start (``supervisor`` started) starts a fresh history, as it did.

Decisions agree when action, unit, rule, arguments and ``not_before`` are equal; the report counts the
evaluations and decisions that agree and lists those that do not. One policy replays the whole journal;
the versions the supervisor ran (started with, reloaded to) are listed as ``original_policies``. The
journal is read whole into memory. Nothing is executed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.box.query import Reader
from enmei.box.record import Record
from enmei.model import (
    Decision,
    Event,
    Health,
    Outcome,
    RecordKind,
    RemedyState,
    Severity,
    Tick,
    UnitEvent,
    UnitEventKind,
    UnitState,
    Verdict,
    VerdictKind,
)
from enmei.policy.actions import action as action_of
from enmei.policy.base import UnitView, View
from enmei.policy.history import History
from enmei.policy.manager import PolicyManager

__all__ = ["Point", "ReplayReport", "decision_key", "replay", "replay_records"]

_NOT_POLICY = frozenset({"engine", "operator"})
_ENGINE_RULES = frozenset({"manual", "autostart", "monitor-expired"})
_ALIVE = frozenset({UnitState.STARTING, UnitState.RUNNING, UnitState.STOPPING})


def decision_key(d: Mapping[str, Any]) -> str:
    """What must be equal for two decisions to agree."""
    return json.dumps([d.get("action"), d.get("unit"), d.get("rule"), d.get("args") or {}, d.get("not_before")],
                      sort_keys=True, default=str)


@dataclass
class Point:
    """One evaluation: the event, where it sits, and both sides' decisions."""

    seq: int  # the record of the event (for a tick: its first decision)
    kind: str  # exit, verdict, outcome, tick
    unit: str | None
    now: float
    exact: bool  # the view came from the original's decision record
    original: list[dict[str, Any]] = field(default_factory=list)
    replayed: list[dict[str, Any]] = field(default_factory=list)

    @property
    def agree(self) -> bool:
        return sorted(map(decision_key, self.original)) == sorted(map(decision_key, self.replayed))


@dataclass
class ReplayReport:
    policy: str
    journal: str
    points: list[Point] = field(default_factory=list)
    original_policies: list[str] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # the replayed policy's failures

    def summary(self) -> dict[str, Any]:
        orig = sum(len(p.original) for p in self.points)
        new = sum(len(p.replayed) for p in self.points)
        matched = 0
        for p in self.points:
            left = [decision_key(d) for d in p.original]
            for key in map(decision_key, p.replayed):
                if key in left:
                    left.remove(key)
                    matched += 1
        agree = sum(p.agree for p in self.points)
        return {
            "policy": self.policy, "journal": self.journal, "original_policies": self.original_policies,
            "evaluations": len(self.points), "evaluations_agreeing": agree,
            "decisions_original": orig, "decisions_replayed": new, "decisions_matched": matched,
            "agreement": round(matched / max(orig, new), 6) if max(orig, new) else 1.0,
            "exact_views": sum(p.exact for p in self.points), "policy_errors": len(self.errors),
        }


def _view_of(d: Mapping[str, Any]) -> UnitView:
    return UnitView(
        name=str(d["name"]), backend=str(d["backend"]), state=UnitState(d["state"]), health=Health(d["health"]),
        alive=bool(d["alive"]), uptime_s=d.get("uptime_s"), remedy=d.get("remedy"),
        restarts_in_window=int(d["restarts_in_window"]), budget=int(d["budget"]), window_s=float(d["window_s"]),
        next_delay_s=float(d["next_delay_s"]), escalate_retry_s=float(d["escalate_retry_s"]),
        rejuvenate_every_s=d.get("rejuvenate_every_s"), rejuvenate_window_s=float(d["rejuvenate_window_s"]),
        stop_timeout_s=float(d["stop_timeout_s"]), capabilities=_recorded_capabilities(d),
        # views journaled before these were configurable had the shipped policy's constants
        breaker_failures=int(d.get("breaker_failures", 4)), breaker_within_s=float(d.get("breaker_within_s", 120.0)),
        breaker_open_s=float(d.get("breaker_open_s", 300.0)), last_reset=d.get("last_reset"),
        reset_after_s=float(d.get("reset_after_s", 10.0)),
    )


def _recorded_capabilities(d: Mapping[str, Any]) -> frozenset[str]:
    """The capabilities a recorded view had, in today's names.

    Views journaled before ``reboot`` and ``phase_reboot`` were capabilities of their own name a ``qemu``
    unit without them: then the reboots were allowed by backend name, a phase reboot where the unit had
    snapshots. Without this, a replay of such a journal would refuse the VM reboots it recorded.
    """
    caps = set(d.get("capabilities") or ())
    if d.get("backend") == "qemu" and not caps & {"reboot", "phase_reboot"}:
        caps.add("reboot")
        if "snapshot" in caps:
            caps.add("phase_reboot")
    return frozenset(caps)


def _is_policy_decision(body: Mapping[str, Any]) -> bool:
    return body.get("policy") not in _NOT_POLICY and body.get("rule") not in _ENGINE_RULES


class _Units:
    """The units as rebuilt from the records so far."""

    def __init__(self, first_views: Mapping[str, UnitView]) -> None:
        self.views: dict[str, UnitView] = dict(first_views)
        self.state: dict[str, UnitState] = {}
        self.health: dict[str, Health] = {}
        self.started: dict[str, float] = {}
        self.busy: dict[str, tuple[int, str]] = {}  # unit -> (decision seq, action) of the running remedy
        self.restarts: dict[str, deque[float]] = {}

    def exact(self, unit: str, view: UnitView) -> None:
        self.views[unit] = view
        self.state[unit] = view.state
        self.health[unit] = view.health

    def view(self, unit: str, now: float) -> UnitView | None:
        base = self.views.get(unit)
        if base is None:
            return None
        state = self.state.get(unit, base.state)
        recent = [t for t in self.restarts.get(unit, ()) if now - t < base.window_s]
        started = self.started.get(unit)
        alive = state in _ALIVE
        busy = self.busy.get(unit)
        return dataclasses.replace(
            base, state=state, health=self.health.get(unit, base.health), alive=alive,
            uptime_s=(now - started) if alive and started is not None else (base.uptime_s if alive else None),
            remedy=busy[1] if busy else None, restarts_in_window=len(recent))

    def all(self, now: float) -> dict[str, UnitView]:
        return {n: v for n in self.views if (v := self.view(n, now)) is not None}


def replay(policy: PolicyManager, journal: Path) -> ReplayReport:
    """Replay ``journal`` through ``policy`` (see the module docstring). Raises ``BoxError`` if unreadable."""
    with Reader(journal) as reader:
        records = list(reader.records())
    return replay_records(policy, records, str(journal))


@dataclass
class _Pending:
    cause: Record | None  # the event's record; None for a tick
    decisions: list[Record]


def _plan(recs: list[Record], bodies: Mapping[int, Mapping[str, Any]]) -> tuple[dict[int, list[_Pending]],
                                                                                   dict[int, list[_Pending]]]:
    """Evaluations to run before a record (those that decided: at their first decision) and after one
    (those that decided nothing: at their event's record)."""
    by_cause: dict[int, list[Record]] = {}
    ticks: list[list[Record]] = []
    open_tick = False
    for r in recs:
        b = bodies[r.seq]
        if r.kind == RecordKind.DECISION and _is_policy_decision(b):
            cause = b.get("cause_seq")
            if cause is not None:
                by_cause.setdefault(int(cause), []).append(r)
            elif open_tick and bodies[ticks[-1][0].seq].get("now") == b.get("now"):
                ticks[-1].append(r)
            else:
                ticks.append([r])
                open_tick = True
            continue
        if r.kind != RecordKind.ALERT:  # an alert decision's own alert record sits inside its tick's run
            open_tick = False
    before: dict[int, list[_Pending]] = {}
    after: dict[int, list[_Pending]] = {}
    for r in recs:
        if r.kind in (RecordKind.UNIT_EVENT, RecordKind.VERDICT, RecordKind.REMEDY_OUTCOME):
            caused = by_cause.get(r.seq, [])
            pending = _Pending(r, caused)
            (before.setdefault(caused[0].seq, []) if caused else after.setdefault(r.seq, [])).append(pending)
    for run in ticks:
        before.setdefault(run[0].seq, []).append(_Pending(None, run))
    return before, after


def replay_records(policy: PolicyManager, records: Iterable[Record], journal: str = "<records>") -> ReplayReport:
    """``replay`` over records already read (oldest first)."""
    recs = list(records)
    bodies = {r.seq: r.data() for r in recs}
    first_views: dict[str, UnitView] = {}
    policies: list[str] = []
    for r in recs:
        b = bodies[r.seq]
        ran = ((r.kind == RecordKind.SUPERVISOR and b.get("event") == "started")
               or (r.kind == RecordKind.POLICY and b.get("event") in ("loaded", "reloaded")))
        if ran and b.get("policy") is not None and str(b.get("policy")) not in policies:
            policies.append(str(b.get("policy")))
        if r.kind == RecordKind.DECISION and isinstance(b.get("view"), Mapping) and r.unit not in first_views:
            with contextlib.suppress(KeyError, ValueError, TypeError):
                first_views[r.unit] = _view_of(b["view"])
    before, after = _plan(recs, bodies)
    report = ReplayReport(policy.version, journal, original_policies=policies)
    units = _Units(first_views)
    clock = [0.0]  # engine clock - journal clock, from the last record carrying an engine time
    for r in recs:
        b = bodies[r.seq]
        for pending in before.get(r.seq, []):
            _evaluate(policy, pending, bodies, units, clock[0], report)
        _track(r, b, units, clock, policy)
        for pending in after.get(r.seq, []):
            _evaluate(policy, pending, bodies, units, clock[0], report)
    return report


_TIME_KEY: dict[str, str] = {RecordKind.DECISION: "now", RecordKind.VERDICT: "mono",
                             RecordKind.REMEDY_OUTCOME: "ended_mono", RecordKind.UNIT_EVENT: "mono"}


def _engine_time(r: Record, b: Mapping[str, Any]) -> float | None:
    """The engine's clock reading a record carries, if any (the journal's own clock may differ)."""
    key = _TIME_KEY.get(r.kind)
    value = b.get(key) if key else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _track(r: Record, b: Mapping[str, Any], units: _Units, clock: list[float], policy: PolicyManager) -> None:
    t = _engine_time(r, b)
    if t is not None:
        clock[0] = t - r.mono
    now = r.mono + clock[0]
    unit = r.unit
    if r.kind == RecordKind.SUPERVISOR and b.get("event") == "started":
        h = policy.history
        policy.history = History(horizon_s=h.horizon_s, per_key=h.per_key, keys=h.keys, recent=h.recent)
        units.busy.clear()
        units.restarts.clear()
    elif r.kind == RecordKind.UNIT_STATE:
        with contextlib.suppress(ValueError):
            state = UnitState(str(b.get("to")))
            units.state[unit] = state
            if state is UnitState.STARTING:
                units.started[unit] = now
    elif r.kind == RecordKind.HEALTH:
        with contextlib.suppress(ValueError):
            units.health[unit] = Health(str(b.get("to")))
    elif r.kind == RecordKind.DECISION:
        if isinstance(b.get("view"), Mapping):
            with contextlib.suppress(KeyError, ValueError, TypeError):
                units.exact(unit, _view_of(b["view"]))
        action = str(b.get("action"))
        kind = action_of(action)
        if "rejected" not in b and "suppressed" not in b and (kind is None or not kind.engine):
            units.busy[unit] = (r.seq, action)
            if (kind is not None and kind.counts_as_restart) or b.get("counted_as_restart"):
                units.restarts.setdefault(unit, deque(maxlen=256)).append(float(b.get("now", now)))
    elif r.kind == RecordKind.REMEDY_OUTCOME:
        busy = units.busy.get(unit)
        if busy is not None and b.get("decision_seq") == busy[0]:
            del units.busy[unit]


def _event_of(r: Record, b: Mapping[str, Any], now: float) -> Event | None:
    if r.kind == RecordKind.UNIT_EVENT:
        if b.get("event") != str(UnitEventKind.EXITED):
            return None
        detail = {k: v for k, v in b.items() if k not in ("event", "mono")}
        return UnitEvent(r.unit, UnitEventKind.EXITED, float(b.get("mono", now)), detail)
    if r.kind == RecordKind.VERDICT:
        kind = VerdictKind(b["kind"])
        if kind is VerdictKind.PROBE_RECOVERED:
            return None
        return Verdict(b["unit"], b["detector"], kind, Severity(b["severity"]), float(b["mono"]), b["summary"],
                       b.get("evidence") or {})
    if r.kind == RecordKind.REMEDY_OUTCOME:
        state = RemedyState(b["state"])
        if state is RemedyState.CANCELLED or "started_mono" not in b:
            return None
        return Outcome(b["remedy_id"], r.unit, b["action"], state, float(b["started_mono"]), float(b["ended_mono"]),
                       b.get("detail", ""), b.get("data") or {})
    return None


def _as_dict(d: Decision) -> dict[str, Any]:
    return {"action": d.action, "unit": d.unit, "rule": d.rule, "args": dict(d.args), "not_before": d.not_before,
            "reason": d.reason, "policy": d.policy}


def _evaluate(policy: PolicyManager, pending: _Pending, bodies: Mapping[int, Mapping[str, Any]], units: _Units,
              offset: float, report: ReplayReport) -> None:
    caused = pending.decisions
    r = pending.cause
    if r is None:  # a tick: its decisions' time
        now = float(bodies[caused[0].seq]["now"])
        event: Event | None = Tick(now, caused[0].wall)
        kind, unit = "tick", None
        seq = caused[0].seq
    else:
        now = float(bodies[caused[0].seq]["now"]) if caused else r.mono + offset
        try:
            event = _event_of(r, bodies[r.seq], now)
        except (KeyError, ValueError, TypeError):
            event = None
        kind = {RecordKind.UNIT_EVENT: "exit", RecordKind.VERDICT: "verdict"}.get(RecordKind(r.kind), "outcome")
        unit, seq = r.unit, r.seq
    if event is None or (kind == "exit" and unit in units.busy):
        return  # not an event the engine asks the policy about (an exit during a repair is the repair's)
    exact: dict[str, UnitView] = {}
    for d in caused:
        view = bodies[d.seq].get("view")
        if isinstance(view, Mapping):
            with contextlib.suppress(KeyError, ValueError, TypeError):
                exact[d.unit] = _view_of(view)
    for name, view in exact.items():
        units.exact(name, view)
    views = {**units.all(now), **exact}
    decided = policy.decide(event, View(now, views))
    report.errors.extend(n for n in policy.drain_notices() if n.get("event") == "error")
    original = [{"action": bodies[d.seq].get("action"), "unit": d.unit, "rule": bodies[d.seq].get("rule"),
                 "args": bodies[d.seq].get("args") or {}, "not_before": bodies[d.seq].get("not_before"),
                 "reason": bodies[d.seq].get("reason"), "policy": bodies[d.seq].get("policy")} for d in caused]
    report.points.append(Point(seq, kind, unit, now, bool(exact), original, [_as_dict(d) for d in decided]))
