"""All the detectors of one unit, fed together; the unit's health combined from their reports.

The engine keeps one :class:`UnitDetectors` per unit and only applies what it returns: it journals the
verdicts, passes them on to the policy, and sets the unit's health to :attr:`SetJudgement.health`.

**Health.** Each detector may report the health it sees from a *source* (a probe, an injector). The
newest report of each source is kept. A FAILING or DEGRADED report sets the unit's health at once; an
OK report sets it only when every source's newest report is OK (a unit with one failing probe is not
healthy because another probe passes). UNKNOWN reports are ignored. ``reset()`` forgets every report.

**A broken detector** (one that raises) is logged, counted in ``state()["errors"]``, named in
:attr:`SetJudgement.failed`, and skipped for that observation; the other detectors still judge it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from enmei.detect.protocol import Limit, UnitDetector
from enmei.model import Health, Observation, Verdict

__all__ = ["SetJudgement", "UnitDetectors"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SetJudgement:
    verdicts: tuple[Verdict, ...] = ()
    health: tuple[Health, str] | None = None  # the health to set now, and why; None: leave it
    failed: tuple[tuple[str, str], ...] = ()  # (detector, error) of the detectors that raised


class UnitDetectors:
    """The detectors of ``unit``, in configuration order (names unique)."""

    def __init__(self, unit: str, detectors: Sequence[UnitDetector]) -> None:
        names = [d.name for d in detectors]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"unit {unit}: two detectors are named {dupes[0]!r}")
        self.unit = unit
        self.detectors: tuple[UnitDetector, ...] = tuple(detectors)
        self._sources: dict[str, Health] = {}
        self.errors: dict[str, int] = {}

    def __iter__(self) -> Iterator[UnitDetector]:
        return iter(self.detectors)

    def __len__(self) -> int:
        return len(self.detectors)

    def get(self, name: str) -> UnitDetector | None:
        return next((d for d in self.detectors if d.name == name), None)

    def feed(self, obs: Observation) -> SetJudgement:
        """Feed ``obs`` to every detector; their verdicts in order, and the health to set (if any)."""
        verdicts: list[Verdict] = []
        health: tuple[Health, str] | None = None
        failed: list[tuple[str, str]] = []
        for det in self.detectors:
            try:
                j = det.feed(obs)
            except Exception as exc:  # one broken detector must not silence the others
                log.exception("detector %s of %s failed", det.name, self.unit)
                self.errors[det.name] = self.errors.get(det.name, 0) + 1
                failed.append((det.name, f"{type(exc).__name__}: {exc}"))
                continue
            verdicts.extend(j.verdicts)
            for r in j.health:
                if r.health is Health.UNKNOWN:
                    continue
                self._sources[r.source] = r.health
                if r.health is not Health.OK:
                    health = (r.health, r.reason)
                elif all(h is Health.OK for h in self._sources.values()):
                    health = (Health.OK, r.reason)
        return SetJudgement(tuple(verdicts), health, tuple(failed))

    def reset(self) -> None:
        """A new instance of the service runs: every detector forgets what belonged to the old one."""
        self._sources.clear()
        for det in self.detectors:
            try:
                det.reset()
            except Exception:
                log.exception("detector %s of %s failed to reset", det.name, self.unit)
                self.errors[det.name] = self.errors.get(det.name, 0) + 1

    def state(self) -> dict[str, Any]:
        """What the detectors show now (JSON-ready): each one's kind, name and state."""
        out: list[dict[str, Any]] = []
        for det in self.detectors:
            try:
                s = det.state()
            except Exception as exc:
                s = {"error": f"{type(exc).__name__}: {exc}"}
            out.append({"kind": det.kind, "name": det.name, "state": s})
        return {"unit": self.unit, "detectors": out, "sources": {k: str(v) for k, v in self._sources.items()},
                "errors": dict(self.errors)}

    def limits(self) -> dict[str, Limit]:
        """The control limits every detector uses now, by series (``"http.latency_s"``); first one wins."""
        out: dict[str, Limit] = {}
        for det in self.detectors:
            try:
                for series, lim in det.limits().items():
                    out.setdefault(series, lim)
            except Exception:
                log.exception("detector %s of %s failed to give its limits", det.name, self.unit)
        return out
