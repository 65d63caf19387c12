"""Crossing into Starlark and back: events and views as one JSON payload, results as checked decisions.

The payload is ``[handler, now, event, unit, units, history]``, with units and events as
positional lists that the generated driver (``DRIVER``) turns into structs: decoding lists is several
times cheaper than decoding dicts with the same keys, and this crossing is most of an evaluation's cost.
Evidence and details a policy sees are bounded: what encodes to more than 4 KiB of JSON (or holds other
than JSON data) goes through ``plain``: strings cut at 512 characters, containers at 32 items and 3
levels, infinities as +-1e308 and NaN as None, since JSON has neither.

``decisions_from`` turns a handler's result into ``Decision`` objects or raises ``EvalFailure`` (kind
"decision") naming the first thing wrong: not a list of decisions, an unknown action or unit, arguments
the action does not take.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from enmei.model import Decision, Event, Outcome, Tick, UnitEventKind, Verdict
from enmei.policy.actions import ENGINE_ACTIONS, HOST, actions, check_args, restart_actions
from enmei.policy.base import UnitView, View
from enmei.policy.core import EvalFailure
from enmei.remedy import REMEDIES
from enmei.remedy.base import MAX_SECONDS

__all__ = [
    "DRIVER",
    "ENGINE_ACTIONS",
    "MAX_DECISIONS",
    "UNIT_FIELDS",
    "decisions_from",
    "event_json",
    "event_row",
    "handler_for",
    "payload",
    "plain",
    "remedies_for",
    "unit_row",
]

#: the fields of a unit as a policy sees it (``UnitView.as_dict()``), in payload order
UNIT_FIELDS = (
    "name", "backend", "state", "health", "alive", "uptime_s", "remedy", "restarts_in_window", "budget",
    "budget_left", "window_s", "next_delay_s", "escalate_retry_s", "rejuvenate_every_s", "rejuvenate_window_s",
    "stop_timeout_s", "capabilities", "breaker_failures", "breaker_within_s", "breaker_open_s", "last_reset",
    "reset_after_s",
)
MAX_DECISIONS = 32
_MAX_REASON = 1024
_DECISION_KEYS = frozenset({"action", "unit", "args", "at", "rule", "reason"})
_MAX_STR = 512
_MAX_ITEMS = 32
_MAX_DEPTH = 3
_SMALL_JSON = 4096

DRIVER = """
#LOADS#
_HANDLERS = {#TABLE#}
_REMEDIES = #REMEDIES#

def _unit(v):
    return struct(#FIELDS#)

def _event(h, e):
    if h == "on_verdict":
        return struct(type = "verdict", unit = e[0], detector = e[1], kind = e[2], severity = e[3], mono = e[4],
                      summary = e[5], evidence = e[6])
    if h == "on_outcome":
        return struct(type = "outcome", remedy_id = e[0], unit = e[1], action = e[2], state = e[3],
                      started_mono = e[4], ended_mono = e[5], duration_s = e[5] - e[4], detail = e[6], data = e[7])
    if h == "on_tick":
        return struct(type = "tick", unit = None, mono = e[0], wall = e[1])
    return struct(type = "unit_event", unit = e[0], kind = e[1], mono = e[2], detail = e[3])

def dispatch(payload):
    p = json.decode(payload)
    units = {n: _unit(v) for n, v in p[4].items()}
    unit = units.get(p[3]) if p[3] != None else None
    ctx = struct(now = p[1], unit = unit, units = units, history = p[5], remedies = _REMEDIES)
    return json.encode(_HANDLERS[p[0]](_event(p[0], p[2]), ctx))
""".replace("#FIELDS#", ", ".join(f"{name} = v[{i}]" for i, name in enumerate(UNIT_FIELDS)))


def handler_for(event: Event) -> str:
    """The handler an event goes to."""
    if isinstance(event, Verdict):
        return "on_verdict"
    if isinstance(event, Outcome):
        return "on_outcome"
    if isinstance(event, Tick):
        return "on_tick"
    if event.kind in (UnitEventKind.EXITED, UnitEventKind.START_FAILED):
        return "on_exit"
    return "on_event"


def plain(value: Any, depth: int = 0) -> Any:
    """``value`` as bounded JSON data (see the module docstring)."""
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return None if math.isnan(value) else math.copysign(1e308, value)
    if isinstance(value, str):
        return value if len(value) <= _MAX_STR else value[:_MAX_STR]
    if depth >= _MAX_DEPTH:
        return None
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= _MAX_ITEMS:
                break
            out[str(k)[:_MAX_STR]] = plain(v, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=str) if isinstance(value, (set, frozenset)) else value
        return [plain(v, depth + 1) for v in list(items)[:_MAX_ITEMS]]
    return str(value)[:_MAX_STR]


def unit_row(u: UnitView) -> list[Any]:
    """One unit as the positional list the driver expects (the order of ``UNIT_FIELDS``)."""
    return [u.name, u.backend, str(u.state), str(u.health), u.alive, u.uptime_s, u.remedy, u.restarts_in_window,
            u.budget, u.budget_left, u.window_s, u.next_delay_s, u.escalate_retry_s, u.rejuvenate_every_s,
            u.rejuvenate_window_s, u.stop_timeout_s, sorted(u.capabilities), u.breaker_failures, u.breaker_within_s,
            u.breaker_open_s, u.last_reset, u.reset_after_s]


def _data_json(value: Any) -> str:
    """Evidence or detail as JSON a policy sees: as is when it is small, finite JSON; else ``plain``."""
    try:
        text = _encode(value)
        if len(text) <= _SMALL_JSON:
            return text
    except (TypeError, ValueError):
        pass
    return _encode(plain(value))


_CAPS: dict[frozenset[str], str] = {}


def _num(x: float | None) -> str:
    if x is None:
        return "null"
    if math.isfinite(x):
        return repr(x)
    return "null" if math.isnan(x) else repr(math.copysign(1e308, x))


def _unit_json(u: UnitView) -> str:
    """``unit_row`` as JSON, written out by hand: this runs for every unit on every evaluation."""
    caps = _CAPS.get(u.capabilities)
    if caps is None:
        if len(_CAPS) >= 256:
            _CAPS.clear()
        caps = _CAPS[u.capabilities] = _encode(sorted(u.capabilities))
    s = _string
    return (f"[{s(u.name)},{s(u.backend)},{s(u.state.value)},{s(u.health.value)},{'true' if u.alive else 'false'},"
            f"{_num(u.uptime_s)},{'null' if u.remedy is None else s(u.remedy)},{int(u.restarts_in_window)},"
            f"{int(u.budget)},{int(u.budget_left)},{_num(u.window_s)},{_num(u.next_delay_s)},"
            f"{_num(u.escalate_retry_s)},{_num(u.rejuvenate_every_s)},{_num(u.rejuvenate_window_s)},"
            f"{_num(u.stop_timeout_s)},{caps},{int(u.breaker_failures)},{_num(u.breaker_within_s)},"
            f"{_num(u.breaker_open_s)},{_num(u.last_reset)},{_num(u.reset_after_s)}]")


def event_json(event: Event) -> str:
    """One event as the positional list the driver expects, as JSON."""
    if isinstance(event, Verdict):
        head = _dumps([event.unit, event.detector, str(event.kind), str(event.severity), event.mono, event.summary])
        return f"{head[:-1]},{_data_json(event.evidence)}]"
    if isinstance(event, Outcome):
        head = _dumps([event.remedy_id, event.unit, event.action, str(event.state), event.started_mono,
                       event.ended_mono, plain(event.detail)])
        return f"{head[:-1]},{_data_json(event.data)}]"
    if isinstance(event, Tick):
        return _dumps([event.mono, event.wall])
    head = _dumps([event.unit, str(event.kind), event.mono])
    return f"{head[:-1]},{_data_json(event.detail)}]"


def event_row(event: Event) -> list[Any]:
    """``event_json`` as data."""
    row: list[Any] = json.loads(event_json(event))
    return row


_ENCODER = json.JSONEncoder(allow_nan=False, check_circular=False, separators=(",", ":"))
_encode = _ENCODER.encode
_string = json.encoder.encode_basestring_ascii


def _dumps(value: Any) -> str:
    try:
        return _encode(value)
    except ValueError:  # a non-finite float somewhere: JSON (and Starlark's decoder) has none
        return _encode(plain(value, -100))


def remedies_for() -> dict[str, list[str]]:
    """For each remedy, the backend capabilities a unit must have for it (``ctx.remedies``; the Starlark
    ``can()`` tests a unit's ``capabilities`` against it); and, from the one action vocabulary
    (``enmei.policy.actions``), three lists under names no remedy can have: "@engine" (the engine's own
    actions, which apply to every unit), "@restart" (the actions counted against the restart budget) and
    "@host" (the host-scope remedies)."""
    out = {n: sorted(str(c) for c in cls.needs) for n, cls in sorted(REMEDIES.items())}
    out["@engine"] = list(ENGINE_ACTIONS)
    out["@restart"] = restart_actions()
    out["@host"] = [n for n, a in actions().items() if a.scope == "host"]
    return out


def payload(handler: str, event: Event, view: View, history: str) -> str:
    """The JSON text for one evaluation. ``history`` is the JSON object of each unit's history as a JSON
    string (``History.payload``): a policy decodes a unit's history only if it asks for it."""
    unit = getattr(event, "unit", None)
    units = "{" + ",".join(f"{_encode(name)}:{_unit_json(u)}" for name, u in view.units.items()) + "}"
    now = view.now if math.isfinite(view.now) else 0.0
    return f"[\"{handler}\",{now!r},{event_json(event)},{_encode(unit)},{units},{history}]"


def _soon(at: float, now: float) -> bool:
    """Whether ``at`` (a policy's number) is a finite time no later than a day after ``now``."""
    try:
        t = float(at)
    except OverflowError:  # a Starlark integer past any float
        return False
    return math.isfinite(t) and t - now <= MAX_SECONDS


def _fail(message: str) -> EvalFailure:
    return EvalFailure("decision", message)


def _check_args(action: str, args: Mapping[str, Any], unit: UnitView | None, target: str) -> str | None:
    a = actions().get(action)
    if a is None:
        return check_args(action, args)
    if a.scope == "host" and target != HOST:
        return f"{action} acts on the host: its target must be {HOST!r}, not a unit"
    if a.scope != "host" and target == HOST:
        return f"{action} acts on a unit, not on {HOST!r}"
    cls = a.remedy
    refused = None if unit is None or cls is None else cls.refusal(unit.capabilities, unit.backend)
    if refused is not None and unit is not None:
        return f"{refused}, for unit {unit.name!r}"
    return a.check_args(args)


def decisions_from(text: str, view: View, *, policy: str, handler: str, check_units: bool = True) -> list[Decision]:
    """The decisions in a handler's JSON result; raises ``EvalFailure`` (kind "decision") when malformed."""
    try:
        result = json.loads(text)
    except ValueError as exc:
        raise _fail(f"the result is not data: {exc}") from None
    if result is None:
        return []
    if isinstance(result, dict):
        result = [result]
    if not isinstance(result, list):
        raise _fail(f"{handler} must return a list of decisions (or None), not {type(result).__name__}")
    if len(result) > MAX_DECISIONS:
        raise _fail(f"{handler} returned {len(result)} decisions; at most {MAX_DECISIONS} are allowed")
    out: list[Decision] = []
    for i, d in enumerate(result):
        where = f"{handler}: decision {i + 1}"
        if not isinstance(d, dict) or not isinstance(d.get("action"), str) or not isinstance(d.get("unit"), str):
            raise _fail(f"{where}: not a decision (build it with remedy(), restart(), alert()...): {str(d)[:120]}")
        extra = set(d) - _DECISION_KEYS
        if extra:
            raise _fail(f"{where}: unknown key {sorted(extra)[0]!r}")
        action, name = d["action"], d["unit"]
        args = d.get("args") or {}
        if not isinstance(args, dict):
            raise _fail(f"{where}: args must be a dict")
        unit = view.units.get(name)
        if unit is None and check_units and name != HOST:
            raise _fail(f"{where}: {action} for unknown unit {name!r} (units: {', '.join(sorted(view.units))})")
        problem = _check_args(action, args, unit, name)
        if problem is not None:
            raise _fail(f"{where}: {problem}")
        at, rule, reason = d.get("at"), d.get("rule"), d.get("reason")
        if at is not None and (isinstance(at, bool) or not isinstance(at, (int, float))):
            raise _fail(f"{where}: at must be a time (ctx.now + seconds) or None")
        if at is not None and not _soon(at, view.now):
            raise _fail(f"{where}: at must be a finite time at most ctx.now + {MAX_SECONDS:g} (a day), not {at!r}")
        if rule is not None and not isinstance(rule, str):
            raise _fail(f"{where}: rule must be a string")
        if reason is not None and not isinstance(reason, str):
            raise _fail(f"{where}: the reason (why) must be a string")
        if reason is not None and len(reason) > _MAX_REASON:
            reason = reason[:_MAX_REASON]
        out.append(Decision(action, name, reason or rule or handler, args,
                            None if at is None else float(at), policy=policy, rule=rule or handler))
    return out
