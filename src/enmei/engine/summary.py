"""Summaries of observations: what a period of samples looked like, in one journal record per unit.

Raw samples go to the journal's unchained ``samples`` table for charts (pruned by retention); the chain
keeps these summaries, so what was observed stays tamper-evident without chaining every sample.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from enmei.model import Observation

__all__ = ["Summaries"]


class _Stat:
    __slots__ = ("count", "last", "max", "min", "total")

    def __init__(self, v: float) -> None:
        self.count = 1
        self.total = v
        self.min = v
        self.max = v
        self.last = v

    def add(self, v: float) -> None:
        self.count += 1
        self.total += v
        self.min = min(self.min, v)
        self.max = max(self.max, v)
        self.last = v


class Summaries:
    def __init__(self) -> None:
        self._since: float | None = None
        self._stats: dict[str, dict[str, _Stat]] = {}
        self._ok: dict[str, dict[str, list[int]]] = {}

    def add(self, obs: Observation) -> None:
        if self._since is None:
            self._since = obs.mono
        stats = self._stats.setdefault(obs.unit, {})
        for k, v in obs.values.items():
            key = f"{obs.probe}.{k}"
            s = stats.get(key)
            if s is None:
                stats[key] = _Stat(float(v))
            else:
                s.add(float(v))
        counts = self._ok.setdefault(obs.unit, {}).setdefault(obs.probe, [0, 0])
        counts[0] += 1 if obs.ok else 0
        counts[1] += 1

    def drain(self, now: float) -> Iterator[tuple[str, dict[str, Any]]]:
        """One body per unit observed since the last drain; resets the counts."""
        since = self._since if self._since is not None else now
        stats, oks = self._stats, self._ok
        self._stats, self._ok, self._since = {}, {}, None
        for unit in sorted(set(stats) | set(oks)):
            metrics = {k: {"n": s.count, "mean": round(s.total / s.count, 6), "min": s.min, "max": s.max,
                           "last": s.last} for k, s in sorted(stats.get(unit, {}).items())}
            probes = {p: {"ok": c[0], "n": c[1]} for p, c in sorted(oks.get(unit, {}).items())}
            yield unit, {"period_s": round(now - since, 3), "metrics": metrics, "probes": probes}
