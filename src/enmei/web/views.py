"""What the pages and the API show, assembled from the engine (on the loop) and the journal (off it).

Functions named ``*_now`` read the live engine and must run on the event loop (they are fast); the
others take a :class:`~enmei.box.Reader` and block, so they run in the web pool.

**Control limits on the charts.** For a latency metric ``<probe>.latency_s`` the centre line and limits
come from the unit's live detectors when one has finished learning (``engine.judges[unit].limits()``,
by series ``"<probe>.latency_s"``: the single-value limits ``exp(centre ± L·sigma)`` of the latency
chart, exactly what its ANOMALY verdicts report); otherwise from the newest ANOMALY verdict about that probe
in the journal; otherwise none (the chart says nothing about limits rather than invent them).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enmei.box.readers import AnyReader
from enmei.engine.loop import Engine
from enmei.engine.unit import UnitRuntime
from enmei.remedy import REMEDIES
from enmei.report.charts import Limits
from enmei.report.incidents import Rec

__all__ = [
    "ActionInfo",
    "actions_for",
    "last_verdicts",
    "live_limits_now",
    "log_tail",
    "remedies_since",
    "unit_now",
]

#: The order actions appear in on a unit's page; remedies not listed follow, sorted by name.
ACTION_ORDER = ("restart", "rejuvenate", "stop", "start", "snapshot", "restore", "shadow_update",
                "phase_reboot", "cold_reboot", "degrade")
#: Decided by policy only: a button for it would bypass the budget it reports on.
NOT_FOR_OPERATORS = frozenset({"escalate"})


@dataclass(frozen=True)
class ActionInfo:
    """An operator action a unit supports, with the arguments its remedy takes."""

    name: str
    description: str
    arguments: Mapping[str, str]  # argument -> type names ("int or float", "str", "bool")

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "arguments": dict(self.arguments)}


def _type_names(want: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))


def action_problem(unit: UnitRuntime, action: str) -> str | None:
    """Why ``action`` cannot be asked of ``unit`` (None: it can) — the same checks the engine makes."""
    cls = REMEDIES.get(action)
    if cls is None:
        known = ", ".join(a.name for a in actions_for(unit)) or "none"
        return f"no action named {action!r} (unit {unit.name} supports: {known})"
    if cls.refusal(unit.backend.capabilities, unit.backend.kind) is not None:
        known = ", ".join(a.name for a in actions_for(unit)) or "none"
        return (f"action {action!r} does not apply to {unit.backend.kind} units "
                f"(unit {unit.name} supports: {known})")
    return None


def actions_for(unit: UnitRuntime, *, all_remedies: bool = False) -> list[ActionInfo]:
    """The actions ``unit``'s backend supports, in page order; ``all_remedies`` adds the policy-only ones."""
    out: list[ActionInfo] = []
    names = sorted(REMEDIES, key=lambda n: (ACTION_ORDER.index(n) if n in ACTION_ORDER else len(ACTION_ORDER), n))
    for name in names:
        cls = REMEDIES[name]
        if cls.refusal(unit.backend.capabilities, unit.backend.kind) is not None:
            continue
        if not all_remedies and name in NOT_FOR_OPERATORS:
            continue
        if name == "degrade" and not all_remedies and not getattr(unit.spec, "degrade", None):
            continue
        out.append(ActionInfo(name, cls.description, {k: _type_names(v) for k, v in cls.arguments.items()}))
    return out


def unit_now(engine: Engine, name: str) -> dict[str, Any]:
    """A unit as the API shows it: its view, identity, capabilities, actions and detectors (on the loop)."""
    unit = engine.units[name]
    view = engine.view().units[name]
    ident = unit.backend.identity(name)
    d = view.as_dict()
    d["pid"] = ident.pid if ident is not None else None
    d["started_wall"] = ident.started_wall if ident is not None else None
    d["state_for_s"] = round(engine.clock.monotonic() - unit.state_since, 3)
    d["probes"] = [p.name for p in engine.probes.get(name, [])]
    d["actions"] = [a.as_dict() for a in actions_for(unit)]
    d["logs"] = [s for s in ("stdout", "stderr", "console") if unit.backend.log_path(name, s) is not None]
    detectors = engine.judges.get(name)
    # What each detector shows of itself (its state() and limits()), never its internals.
    d["detectors"] = [] if detectors is None else [
        {**entry, "limits": {k: v.as_dict() for k, v in det.limits().items()}}
        for entry, det in zip(detectors.state()["detectors"], detectors, strict=True)]
    return d


def live_limits_now(engine: Engine, unit: str) -> dict[str, Limits]:
    """Per probe, the latency limits the unit's live detectors use now (see the module docstring)."""
    detectors = engine.judges.get(unit)
    if detectors is None:
        return {}
    out: dict[str, Limits] = {}
    for series, lim in detectors.limits().items():
        probe, _, metric = series.rpartition(".")
        if metric == "latency_s" and probe:
            out[probe] = Limits(lim.centre, lim.lower, lim.upper, "live detector")
    return out


def last_verdicts(reader: AnyReader, units: list[str]) -> dict[str, Rec]:
    """Each unit's newest verdict."""
    out: dict[str, Rec] = {}
    for u in units:
        recs = reader.tail(1, unit=u, kinds=["verdict"])
        if recs:
            out[u] = Rec.of(recs[-1])
    return out


def remedies_since(reader: AnyReader, since_wall: float) -> dict[str, Counter[str]]:
    """Per unit, remedies started since ``since_wall``, counted by action."""
    out: dict[str, Counter[str]] = {}
    for r in reader.records(kinds=["remedy.start"], since_wall=since_wall, limit=100_000):
        out.setdefault(r.unit, Counter())[str(Rec.of(r).body.get("action", "?"))] += 1
    return out


_MASKS = (
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b|\b[0-9a-fA-F]{12,}\b"), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)


def line_shape(line: str) -> str:
    """A log line with its variable parts masked (numbers, addresses, hex ids).

    >>> line_shape('127.0.0.1:5000 - "GET /health HTTP/1.1" 200 in 0.3 ms')
    '<ip> - "GET /health HTTP/<n>" <n> in <n> ms'
    """
    for pattern, mask in _MASKS:
        line = pattern.sub(mask, line)
    return line


def log_tail(path: Path | None, lines: int = 100, max_bytes: int = 256 * 1024) -> dict[str, Any]:
    """The newest ``lines`` lines of a captured log (reading at most ``max_bytes`` from its end), and
    the shapes of those lines by count: a stand-in for log templates until a template miner exists.

    A missing file gives no lines and ``error``; nothing raises.
    """
    if path is None:
        return {"path": None, "lines": [], "shapes": [], "error": "this backend captures no such log"}
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except FileNotFoundError:
        return {"path": str(path), "lines": [], "shapes": [], "error": "no log yet"}
    except OSError as exc:
        return {"path": str(path), "lines": [], "shapes": [], "error": str(exc)}
    text = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and text:
        text = text[1:]  # the first line was cut
    tail = text[-lines:]
    shapes = Counter(line_shape(t) for t in tail if t.strip())
    return {"path": str(path), "size": size, "lines": tail,
            "shapes": [{"shape": s, "count": n} for s, n in shapes.most_common(15)], "error": None}
