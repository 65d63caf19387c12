"""The one action vocabulary: every action a decision may name, what carries it out, and how it counts.

An action is either carried out by the engine itself (``alert``, ``none``, ``monitor``, ``inject``: no
remedy runs, no intent is written) or is a remedy from ``enmei.remedy.REMEDIES`` (each with a deadline
and an outcome). ``counts_as_restart`` marks the actions the engine counts against a unit's restart
budget, and on which it enforces that budget, whoever decided them. ``scope`` is ``"unit"`` (the decision
names a unit) or ``"host"`` (it names the host, ``HOST``: a remedy that acts on a backend or on enmei
itself).

The engine, the policy encoding, the rules compiler, replay, the incident report and the Starlark
library (through ``ctx.remedies["@engine"]``) all read this table: none keeps its own list of names.

Every argument has bounds: a decision outside them is refused with the reason (and, for a policy,
the handler's line), never carried out with an absurd value.

>>> sorted(n for n, a in actions().items() if a.engine)
['alert', 'inject', 'monitor', 'none']
>>> actions()["restart"].counts_as_restart, actions()["alert"].counts_as_restart
(True, False)
>>> check_args("monitor", {"probe": "http", "interval_s": 1e300})
"monitor: 'interval_s' must be a number of seconds from 0.1 to 3600"
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from enmei.remedy import REMEDIES, Remedy
from enmei.remedy.base import MAX_SECONDS

__all__ = ["ENGINE_ACTIONS", "HOST", "SEVERITIES", "Action", "action", "actions", "check_args", "counts_as_restart",
           "known", "restart_actions"]

#: the target name of a host-scope decision (unit names cannot start with "@")
HOST = "@host"
SEVERITIES = ("info", "warning", "critical")

ArgCheck = Callable[[Mapping[str, Any]], "str | None"]


@dataclass(frozen=True)
class Action:
    """One entry of the vocabulary."""

    name: str
    engine: bool  # carried out by the engine itself (no remedy, no intent record, no outcome)
    counts_as_restart: bool  # counted against the restart budget, which the engine enforces on it
    scope: str  # "unit" or "host"
    remedy: type[Remedy] | None
    description: str = ""

    def check_args(self, args: Mapping[str, Any]) -> str | None:
        """Why ``args`` are not acceptable for this action (types and bounds), or None."""
        if self.remedy is not None:
            return self.remedy.check_args(args)
        return _ENGINE_CHECKS[self.name](args)


def _number(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and (
        not isinstance(value, float) or math.isfinite(value))


def _unknown(action: str, args: Mapping[str, Any], allowed: tuple[str, ...]) -> str | None:
    unknown = set(args) - set(allowed)
    if unknown:
        return f"{action} takes no argument {sorted(unknown)[0]!r} (allowed: {', '.join(allowed) or 'none'})"
    return None


def _alert(args: Mapping[str, Any]) -> str | None:
    if set(args) - {"severity"} or args.get("severity", "warning") not in SEVERITIES:
        return f"alert takes only severity = {' | '.join(SEVERITIES)}"
    return None


def _none(args: Mapping[str, Any]) -> str | None:
    return "none takes no arguments" if args else None


def _monitor(args: Mapping[str, Any]) -> str | None:
    if not isinstance(args.get("probe"), str):
        return "monitor needs probe (a name) and interval_s (seconds)"
    interval, for_s = args.get("interval_s"), args.get("for_s")
    if not _number(interval) or not 0.1 <= interval <= 3600:
        return "monitor: 'interval_s' must be a number of seconds from 0.1 to 3600"
    if for_s is not None and (not _number(for_s) or not 0 < for_s <= MAX_SECONDS):
        return f"monitor: 'for_s' must be a positive number of seconds, at most {MAX_SECONDS:g}"
    return _unknown("monitor", args, ("probe", "interval_s", "for_s"))


def _inject(args: Mapping[str, Any]) -> str | None:
    if not isinstance(args.get("injector"), str):
        return "inject needs injector (a name)"
    count, every = args.get("count", 1), args.get("every_s", 0.0)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        return "inject: 'count' must be a whole number from 1 to 1000"
    if not _number(every) or not 0 <= every <= MAX_SECONDS:
        return f"inject: 'every_s' must be a number of seconds from 0 to {MAX_SECONDS:g}"
    pause = args.get("pause_s")  # a typing schedule: end its round and start none for this long
    if pause is not None and (not _number(pause) or not 0 < pause <= MAX_SECONDS):
        return f"inject: 'pause_s' must be a positive number of seconds, at most {MAX_SECONDS:g}"
    return _unknown("inject", args, ("injector", "count", "every_s", "pause_s"))


_ENGINE_CHECKS: dict[str, ArgCheck] = {"alert": _alert, "none": _none, "monitor": _monitor, "inject": _inject}
#: the actions the engine carries out itself, in the order the policy API lists them
ENGINE_ACTIONS = tuple(_ENGINE_CHECKS)
_ENGINE = {
    "alert": Action("alert", True, False, "unit", None, "journal an alert and send it to the alert command"),
    "none": Action("none", True, False, "unit", None, "decide, on the record, to do nothing"),
    "monitor": Action("monitor", True, False, "unit", None, "run a probe at another interval for a while"),
    "inject": Action("inject", True, False, "unit", None, "run an injector and judge the reaction"),
}
# (the registered remedies it was built from, the table): rebuilt when a remedy is registered
_cache: list[tuple[tuple[tuple[str, type[Remedy]], ...], dict[str, Action]]] = []


def actions() -> dict[str, Action]:
    """The whole vocabulary now: the engine's actions, then every registered remedy (sorted by name)."""
    key = tuple(REMEDIES.items())
    if not _cache or _cache[0][0] != key:
        table = dict(_ENGINE)
        for name in sorted(REMEDIES):
            cls = REMEDIES[name]
            table[name] = Action(name, False, bool(cls.counts_as_restart), cls.scope, cls, cls.description)
        _cache[:] = [(key, table)]
    return _cache[0][1]


def action(name: str) -> Action | None:
    """The action named ``name``, or None."""
    return actions().get(name)


def known() -> list[str]:
    """Every action name, for error messages: the engine's, then the remedies."""
    return list(actions())


def counts_as_restart(name: str) -> bool:
    a = actions().get(name)
    return a is not None and a.counts_as_restart


def restart_actions() -> list[str]:
    """The unit actions that count against a unit's restart budget (a host remedy that counts as a
    restart counts against the host's own budget: it restarts no unit)."""
    return [n for n, a in actions().items() if a.counts_as_restart and a.scope == "unit"]


def check_args(name: str, args: Mapping[str, Any]) -> str | None:
    """Why ``args`` are not acceptable for action ``name`` (or why the name is unknown), or None."""
    a = actions().get(name)
    if a is None:
        return f"no action or remedy named {name!r} (known: {', '.join(known())})"
    return a.check_args(args)
