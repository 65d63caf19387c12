"""Incidents from the journal: the chain "observed -> judged -> decided -> repaired" for each one.

The engine links its records by sequence number::

    verdict | unit.event (exited)          the cause (observed and judged)
      decision       body.cause_seq  ->    the cause's seq (None: an operator, autostart, a timer)
        remedy.start    body.decision_seq -> the decision
        remedy.step     body.remedy_id    -> the remedy's start: one phase of it (a shadow update's
                                             clone, boot, snapshot, swap, verify, rollback), with timings
        remedy.outcome  body.decision_seq -> the decision
          decision (a retry)  body.cause_seq -> the outcome's seq: the same incident goes on

:func:`build_incidents` follows these links over records in seq order and returns one
:class:`Incident` per root: every verdict; every exit that a decision answered; every decision without a
cause. A link that points before the records given is looked up with ``fetch`` (when given), so a window
that starts mid-incident still shows where it began; without ``fetch`` such a decision starts its own
incident. Records of other kinds are ignored. Nothing here does I/O but ``fetch``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from enmei.policy.actions import ENGINE_ACTIONS

__all__ = [
    "CHAIN_KINDS",
    "Incident",
    "Rec",
    "Step",
    "build_incidents",
    "filter_incidents",
]

#: The journal record kinds an incident is made of (ask the reader for these).
CHAIN_KINDS = ("verdict", "decision", "remedy.start", "remedy.step", "remedy.outcome", "unit.event")

_CAUSE_EVENTS = frozenset({"exited", "start_failed"})


class _RecordLike(Protocol):
    @property
    def seq(self) -> int: ...

    @property
    def wall(self) -> float: ...

    @property
    def kind(self) -> str: ...

    @property
    def unit(self) -> str: ...

    @property
    def body(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Rec:
    """One journal record with its body decoded (what the incident code and the pages use)."""

    seq: int
    wall: float
    kind: str
    unit: str
    body: Mapping[str, Any]

    @classmethod
    def of(cls, record: _RecordLike) -> Rec:
        """From a ``enmei.box.Record``; a body that is not a JSON object becomes ``{"raw": ...}``."""
        try:
            body = json.loads(record.body)
        except ValueError:
            body = {"raw": record.body}
        if not isinstance(body, dict):
            body = {"raw": body}
        return cls(record.seq, record.wall, record.kind, record.unit, body)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "wall": self.wall, "kind": self.kind, "unit": self.unit, "body": dict(self.body)}


@dataclass
class Step:
    """One decision and what came of it: the remedy's start, its phases (``remedy.step`` records, in
    order) and its outcome, when they exist."""

    decision: Rec
    start: Rec | None = None
    outcome: Rec | None = None
    phases: list[Rec] = field(default_factory=list)

    @property
    def action(self) -> str:
        return str(self.decision.body.get("action", "?"))

    @property
    def state(self) -> str:
        """rejected | suppressed | noted (no remedy to run) | decided | running | the outcome's state."""
        b = self.decision.body
        if b.get("rejected"):
            return "rejected"
        if b.get("suppressed"):
            return "suppressed"
        if self.outcome is not None:
            return str(self.outcome.body.get("state", "?"))
        if self.start is not None:
            return "running"
        if self.action in ENGINE_ACTIONS:
            return "noted"
        return "decided"

    @property
    def duration_s(self) -> float | None:
        d = self.outcome.body.get("duration_s") if self.outcome is not None else None
        return float(d) if isinstance(d, (int, float)) else None

    def phase_list(self) -> list[dict[str, Any]]:
        """The remedy's phases as they ended: ``step``, ``took_s``, ``wall`` and ``seq``, and for a swap
        its ``downtime_s``; a rollback says ``why``; a phase that went wrong says so (``ok`` false)."""
        out = []
        for r in self.phases:
            b = r.body
            took = b.get("took_s")
            item: dict[str, Any] = {"step": str(b.get("step", "?")), "seq": r.seq, "wall": r.wall,
                                    "took_s": float(took) if isinstance(took, (int, float)) else None}
            for key in ("downtime_s", "ok", "why", "failed"):
                if key in b:
                    item[key] = b[key]
            out.append(item)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "state": self.state, "duration_s": self.duration_s,
                "decision": self.decision.as_dict(),
                "start": self.start.as_dict() if self.start else None,
                "phases": self.phase_list(),
                "outcome": self.outcome.as_dict() if self.outcome else None}


@dataclass
class Incident:
    """A cause (None for a decision nobody's verdict caused) and the decisions taken about it, in order."""

    key: int  # the seq of the record that opened it
    unit: str
    cause: Rec | None
    steps: list[Step] = field(default_factory=list)

    @property
    def opened(self) -> float:
        return self.cause.wall if self.cause is not None else self.steps[0].decision.wall

    @property
    def updated(self) -> float:
        walls = [self.opened]
        for s in self.steps:
            walls.extend(r.wall for r in (s.decision, s.start, s.outcome) if r is not None)
            walls.extend(r.wall for r in s.phases)
        return max(walls)

    @property
    def kind(self) -> str:
        """What opened it: a verdict kind, a unit event, or the rule of a decision without a cause."""
        c = self.cause
        if c is None:
            return str(self.steps[0].decision.body.get("rule") or "manual") if self.steps else "?"
        if c.kind == "verdict":
            return str(c.body.get("kind", "verdict"))
        if c.kind == "unit.event":
            return str(c.body.get("event", "event"))
        return c.kind  # a remedy.outcome whose decision is unknown (before the window, or interrupted)

    @property
    def state(self) -> str:
        """The state of the last step; with none, ``judged`` (a verdict nobody acted on) or ``observed``."""
        if self.steps:
            return self.steps[-1].state
        return "judged" if self.cause is not None and self.cause.kind == "verdict" else "observed"

    @property
    def summary(self) -> str:
        c = self.cause
        if c is None:
            d = self.steps[0].decision.body if self.steps else {}
            return str(d.get("reason") or "")
        if c.kind == "verdict":
            return str(c.body.get("summary") or "")
        if c.kind == "unit.event":
            b = c.body
            how = (f"killed by {b['signal']}" if b.get("signal") else
                   f"exit code {b['code']}" if b.get("code") is not None else str(b.get("cause") or b.get("event")))
            return f"{b.get('event')}: {how}"
        return str(c.body.get("detail") or c.kind)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "unit": self.unit, "kind": self.kind, "state": self.state,
                "summary": self.summary, "opened": self.opened, "updated": self.updated,
                "cause": self.cause.as_dict() if self.cause else None,
                "steps": [s.as_dict() for s in self.steps]}


Fetch = Callable[[int], Rec | None]


def build_incidents(records: Iterable[Rec], *, fetch: Fetch | None = None) -> list[Incident]:
    """The incidents in ``records`` (any order; sorted here), oldest first. See the module docstring."""
    incidents: list[Incident] = []
    by_seq: dict[int, Incident] = {}  # cause, decision and outcome seqs -> their incident
    steps: dict[int, Step] = {}  # decision seq -> step
    by_remedy: dict[str, Step] = {}
    exits: dict[int, Rec] = {}  # exits nobody answered yet

    def open_incident(unit: str, cause: Rec | None, key: int) -> Incident:
        inc = Incident(key, unit, cause)
        incidents.append(inc)
        by_seq[key] = inc
        return inc

    def incident_for(cause_seq: Any, rec: Rec) -> Incident:
        if isinstance(cause_seq, int):
            inc = by_seq.get(cause_seq)
            if inc is not None:
                return inc
            cause = exits.pop(cause_seq, None)
            if cause is None and fetch is not None:
                cause = fetch(cause_seq)
            if cause is not None:
                return open_incident(rec.unit, cause, cause.seq)
        return open_incident(rec.unit, None, rec.seq)

    for rec in sorted(records, key=lambda r: r.seq):
        b = rec.body
        if rec.kind == "verdict":
            open_incident(rec.unit, rec, rec.seq)
        elif rec.kind == "unit.event":
            if b.get("event") in _CAUSE_EVENTS:
                exits[rec.seq] = rec
        elif rec.kind == "decision":
            inc = incident_for(b.get("cause_seq"), rec)
            step = Step(rec)
            inc.steps.append(step)
            steps[rec.seq] = step
            by_seq[rec.seq] = inc
        elif rec.kind == "remedy.step":
            rid = b.get("remedy_id")
            owner = by_remedy.get(rid) if isinstance(rid, str) else None
            if owner is not None:  # (a phase whose start is before the window is not shown)
                owner.phases.append(rec)
        elif rec.kind in ("remedy.start", "remedy.outcome"):
            found = _step_for(rec, steps, by_remedy, fetch)
            if found is None:
                if rec.kind == "remedy.outcome":  # e.g. interrupted by a supervisor restart
                    open_incident(rec.unit, rec, rec.seq)
                continue
            step = found
            if step.decision.seq not in by_seq:  # its decision came from ``fetch``
                inc = incident_for(step.decision.body.get("cause_seq"), step.decision)
                inc.steps.append(step)
                by_seq[step.decision.seq] = inc
            if rec.kind == "remedy.start":
                step.start = rec
                rid = b.get("remedy_id")
                if isinstance(rid, str):
                    by_remedy[rid] = step
            else:
                step.outcome = rec
                by_seq[rec.seq] = by_seq[step.decision.seq]
    return incidents


def _step_for(rec: Rec, steps: dict[int, Step], by_remedy: dict[str, Step], fetch: Fetch | None) -> Step | None:
    dseq = rec.body.get("decision_seq")
    if isinstance(dseq, int):
        step = steps.get(dseq)
        if step is None and fetch is not None:
            decision = fetch(dseq)
            if decision is not None and decision.kind == "decision":
                step = steps[dseq] = Step(decision)
        return step
    rid = rec.body.get("remedy_id")
    return by_remedy.get(rid) if isinstance(rid, str) else None


def filter_incidents(incidents: Iterable[Incident], *, unit: str | None = None, kind: str | None = None,
                     action: str | None = None, state: str | None = None) -> list[Incident]:
    """The incidents that match every filter given (``action``: any step took it; ``state``: the last)."""
    out = []
    for inc in incidents:
        if unit and inc.unit != unit:
            continue
        if kind and inc.kind != kind:
            continue
        if action and not any(s.action == action for s in inc.steps):
            continue
        if state and inc.state != state:
            continue
        out.append(inc)
    return out
