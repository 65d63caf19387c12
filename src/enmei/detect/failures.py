"""Consecutive probe failures: the simplest detector, and the one the default policy restarts on.

``ProbeFailures.update(obs)`` returns a ``PROBE_FAILED`` verdict when a probe has failed ``fail_after``
times in a row (once per failing streak), and a ``PROBE_RECOVERED`` verdict at the first success after
that. ``reset()`` forgets the streak (the engine calls it when the unit restarts).

:class:`ProbeFailureDetector` (kind ``probe_failures``) is the unit detector made of these streaks, one
per active probe and injector; it also reports the health each probe shows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field

from enmei.detect.protocol import NOTHING, DetectorContext, HealthReport, Judgement, Limit
from enmei.detect.registry import DetectorOptions, register
from enmei.model import Health, Observation, Severity, Verdict, VerdictKind

__all__ = ["ProbeFailureDetector", "ProbeFailureOptions", "ProbeFailures"]


class ProbeFailures:
    def __init__(self, unit: str, probe: str, fail_after: int) -> None:
        self.unit = unit
        self.probe = probe
        self.fail_after = fail_after
        self.streak = 0
        self.first_failure_mono: float | None = None
        self.fired = False

    def reset(self) -> None:
        self.streak = 0
        self.first_failure_mono = None
        self.fired = False

    def update(self, obs: Observation) -> Verdict | None:
        if obs.ok:
            recovered = self.fired
            failed_for = obs.mono - self.first_failure_mono if self.first_failure_mono is not None else 0.0
            self.reset()
            if recovered:
                return Verdict(self.unit, f"probe-failures:{self.probe}", VerdictKind.PROBE_RECOVERED,
                               Severity.INFO, obs.mono, f"probe {self.probe} passes again",
                               {"probe": self.probe, "failed_for_s": round(failed_for, 3)})
            return None
        self.streak += 1
        if self.first_failure_mono is None:
            self.first_failure_mono = obs.mono
        if self.streak >= self.fail_after and not self.fired:
            self.fired = True
            return Verdict(
                self.unit, f"probe-failures:{self.probe}", VerdictKind.PROBE_FAILED, Severity.CRITICAL, obs.mono,
                f"probe {self.probe} failed {self.streak} times in a row: {obs.error}",
                {"probe": self.probe, "streak": self.streak, "rule": f"{self.fail_after} consecutive failures",
                 "last_error": obs.error, "first_failure_mono": self.first_failure_mono,
                 "failing_for_s": round(obs.mono - self.first_failure_mono, 3)},
            )
        return None


class ProbeFailureOptions(DetectorOptions):
    """``kind = "probe_failures"``: ``fail_after`` (if set) replaces every probe's own ``fail_after``."""

    fail_after: int | None = Field(default=None, ge=1)


class ProbeFailureDetector:
    """The unit detector over its active probes and injectors: one :class:`ProbeFailures` streak each.

    Verdicts: PROBE_FAILED / PROBE_RECOVERED as :class:`ProbeFailures` gives them. Health, per probe:
    FAILING once its streak fired, DEGRADED on a failure before that, OK on a pass; a readiness probe
    gives DEGRADED while it fails and no verdict. Observations of other
    probes (resource stats, logs) are not its business. ``reset()`` forgets every streak.
    """

    def __init__(self, unit: str, fail_after: Mapping[str, int], name: str = "probe_failures",
                 readiness: frozenset[str] = frozenset()) -> None:
        """``readiness``: probes whose failures only degrade the health (DEGRADED while failing, OK on a
        pass), never a verdict: a unit that is up but not ready to serve is not restarted for it."""
        self.kind = "probe_failures"
        self.name = name
        self.unit = unit
        self.trackers = {p: ProbeFailures(unit, p, n) for p, n in fail_after.items() if p not in readiness}
        self.readiness = readiness

    def feed(self, obs: Observation) -> Judgement:
        if obs.probe in self.readiness:
            if obs.ok:
                return Judgement((), (HealthReport(obs.probe, Health.OK, f"probe {obs.probe} passes"),))
            return Judgement((), (HealthReport(obs.probe, Health.DEGRADED,
                                               f"not ready: readiness probe {obs.probe}: {obs.error}"),))
        tracker = self.trackers.get(obs.probe)
        if tracker is None:
            return NOTHING
        v = tracker.update(obs)
        if tracker.fired:
            report = HealthReport(obs.probe, Health.FAILING, f"probe {obs.probe}: {obs.error}")
        elif not obs.ok:
            report = HealthReport(obs.probe, Health.DEGRADED, f"probe {obs.probe}: {obs.error}")
        else:
            report = HealthReport(obs.probe, Health.OK, f"probe {obs.probe} passes")
        return Judgement(() if v is None else (v,), (report,))

    def reset(self) -> None:
        for tracker in self.trackers.values():
            tracker.reset()

    def state(self) -> dict[str, Any]:
        return {p: {"streak": t.streak, "fired": t.fired, "fail_after": t.fail_after}
                for p, t in self.trackers.items()}

    def limits(self) -> dict[str, Limit]:
        return {}


def _build(ctx: DetectorContext, opts: ProbeFailureOptions) -> ProbeFailureDetector:
    counts: dict[str, int] = {}
    for p in ctx.probes:
        if p.fail_after is not None:  # active probes (http, tcp): passive ones cannot fail that way
            counts[p.name] = opts.fail_after or p.fail_after
    for inj in ctx.injectors:  # one failed injection (no answer, a refused keystroke) is a verdict
        if inj.kind == "typing_schedule":
            continue  # counters read between slots, judged by the keylogger detector: one unread is no failure
        counts[inj.name] = opts.fail_after or 1
    readiness = frozenset(p.name for p in ctx.probes if p.role == "readiness")
    return ProbeFailureDetector(ctx.unit, counts, opts.detector_name, readiness)


register("probe_failures", ProbeFailureOptions, _build)
