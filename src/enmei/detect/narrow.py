"""Narrowing a performance anomaly down to a component, from response times alone.

One control chart per component (request type, URL, backend...). When a fault slows one component
down, its chart leaves control first and most strongly; components that merely share its resources
follow later and less. So the suspect is the component whose deviation *began first*, and among those
that began together (within ``tie_s``, 5 s by default: a few samples at 1 Hz), the one that deviates
most.

:class:`Narrower` keeps, per component, a detector (made by ``make()``) and the current *episode*: it
opens at the first score at or above ``onset_level`` (an early-warning level, below the alarm level),
records the strongest deviation (peak ``|z|``, else the score), and ends after ``quiet_s`` seconds
without such a score. The onset is the time the episode opened (the first crossing); the detector's
own change-point estimate, if its evidence gives one (``since``: for a CUSUM, when the statistic last
left zero), is reported as ``change_t`` but not used to rank: under noise a CUSUM leaves zero often,
so that estimate is early for every component and would rank noise first.
:meth:`Narrower.ranking` lists the components in an episode: by onset time, onsets within ``tie_s``
of the first of a group ranked by strength.

At most ``max_components`` components are tracked; samples of further components are ignored
(``update`` returns 0.0). Bad values follow :mod:`enmei.detect.base` (skipped by the detector;
they neither open nor extend an episode). State: the detectors' states and the episodes, versioned.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from enmei.detect.base import STATE_FORMAT, StateFormatError, StreamingDetector, check_state, detector_from_state

__all__ = ["Narrower", "Suspect"]


@dataclass(frozen=True)
class Suspect:
    """A component in a deviation episode."""

    component: str
    onset_t: float
    strength: float
    score: float
    rule: str
    change_t: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"component": self.component, "onset_t": self.onset_t, "strength": self.strength,
                "score": self.score, "rule": self.rule, "change_t": self.change_t}


@dataclass
class _Episode:
    onset_t: float
    last_high_t: float
    strength: float
    score: float
    rule: str
    change_t: float | None = None


class Narrower:
    """Per-component detectors, ranked by onset of deviation, then strength."""

    version: ClassVar[int] = 1

    def __init__(self, make: Callable[[], StreamingDetector], *, onset_level: float = 0.99,
                 quiet_s: float = 10.0, tie_s: float = 5.0, max_components: int = 64) -> None:
        self.make = make
        self.onset_level = float(onset_level)
        self.quiet_s = float(quiet_s)
        self.tie_s = float(tie_s)
        self.max_components = int(max_components)
        self.detectors: dict[str, StreamingDetector] = {}
        self._episodes: dict[str, _Episode] = {}

    def update(self, component: str, value: float, t: float) -> float:
        """Score ``value`` on ``component``'s chart and track its episode; returns the score."""
        det = self.detectors.get(component)
        if det is None:
            if len(self.detectors) >= self.max_components:
                return 0.0
            det = self.detectors[component] = self.make()
        score = det.update(value, t)
        ev = det.evidence()
        if ev.get("skipped"):
            return score
        t = float(ev.get("t", t))
        ep = self._episodes.get(component)
        if score >= self.onset_level:
            z = ev.get("z")
            strength = abs(float(z)) if isinstance(z, (int, float)) and math.isfinite(z) else score
            rule = str(ev.get("rule", "score"))
            if ep is None:
                since = ev.get("since")
                change = float(since) if isinstance(since, (int, float)) and since <= t else None
                self._episodes[component] = _Episode(t, t, strength, score, rule, change)
            else:
                ep.last_high_t = t
                ep.score = score
                if strength > ep.strength:
                    ep.strength, ep.rule = strength, rule
        elif ep is not None:
            ep.score = score
            if t - ep.last_high_t >= self.quiet_s:
                del self._episodes[component]
        return score

    def evidence(self, component: str) -> dict[str, Any]:
        det = self.detectors.get(component)
        return det.evidence() if det is not None else {}

    def ranking(self) -> list[Suspect]:
        """Components in an episode: earliest onset first; onsets within ``tie_s`` by strength."""
        eps = sorted(self._episodes.items(), key=lambda kv: (kv[1].onset_t, kv[0]))
        out: list[Suspect] = []
        i = 0
        while i < len(eps):
            start = eps[i][1].onset_t
            j = i
            while j < len(eps) and eps[j][1].onset_t - start <= self.tie_s:
                j += 1
            group = sorted(eps[i:j], key=lambda kv: (-kv[1].strength, kv[0]))
            out.extend(Suspect(c, e.onset_t, e.strength, e.score, e.rule, e.change_t) for c, e in group)
            i = j
        return out

    def suspect(self) -> Suspect | None:
        ranked = self.ranking()
        return ranked[0] if ranked else None

    def forget(self, component: str | None = None) -> None:
        """Drop one component's detector and episode (or all): it learns afresh."""
        if component is None:
            self.detectors.clear()
            self._episodes.clear()
        else:
            self.detectors.pop(component, None)
            self._episodes.pop(component, None)

    def state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "kind": "narrower", "version": self.version,
                "params": {"onset_level": self.onset_level, "quiet_s": self.quiet_s,
                           "tie_s": self.tie_s, "max_components": self.max_components},
                "data": {"detectors": {c: d.state() for c, d in self.detectors.items()},
                         "episodes": {c: [e.onset_t, e.last_high_t, e.strength, e.score, e.rule,
                                          e.change_t] for c, e in self._episodes.items()}}}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Take over a saved state (the factory ``make`` stays this object's)."""
        params, data = check_state(state, "narrower", self.version)
        try:
            detectors = {str(c): detector_from_state(s) for c, s in data["detectors"].items()}
            episodes = {str(c): _Episode(float(a), float(b), float(s), float(sc), str(r),
                                         None if ch is None else float(ch))
                        for c, (a, b, s, sc, r, ch) in data["episodes"].items()}
            self.onset_level = float(params["onset_level"])
            self.quiet_s = float(params["quiet_s"])
            self.tie_s = float(params["tie_s"])
            self.max_components = int(params["max_components"])
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateFormatError("narrower", f"malformed body: {exc!r}") from exc
        self.detectors = detectors
        self._episodes = episodes
