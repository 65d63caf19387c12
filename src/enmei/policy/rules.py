"""Declarative rules (TOML) for the common cases, compiled to a Starlark policy.

A rules file reads "verdict X on unit Y, N times in W seconds -> remedy Z, at most K per hour, then
escalate"::

    [policy]
    otherwise = "default"        # what no rule matches goes to the shipped default library ("none": nothing)

    [[rules]]
    id = "api-slow"              # names the rule in every decision (and counts its uses)
    on = "verdict"               # verdict | exit | outcome
    kind = "anomaly"             # verdict kind, or exit kind (exited, start_failed)
    unit = ["api"]               # a name or a list (default: every unit)
    severity = "critical"        # verdicts only (optional)
    times = 3                    # the rule fires on the 3rd such event (up to 16) ...
    within_s = 600               # ... within 600 s (counted per kind, whatever the severity)
    do = "restart"               # a remedy, or alert | none | monitor | inject | degrade
    args = { delay_s = 0 }
    max = 2                      # at most 2 times ...
    per_s = 3600                 # ... per hour (the default)
    then = "escalate"            # once spent (default: a critical alert; never a silent give-up)
    then_args = { retry_in_s = 600 }

Outcome rules match on ``remedy`` (the action) and ``state`` (failed, timed_out, ...). ``backend`` limits a
rule to units of one backend. Rules are tried in order; the first whose filters match the event owns it
(below its count it decides nothing), unless it says ``fallthrough = true``: then its decisions are
added to those of the rules after it and of ``otherwise``. An event no rule matches goes to
``otherwise``. A rule whose unit is being repaired (a remedy is running) stays silent, like the built-in
policy. ``times`` and ``max`` go up to 16: the history keeps the last 16 times of each kind.

``compile_rules`` raises ``PolicyError`` with the line (and column, for TOML syntax) of what is wrong.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Mapping
from typing import Any

from enmei.errors import PolicyError
from enmei.policy.actions import actions, known
from enmei.policy.history import History

__all__ = ["compile_rules"]

PER_KEY = History().per_key
UNLIMITED = 10**9
_HANDLER = {"verdict": "on_verdict", "exit": "on_exit", "outcome": "on_outcome"}
_KEYS = {"id", "on", "kind", "unit", "severity", "backend", "remedy", "state", "times", "within_s", "do", "args",
         "max", "per_s", "then", "then_args", "why", "fallthrough"}
_TOML_WHERE = re.compile(r"\(at line (\d+), column (\d+)\)")

_PRELUDE = '''load("@enmei", "alert", "decisions", "describe", "events", "none", "outcomes", "remedy", "verdicts")

def _make(do, u, args, rule, why):
    if do == "alert":
        return alert(u, why, args.get("severity", "warning"), rule = rule)
    if do == "none":
        return none(u, why, rule = rule)
    if do in ("monitor", "inject"):
        return {"action": do, "unit": u.name, "args": args, "at": None, "rule": rule, "reason": why}
    return remedy(do, u, args, rule = rule, why = why)

def _decide(ctx, u, rid, do, args, most, per_s, then, then_args, why):
    if decisions(ctx, u, rule = rid, within_s = per_s) < most:
        return [_make(do, u, args, rid, why)]
    if then == None:
        text = "%s: used %d times in %ds, the most allowed; %s" % (rid, most, per_s, why)
        return [alert(u, text, "critical", rule = rid + "/spent")]
    return [_make(then, u, then_args, rid + "/then", why + " (limit of %d per %ds reached)" % (most, per_s))]
'''


def _lit(value: Any) -> str:
    """A Starlark literal for a TOML value."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "None"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_lit(str(k))}: {_lit(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_lit(v) for v in value) + "]"
    raise TypeError(f"not a plain value: {value!r}")


def _check_value(value: Any) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return "numbers must be finite"
    if isinstance(value, str) and any(ord(c) < 32 for c in value):
        return "strings may not hold control characters"
    if isinstance(value, Mapping):
        return next((p for v in value.values() if (p := _check_value(v))), None)
    if isinstance(value, list):
        return next((p for v in value if (p := _check_value(v))), None)
    if not isinstance(value, (bool, int, float, str, type(None))):
        return f"{type(value).__name__} values are not allowed here"
    return None


class _Lines:
    """Where each ``[[rules]]`` table (and its keys) starts in the text, for error messages."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.heads = [i + 1 for i, ln in enumerate(self.lines) if re.match(r"\s*\[\[\s*rules\s*\]\]", ln)]

    def of(self, index: int, key: str | None = None) -> int | None:
        if index >= len(self.heads):
            return None
        start = self.heads[index]
        end = self.heads[index + 1] if index + 1 < len(self.heads) else len(self.lines) + 1
        if key is not None:
            for n in range(start, end):
                if re.match(rf"\s*{re.escape(key)}\s*=", self.lines[n - 1]):
                    return n
        return start


def _action_problem(key: str, action: Any, args: Any) -> str | None:
    table = actions()
    if not isinstance(action, str) or action not in table:
        return f"{key} = {action!r}: no such action or remedy (known: {', '.join(known())})"
    if not isinstance(args, Mapping):
        return f"{key}_args must be a table" if key == "then" else "args must be a table"
    if action == "alert":
        sev = args.get("severity", "warning")
        return None if sev in ("info", "warning", "critical") and set(args) <= {"severity"} else \
            "an alert takes only severity = info | warning | critical"
    cls = table[action].remedy
    return cls.check_args(args) if cls is not None else None


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def _rule(i: int, raw: Any, where: _Lines, seen: set[str], file: str) -> tuple[str, str, bool]:
    """(handler, Starlark function, falls through) for one rule; raises ``PolicyError``."""

    def bad(message: str, key: str | None = None) -> PolicyError:
        return PolicyError(f"rule {i + 1}: {message}", file=file, line=where.of(i, key))

    if not isinstance(raw, Mapping):
        raise bad("each [[rules]] entry must be a table")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(_KEYS))})", unknown[0])
    for key, value in raw.items():
        problem = _check_value(value)
        if problem:
            raise bad(f"{key}: {problem}", key)
    rid = raw.get("id")
    if not isinstance(rid, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", rid):
        raise bad("id must be 1-64 letters, digits or _ . : -", "id")
    if rid in seen:
        raise bad(f"id {rid!r} is used twice", "id")
    seen.add(rid)
    on = raw.get("on")
    if on not in _HANDLER:
        raise bad("on must be verdict, exit or outcome", "on")
    times, within = raw.get("times", 1), raw.get("within_s")
    most, per_s = raw.get("max", UNLIMITED), raw.get("per_s", 3600.0)
    for key, value in (("times", times), ("max", most)):
        # The history keeps the last PER_KEY times of each kind: a count can say no more than that.
        if value is not UNLIMITED and (isinstance(value, bool) or not isinstance(value, int)
                                       or not 1 <= value <= PER_KEY):
            raise bad(f"{key} must be a whole number from 1 to {PER_KEY}", key)
    for key, value in (("within_s", within), ("per_s", per_s)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
            raise bad(f"{key} must be a positive number of seconds", key)
    if times > 1 and within is None:
        raise bad("times > 1 needs within_s", "times")
    do, args = raw.get("do"), raw.get("args", {})
    problem = _action_problem("do", do, args)
    if problem:
        raise bad(problem, "do" if "do =" in problem or "such action" in problem else "args")
    then, then_args = raw.get("then"), raw.get("then_args", {})
    if then is not None:
        problem = _action_problem("then", then, then_args)
        if problem:
            raise bad(problem, "then")
    units, kinds = _strings(raw.get("unit", [])), _strings(raw.get("kind", []))
    sevs, backends = _strings(raw.get("severity", [])), _strings(raw.get("backend", []))
    remedies, states = _strings(raw.get("remedy", [])), _strings(raw.get("state", []))
    for key, val in (("unit", units), ("kind", kinds), ("severity", sevs), ("backend", backends),
                     ("remedy", remedies), ("state", states)):
        if val is None:
            raise bad(f"{key} must be a name or a list of names", key)
    assert units is not None
    assert kinds is not None
    assert sevs is not None
    assert backends is not None
    assert remedies is not None
    assert states is not None
    if on != "verdict" and sevs:
        raise bad("severity applies to verdict rules only", "severity")
    if on != "outcome" and (remedies or states):
        raise bad("remedy and state apply to outcome rules only", "remedy" if remedies else "state")
    if on == "outcome" and kinds:
        raise bad("outcome rules match on remedy and state, not kind", "kind")
    why = raw.get("why")
    if why is not None and not isinstance(why, str):
        raise bad("why must be a string", "why")
    through = raw.get("fallthrough", False)
    if not isinstance(through, bool):
        raise bad("fallthrough must be true or false", "fallthrough")
    conds = []
    for field, values in (("u.name", units), ("ev.kind", kinds), ("ev.severity", sevs), ("u.backend", backends),
                          ("ev.action", remedies), ("ev.state", states)):
        if values:
            conds.append(f"{field} not in {_lit(values)}")
    w = _lit(within)
    if on == "outcome":
        count = f"outcomes(ctx, u, {_lit(remedies or None)}, {_lit(states or None)}, within_s = {w})"
    else:
        fn = "verdicts" if on == "verdict" else "events"
        names: list[Any] = list(kinds) or ([None] if on == "verdict" else ["exited"])
        count = " + ".join(f"{fn}(ctx, u, {_lit(k)}, within_s = {w})" for k in names)
    reason = f'{_lit(why)} + ": " + describe(ev)' if why else "describe(ev)"
    skip = " or ".join(["u == None", *conds])
    body = f'''
# rule {i + 1} ({rid}), {file} line {where.of(i)}
def _rule_{i + 1}(ev, ctx):
    u = ctx.unit
    if {skip}:
        return None
    if u.remedy != None:
        return []
'''
    if times > 1:
        body += f"    if ({count}) < {times}:\n        return []\n"
    body += (f"    return _decide(ctx, u, {_lit(rid)}, {_lit(do)}, {_lit(dict(args))}, {most}, {_lit(per_s)}, "
             f"{_lit(then)}, {_lit(dict(then_args))}, {reason})\n")
    return _HANDLER[on], body, through


def compile_rules(text: str, file: str = "<rules>") -> str:
    """The Starlark policy for a rules file; raises ``PolicyError`` (file:line) when the file is wrong."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = _TOML_WHERE.search(str(exc))
        msg = _TOML_WHERE.sub("", str(exc)).strip()
        raise PolicyError(f"TOML: {msg}", file=file, line=int(m.group(1)) if m else None,
                          column=int(m.group(2)) if m else None) from None
    where = _Lines(text)
    unknown = sorted(set(data) - {"policy", "rules"})
    if unknown:
        raise PolicyError(f"unknown table {unknown[0]!r} (a rules file has [policy] and [[rules]])", file=file)
    head = data.get("policy", {})
    otherwise = head.get("otherwise", "default") if isinstance(head, Mapping) else None
    if otherwise not in ("default", "none") or not isinstance(head, Mapping) or set(head) - {"otherwise"}:
        raise PolicyError('[policy] takes only otherwise = "default" | "none"', file=file)
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise PolicyError("rules must be an array of tables ([[rules]])", file=file)
    out = [_PRELUDE]
    if otherwise == "default":
        out.append('load("@enmei/default", default_on_exit = "on_exit", default_on_verdict = "on_verdict", '
                   'default_on_outcome = "on_outcome", default_on_tick = "on_tick")\n')
    by_handler: dict[str, list[tuple[int, bool]]] = {h: [] for h in _HANDLER.values()}
    seen: set[str] = set()
    for i, raw in enumerate(rules):
        handler, body, through = _rule(i, raw, where, seen, file)
        by_handler[handler].append((i + 1, through))
        out.append(body)
    for handler, numbers in by_handler.items():
        rest = f"default_{handler}(ev, ctx)" if otherwise == "default" else "[]"
        if not numbers and otherwise != "default":
            continue
        table = "[" + ", ".join(f"(_rule_{n}, {_lit(through)})" for n, through in numbers) + "]"
        out.append(f'''
def {handler}(ev, ctx):
    out = []
    for rule, through in {table}:
        decided = rule(ev, ctx)
        if decided != None:
            out.extend(decided)
            if not through:
                return out
    return out + ({rest} or [])
''')
    if otherwise == "default":
        out.append("\non_tick = default_on_tick\n")
    return "".join(out)
