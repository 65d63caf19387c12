"""Consecutive probe failures: the simplest detector, and the one the default policy restarts on.

``ProbeFailures.update(obs)`` returns a ``PROBE_FAILED`` verdict when a probe has failed ``fail_after``
times in a row (once per failing streak), and a ``PROBE_RECOVERED`` verdict at the first success after
that. ``reset()`` forgets the streak (the engine calls it when the unit restarts).
"""

from __future__ import annotations

from enmei.model import Observation, Severity, Verdict, VerdictKind

__all__ = ["ProbeFailures"]


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
