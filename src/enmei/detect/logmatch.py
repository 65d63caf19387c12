"""Log lines that match a pattern too often: kind ``log_pattern``, a detector on the text channel.

Observations carry text in ``lines`` (the ``log`` probe: a unit's stdout, stderr, or a VM's serial
console). This detector counts the lines that match ``pattern``::

    [[units.web.detectors]]
    kind = "log_pattern"
    pattern = "Traceback|MemoryError"
    probe = "log"          # only this probe's lines (default: any observation that carries lines)
    count = 3              # matches ...
    window_s = 60          # ... within this long give a verdict
    hold_off_s = 300       # then none for this long
    severity = "warning"

The verdict is LOG_ANOMALY (the default policy alerts on it) with evidence: pattern, matches in the
window, and up to five of the matching lines (each cut to 240 characters). Its memory is bounded by
``count`` (timestamps of the latest matches) and the five sample lines. ``reset()`` forgets the matches
of the old instance (the hold-off too).
"""

from __future__ import annotations

import math
import re
from collections import deque
from typing import Any, Literal

from pydantic import Field, field_validator

from enmei.detect.protocol import NOTHING, DetectorContext, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Observation, Severity, Verdict, VerdictKind

__all__ = ["LogPatternDetector", "LogPatternOptions"]

_SAMPLES = 5
_CUT = 240


class LogPatternOptions(DetectorOptions):
    pattern: str
    probe: str | None = None
    count: int = Field(default=1, ge=1, le=100_000)
    window_s: float = Field(default=60.0, gt=0)
    hold_off_s: float = Field(default=300.0, ge=0)
    severity: Literal["info", "warning", "critical"] = "warning"

    @field_validator("pattern")
    @classmethod
    def _regex(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        return pattern


class LogPatternDetector:
    def __init__(self, unit: str, opts: LogPatternOptions) -> None:
        self.kind = "log_pattern"
        self.name = opts.detector_name
        self.unit = unit
        self.opts = opts
        self.regex = re.compile(opts.pattern)
        self._times: deque[float] = deque(maxlen=opts.count)
        self._samples: deque[str] = deque(maxlen=_SAMPLES)
        self._quiet_until = -math.inf
        self.matched = 0

    def feed(self, obs: Observation) -> Judgement:
        if not obs.lines or (self.opts.probe is not None and obs.probe != self.opts.probe):
            return NOTHING
        t = obs.mono if math.isfinite(obs.mono) else 0.0
        hits = 0
        for line in obs.lines:
            if isinstance(line, str) and self.regex.search(line):
                hits += 1
                self._samples.append(line[:_CUT])
        if not hits:
            return NOTHING
        self.matched += hits
        # All the matches of one observation share its timestamp; only the newest `count` matter.
        for _ in range(min(hits, self.opts.count)):
            self._times.append(t)
        window = self.opts.window_s
        in_window = sum(1 for x in self._times if t - x <= window)
        if in_window < self.opts.count or t < self._quiet_until:
            return NOTHING
        self._quiet_until = t + self.opts.hold_off_s
        o = self.opts
        return Judgement((Verdict(
            self.unit, f"log:{self.name}", VerdictKind.LOG_ANOMALY, Severity(o.severity), obs.mono,
            f"{in_window} log line(s) matching {o.pattern!r} within {window:g}s (probe {obs.probe})",
            {"pattern": o.pattern, "probe": obs.probe, "matches": in_window, "count": o.count,
             "window_s": window, "lines": list(self._samples), "rule": f"{o.count} matches in {window:g}s"}),))

    def reset(self) -> None:
        self._times.clear()
        self._samples.clear()
        self._quiet_until = -math.inf

    def state(self) -> dict[str, Any]:
        return {"pattern": self.opts.pattern, "matched": self.matched, "recent": len(self._times),
                "quiet_until": self._quiet_until if math.isfinite(self._quiet_until) else None}

    def limits(self) -> dict[str, Limit]:
        return {}


def _build(ctx: DetectorContext, opts: LogPatternOptions) -> LogPatternDetector:
    return LogPatternDetector(ctx.unit, opts)


register("log_pattern", LogPatternOptions, _build, example={"pattern": "Traceback|ERROR", "count": 2})
