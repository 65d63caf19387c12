"""Policy tests: a scenario (TOML) feeds events to a policy and says which decisions must come out.

::

    now = 1000.0                      # the monotonic clock at the start (optional)

    [units.api]                       # what the policy sees of each unit (UnitView fields; the rest default)
    backend = "process"
    budget = 5

    [[step]]
    after_s = 5                       # the clock moves on first (or: at = 1005.0)
    verdict = { unit = "api", kind = "anomaly", severity = "critical", summary = "slow", evidence = { probe = "http" } }
    expect = [ { action = "restart", unit = "api", rule = "anomaly/0" } ]

    [[step]]
    set = { api = { state = "exited", alive = false, uptime_s = false } }   # false clears a field to None
    exit = { unit = "api", code = 1 }  # or: event = { unit, kind = "started" }; outcome = { unit, action, state,
    expect = [ { action = "restart", args = { delay_s = 0.5 } } ]           #   detail }; tick = true

Each step gives one event. ``expect`` lists the decisions in order; each names only what it checks
(action, unit, rule, args — a subset of the keys —, reason as a substring, at). ``expect = []`` means
nothing; a step without ``expect`` only shows what was decided. A step fails when the policy fails
(there is no fallback here) or the decisions differ. History accumulates from step to step, as in the
supervisor; the view changes only by ``set``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.errors import PolicyError
from enmei.model import (
    Decision,
    Event,
    Health,
    Outcome,
    RemedyState,
    Severity,
    Tick,
    UnitEvent,
    UnitEventKind,
    UnitState,
    Verdict,
    VerdictKind,
)
from enmei.policy.base import UnitView, View
from enmei.policy.manager import PolicyManager, smoke_view
from enmei.policy.sandbox import SandboxFactory, WorkerSandbox

__all__ = ["ScenarioResult", "StepResult", "as_json", "decision_dict", "load_scenario", "run_scenario"]

_EVENT_KEYS = ("verdict", "exit", "event", "outcome", "tick")
_STEP_KEYS = {*_EVENT_KEYS, "after_s", "at", "set", "expect"}
_EXPECT_KEYS = {"action", "unit", "rule", "args", "reason", "at"}
_UNIT_FIELDS = {f.name for f in dataclasses.fields(UnitView)}


def decision_dict(d: Decision) -> dict[str, Any]:
    return {"action": d.action, "unit": d.unit, "rule": d.rule, "args": dict(d.args), "reason": d.reason,
            "at": d.not_before, "policy": d.policy}


@dataclass
class StepResult:
    index: int
    line: int | None
    event: str
    decisions: list[dict[str, Any]]
    ok: bool
    problem: str | None = None


@dataclass
class ScenarioResult:
    policy: str
    steps: list[StepResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.steps)


def _step_lines(text: str) -> list[int]:
    return [i + 1 for i, ln in enumerate(text.splitlines()) if re.match(r"\s*\[\[\s*step\s*\]\]", ln)]


def _unit(name: str, fields: Mapping[str, Any], base: UnitView) -> UnitView:
    unknown = sorted(set(fields) - _UNIT_FIELDS)
    if unknown:
        raise ValueError(f"unit {name}: no field {unknown[0]!r} (fields: {', '.join(sorted(_UNIT_FIELDS))})")
    values: dict[str, Any] = {k: (None if v is False and k != "alive" else v) for k, v in fields.items()}
    if "state" in values:
        values["state"] = UnitState(str(values["state"]))
    if "health" in values:
        values["health"] = Health(str(values["health"]))
    if "capabilities" in values:
        values["capabilities"] = frozenset(values["capabilities"] or ())
    return dataclasses.replace(base, **values)


def _event(step: Mapping[str, Any], now: float, index: int) -> Event:
    kinds = [k for k in _EVENT_KEYS if k in step]
    if len(kinds) != 1:
        raise ValueError(f"a step gives exactly one of {', '.join(_EVENT_KEYS)}")
    kind = kinds[0]
    if kind == "tick":
        return Tick(now, now)
    spec = dict(step[kind])
    unit = spec.pop("unit", None)
    if not isinstance(unit, str):
        raise ValueError(f"{kind}: unit = NAME is required")
    if kind == "verdict":
        vk = VerdictKind(spec.pop("kind"))
        return Verdict(unit, str(spec.pop("detector", "scenario")), vk, Severity(spec.pop("severity", "warning")),
                       now, str(spec.pop("summary", vk)), dict(spec.pop("evidence", {})))
    if kind == "outcome":
        duration = float(spec.pop("duration_s", 1.0))
        return Outcome(str(spec.pop("remedy_id", f"{unit}-{index}")), unit, str(spec.pop("action")),
                       RemedyState(spec.pop("state", "failed")), now - duration, now, str(spec.pop("detail", "")),
                       dict(spec.pop("data", {})))
    ek = UnitEventKind(spec.pop("kind", "exited" if kind == "exit" else "started"))
    return UnitEvent(unit, ek, now, spec)


def _matches(want: Mapping[str, Any], got: Mapping[str, Any]) -> str | None:
    unknown = set(want) - _EXPECT_KEYS
    if unknown:
        return f"expect: unknown key {sorted(unknown)[0]!r} (allowed: {', '.join(sorted(_EXPECT_KEYS))})"
    for key, value in want.items():
        if key == "args":
            for ak, av in value.items():
                if got["args"].get(ak) != av:
                    return f"args.{ak} is {got['args'].get(ak)!r}, expected {av!r}"
        elif key == "reason":
            if str(value) not in str(got["reason"]):
                return f"reason {got['reason']!r} does not contain {value!r}"
        elif got.get(key) != value:
            return f"{key} is {got.get(key)!r}, expected {value!r}"
    return None


def _compare(expect: list[Any], got: list[dict[str, Any]]) -> str | None:
    if len(expect) != len(got):
        shown = ", ".join(f"{d['action']} {d['unit']} ({d['rule']})" for d in got) or "nothing"
        return f"expected {len(expect)} decision(s), got {len(got)}: {shown}"
    for i, (want, d) in enumerate(zip(expect, got, strict=True)):
        if not isinstance(want, Mapping):
            return f"expect[{i}] must be a table"
        problem = _matches(want, d)
        if problem:
            return f"decision {i + 1} ({d['action']} {d['unit']}): {problem}"
    return None


def load_scenario(path: Path) -> tuple[dict[str, Any], list[int]]:
    """The scenario's data and the line of each ``[[step]]``; raises ``PolicyError`` when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the scenario: {exc}", file=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        raise PolicyError(f"TOML: {exc}", file=str(path), line=int(m.group(1)) if m else None,
                          column=int(m.group(2)) if m else None) from None
    return data, _step_lines(text)


def run_scenario(policy: Path | None, scenario: Path, *, sandbox: SandboxFactory = WorkerSandbox) -> ScenarioResult:
    """Run a scenario against a policy. Raises ``PolicyError`` if either file is wrong (file:line)."""
    data, lines = load_scenario(scenario)
    file = str(scenario)
    unknown = sorted(set(data) - {"now", "units", "step"})
    if unknown:
        raise PolicyError(f"unknown key {unknown[0]!r} (a scenario has now, [units.NAME] and [[step]])", file=file)
    base = smoke_view().units["smoke"]
    try:
        units = {name: _unit(name, {"name": name, **fields}, base) for name, fields in data.get("units", {}).items()}
    except (ValueError, TypeError) as exc:
        raise PolicyError(str(exc), file=file) from None
    if not units:
        raise PolicyError("a scenario needs at least one [units.NAME]", file=file)
    now = float(data.get("now", 1000.0))
    manager = PolicyManager(policy, sandbox=sandbox, fallback=None)
    result = ScenarioResult(manager.version)
    try:
        manager.drain_notices()
        for i, step in enumerate(data.get("step", [])):
            line = lines[i] if i < len(lines) else None
            try:
                if not isinstance(step, Mapping) or set(step) - _STEP_KEYS:
                    bad = sorted(set(step) - _STEP_KEYS) if isinstance(step, Mapping) else ["?"]
                    raise ValueError(f"unknown key {bad[0]!r} (allowed: {', '.join(sorted(_STEP_KEYS))})")
                now = float(step["at"]) if "at" in step else now + float(step.get("after_s", 0.0))
                for name, fields in step.get("set", {}).items():
                    if name not in units:
                        raise ValueError(f"set: no unit {name!r}")
                    units[name] = _unit(name, fields, units[name])
                event = _event(step, now, i + 1)
            except (ValueError, TypeError, KeyError) as exc:
                raise PolicyError(f"step {i + 1}: {exc}", file=file, line=line) from None
            decisions = [decision_dict(d) for d in manager.decide(event, View(now, dict(units)))]
            errors = [n for n in manager.drain_notices() if n.get("event") == "error"]
            what = f"{type(event).__name__.lower()} {getattr(event, 'unit', '')} {getattr(event, 'kind', '')}".strip()
            if errors:
                result.steps.append(StepResult(i + 1, line, what, decisions, False, str(errors[0]["error"])))
                continue
            problem = _compare(step["expect"], decisions) if "expect" in step else None
            result.steps.append(StepResult(i + 1, line, what, decisions, problem is None, problem))
    finally:
        manager.close()
    return result


def as_json(result: ScenarioResult) -> str:
    steps = [dataclasses.asdict(s) for s in result.steps]
    return json.dumps({"policy": result.policy, "ok": result.ok, "steps": steps})
