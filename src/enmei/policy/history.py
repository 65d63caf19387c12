"""What a policy may know of the past: a bounded memory per unit, kept by the manager from what it sees.

Policies are pure and their globals are frozen, so escalation ladders, rate limits and circuit breakers
cannot count in policy variables. The manager remembers for them instead, from the events it passes to
the policy and the decisions the policy returns, and hands the history in with each evaluation
(``ctx.history``: the event's unit's, for a tick the units' not running; a policy that asks for another
unit's has the evaluation run again with all of them). Because the history is a function of the
evaluations alone, replaying a journal's events through the same policy rebuilds the same history, and
so the same decisions.

Per unit: the times (whole milliseconds of the monotonic clock, oldest first: integers decode several
times faster than floats on the Starlark side) of decisions per rule and per action (a rule or action
counts once per evaluation however many decisions carry it), of verdicts per kind, of unit events per
kind, of outcomes per ``action:state``; and the last ``recent`` verdicts in brief. Bounds: ``per_key`` times
per key, ``keys`` keys per table (the stalest key goes), entries older than ``horizon_s`` dropped,
``max_units`` units. Each key's JSON is cached until that key changes, each unit's until the unit's does.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from enmei.model import Decision, Event, Outcome, Tick, UnitEvent, Verdict

__all__ = ["History"]


_compact = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_string = json.encoder.encode_basestring_ascii


def _ms(t: float) -> int:
    """Seconds as whole milliseconds, rounded as the Starlark API rounds (``int(t * 1000 + 0.5)``)."""
    return int(t * 1000 + 0.5)


class _Unit:
    __slots__ = ("frags", "json", "oldest", "recent", "tables")

    def __init__(self, recent: int) -> None:
        self.tables: dict[str, dict[str, deque[int]]] = {"d": {}, "a": {}, "v": {}, "e": {}, "o": {}}
        # Each key's JSON, kept until that key changes: one event re-encodes one key, not the unit.
        self.frags: dict[str, dict[str, str]] = {t: {} for t in self.tables}
        self.recent: deque[list[Any]] = deque(maxlen=recent)
        self.json: str | None = None
        self.oldest: int | None = None  # the oldest time held, to know cheaply when something expires

    def tables_json(self) -> str:
        parts = []
        for name, tab in self.tables.items():
            frags = self.frags[name]
            items = []
            for key, ts in tab.items():
                frag = frags.get(key)
                if frag is None:
                    frag = frags[key] = f"{_string(key)}:[{','.join(map(str, ts))}]"
                items.append(frag)
            parts.append(f'"{name}":{{{",".join(items)}}}')
        return "{" + ",".join(parts) + "}"


class History:
    """The bounded per-unit memory described in the module docstring."""

    def __init__(self, *, horizon_s: float = 86_400.0, per_key: int = 16, keys: int = 64, recent: int = 8,
                 max_units: int = 1024) -> None:
        self.horizon_s = horizon_s
        self.per_key = per_key
        self.keys = keys
        self.recent = recent
        self.max_units = max_units
        self._units: dict[str, _Unit] = {}

    def _unit(self, name: str) -> _Unit | None:
        u = self._units.get(name)
        if u is None:
            if len(self._units) >= self.max_units:
                return None
            u = self._units[name] = _Unit(self.recent)
        return u

    def _add(self, u: _Unit, table: str, key: str, when: float) -> None:
        if not math.isfinite(when):
            return
        t = _ms(when)
        tab = u.tables[table]
        times = tab.get(key)
        if times is None:
            if len(tab) >= self.keys:
                stalest = min(tab, key=lambda k: tab[k][-1] if tab[k] else -1)
                del tab[stalest]
                u.frags[table].pop(stalest, None)
            times = tab[key] = deque(maxlen=self.per_key)
        times.append(t)
        u.frags[table].pop(key, None)
        u.json = None
        if u.oldest is None or t < u.oldest:
            u.oldest = t
        elif u.oldest < t - _ms(self.horizon_s):
            self._expire(u, t)

    def _expire(self, u: _Unit, now_ms: int) -> None:
        """Drop what is older than the horizon (and stale recent verdicts); note the oldest time left."""
        horizon = now_ms - _ms(self.horizon_s)
        oldest: int | None = None
        for name, tab in u.tables.items():
            frags = u.frags[name]
            for key in [k for k, ts in tab.items() if not ts or ts[-1] < horizon]:
                del tab[key]
                frags.pop(key, None)
            for key, ts in tab.items():
                if ts[0] < horizon:
                    frags.pop(key, None)
                    while ts[0] < horizon:
                        ts.popleft()
                if oldest is None or ts[0] < oldest:
                    oldest = ts[0]
        while u.recent and u.recent[0][0] < horizon:
            u.recent.popleft()
        if u.recent and (oldest is None or u.recent[0][0] < oldest):
            oldest = u.recent[0][0]
        u.oldest = oldest
        u.json = None

    def observe(self, event: Event) -> None:
        """Remember an event the policy is about to see."""
        if isinstance(event, Tick):
            return
        u = self._unit(event.unit)
        if u is None:
            return
        if isinstance(event, Verdict):
            self._add(u, "v", str(event.kind), event.mono)
            if math.isfinite(event.mono):
                u.recent.append([_ms(event.mono), str(event.kind), event.detector, str(event.severity),
                                 event.summary[:200]])
                u.json = None
        elif isinstance(event, UnitEvent):
            self._add(u, "e", str(event.kind), event.mono)
        elif isinstance(event, Outcome):
            self._add(u, "o", f"{event.action}:{event.state}", event.ended_mono)

    def decided(self, decisions: Iterable[Decision], now: float) -> None:
        """Remember what the policy decided at ``now`` (each rule and action once)."""
        seen: set[tuple[str, str, str]] = set()
        for d in decisions:
            for table, key in (("d", d.rule), ("a", d.action)):
                if (d.unit, table, key) in seen:
                    continue
                seen.add((d.unit, table, key))
                u = self._unit(d.unit)
                if u is not None:
                    self._add(u, table, key, now)

    def payload(self, units: Iterable[str], now: float) -> str:
        """A JSON object: each named unit -> ``[tables, recent]`` (``recent`` as JSON *text*, decoded only if
        asked for), or "" for a unit with no history; nothing older than the horizon at ``now`` is in it."""
        parts: list[str] = []
        now_ms = _ms(now) if math.isfinite(now) else None
        horizon = _ms(self.horizon_s)
        for name in units:
            u = self._units.get(name)
            if u is None:
                parts.append(f'{_string(name)}:""')
                continue
            if now_ms is not None and u.oldest is not None and u.oldest < now_ms - horizon:
                self._expire(u, now_ms)
            if u.json is None:
                u.json = f"{_string(name)}:[{u.tables_json()},{_string(_compact(list(u.recent)))}]"
            parts.append(u.json)
        return "{" + ",".join(parts) + "}"

    @staticmethod
    def _data(u: _Unit) -> dict[str, Any]:
        data: dict[str, Any] = {t: {k: list(v) for k, v in tab.items()} for t, tab in u.tables.items()}
        data["r"] = list(u.recent)
        return data

    def snapshot(self) -> Mapping[str, dict[str, Any]]:
        """All of it as plain data (for tests and ``enmei policy test``)."""
        return {name: self._data(u) for name, u in self._units.items()}
