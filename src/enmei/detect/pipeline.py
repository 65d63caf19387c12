"""Latency charts and aging trends of one unit: :class:`UnitJudge`, observations in, verdicts out.

The ``latency`` and ``aging`` unit detectors (:mod:`enmei.detect.judges`) are each a judge doing one
half of this job; the engine reaches them through :class:`~enmei.detect.unitset.UnitDetectors`.

::

    judge = UnitJudge("web", aging_limits={"rss_bytes": 512 * 2**20, "num_fds": 1024})
    for obs in observations:                 # every Observation of the unit, in order
        for verdict in judge.feed(obs):      # usually none; ANOMALY or AGING verdicts
            ...

**Latency (ANOMALY).** Each probe that reports ``latency_metric`` (``latency_s``) and ``ok`` is a
component (``"http"``, ``"http:/api/items"``...). Its latencies, on a log scale (``ln(max(latency,
latency_floor_s))``: latencies are skewed, their logarithm much less), feed one chart per component:
an EWMA (λ 0.2) and a CUSUM (k 0.5), **one-sided** by default (``side="up"``: only a slowdown is
evidence; a faster service never alarms) with limits ``L = z(1 - alpha)`` sigmas and h such that
ARL0 = 1/alpha (``side="both"``: two-sided, ``L = z(1 - alpha/2)``), after a robust learning phase
of ``learning`` samples (median and trimmed spread of the component's own log latencies). Each value
is clipped to ``clip_sigmas`` (4) before it enters the statistics: an isolated slow request cannot
alarm on its own, a sustained slowdown does (a 2x slowdown with a log-spread of 0.3 in about ten
samples). With ``alpha`` = 1e-6 the nominal false-alarm rate is below one a day per component at
1 Hz; real latencies are heavier-tailed than normal, which the clipping absorbs.
Failed probes (``ok`` false) are left to the failure detector.

When a component's score reaches ``1 - alpha`` the judge emits an ANOMALY verdict for the unit, with
evidence: component, probe, metric, value / centre / lower / upper / limits in seconds (the limits
``exp(centre ± L sigma)`` of a single value; ``lower`` is 0 when one-sided), side, rule, detector
(``ewma`` or ``cusum``), z, statistic, window, score, repeat, and ``suspect``: the component whose
stream alarmed (the evidence). The narrowing is reported beside it: ``first_deviation`` (the component
whose deviation began first — at the early-warning level ``1 - onset_alpha`` — strongest among those
that began within 5 s) and ``ranking`` (up to 5 components in an episode).

**Aging (AGING).** For each metric in ``aging_limits`` found in an observation's values (the ``proc``
probe's ``rss_bytes``, ``num_fds``, ``num_threads``...), a :class:`~enmei.detect.aging.TrendDetector`
with that limit. At a score of ``1 - aging_alpha`` (a persistent upward Mann–Kendall trend predicting
exhaustion within ``aging_horizon_s``) the judge emits an AGING verdict with evidence: metric, value,
level, limit, slope_per_s, exhaust_in_s, mk_z, mk_p, window_s, buckets, rule. Severity is CRITICAL if
exhaustion is predicted within ``critical_exhaust_s``, else WARNING.

**Hold-off (not every second).** Each alarm stream (each latency component — a verdict on one endpoint
never silences another —, each aging metric) goes through a :class:`~enmei.detect.base.Threshold`:
after a verdict it is disarmed; it re-arms once ``hold_off_s`` (latency; ``aging_hold_off_s`` for
aging) has passed *and* the score has stayed below the level for ``quiet_s`` seconds. While an episode
persists it is reported again every ``repeat_s`` (latency, 60 s; evidence ``repeat`` true) or
``aging_repeat_s`` (None: never) — a slowdown that lasts is what the shipped policy confirms and acts
on.

**Cost.** About 15-30 µs per latency observation and a few µs per aging metric (plus, once per
``aging_bucket_s`` per metric, a bounded O(window²) numpy test well under a millisecond).

**Bad input.** Non-finite or non-numeric values are skipped (no verdict, no learning); observations of
other probes or without the metrics are ignored; timestamps (``obs.mono``) that go backwards are treated as the last
one. **State.** ``state()`` / ``restore()``: a versioned plain dict holding every detector's state.
Call ``reset()`` when the unit restarts: aging starts over (a restart frees leaked memory); pass
``latency=True`` to relearn the latency charts too (e.g. after an update changed the service).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any, ClassVar

from enmei.detect.aging import TrendDetector
from enmei.detect.base import STATE_FORMAT, StateFormatError, Threshold, check_state, detector_from_state
from enmei.detect.charts import CUSUM, EWMA, cusum_arl0
from enmei.detect.ensemble import MaxOf
from enmei.detect.narrow import Narrower
from enmei.detect.protocol import Limit
from enmei.model import Observation, Severity, Verdict, VerdictKind

__all__ = ["UnitJudge", "cusum_h_for_arl0"]


def cusum_h_for_arl0(arl0: float, k: float = 0.5, sides: int = 2) -> float:
    """The CUSUM limit ``h`` (sigmas) whose in-control ARL (two-sided, or one-sided with ``sides=1``)
    is ``arl0`` (bisection)."""
    lo, hi = 0.0, 50.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if cusum_arl0(mid, k, sides) < arl0:
            lo = mid
        else:
            hi = mid
    return hi


def _number(raw: Any) -> float:
    """A reported value as a float; anything that is not a number becomes NaN (and is skipped)."""
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


class UnitJudge:
    """Turns one unit's observations into ANOMALY (latency) and AGING (resources) verdicts."""

    version: ClassVar[int] = 1

    def __init__(self, unit: str, *, latency_metric: str = "latency_s",
                 aging_limits: Mapping[str, float] | None = None, learning: int = 300,
                 alpha: float = 1e-6, onset_alpha: float = 1e-3, latency_floor_s: float = 1e-4,
                 clip_sigmas: float | None = 4.0, side: str = "up",
                 hold_off_s: float = 300.0, quiet_s: float = 30.0, repeat_s: float | None = 60.0,
                 aging_alpha: float = 1e-3, aging_horizon_s: float = 86400.0,
                 aging_bucket_s: float = 60.0, aging_window: int = 120, aging_min_buckets: int = 20,
                 aging_warmup_s: float = 600.0, aging_hold_off_s: float = 1800.0,
                 aging_repeat_s: float | None = 3600.0, critical_exhaust_s: float = 3600.0) -> None:
        if not 0.0 < alpha < 1.0 or not 0.0 < onset_alpha < 1.0 or not 0.0 < aging_alpha < 1.0:
            raise ValueError("alphas must be in (0, 1)")
        if side not in ("up", "both"):
            raise ValueError(f"side must be 'up' or 'both', got {side!r}")
        self.unit = unit
        self.params: dict[str, Any] = {
            "latency_metric": latency_metric, "aging_limits": dict(aging_limits or {}),
            "learning": int(learning), "alpha": float(alpha), "onset_alpha": float(onset_alpha),
            "latency_floor_s": float(latency_floor_s),
            "clip_sigmas": None if clip_sigmas is None else float(clip_sigmas),
            "side": side, "hold_off_s": float(hold_off_s),
            "repeat_s": None if repeat_s is None else float(repeat_s), "quiet_s": float(quiet_s),
            "aging_alpha": float(aging_alpha),
            "aging_horizon_s": float(aging_horizon_s), "aging_bucket_s": float(aging_bucket_s),
            "aging_window": int(aging_window), "aging_min_buckets": int(aging_min_buckets),
            "aging_warmup_s": float(aging_warmup_s), "aging_hold_off_s": float(aging_hold_off_s),
            "aging_repeat_s": None if aging_repeat_s is None else float(aging_repeat_s),
            "critical_exhaust_s": float(critical_exhaust_s),
        }
        self.latency_metric = latency_metric
        self.aging_limits = dict(aging_limits or {})
        self.learning = int(learning)
        self.alpha = float(alpha)
        self.latency_floor_s = float(latency_floor_s)
        self.clip = None if clip_sigmas is None else float(clip_sigmas)
        self.critical_exhaust_s = float(critical_exhaust_s)
        self.side = side
        sides = 2 if side == "both" else 1
        self._sigmas = NormalDist().inv_cdf(1.0 - self.alpha / sides)
        self._cusum_h = cusum_h_for_arl0(1.0 / self.alpha, sides=sides)
        self.narrower = Narrower(self._make_chart, onset_level=1.0 - float(onset_alpha))
        #: One alarm stream per component, each with its own hold-off: a verdict on one endpoint never
        #: silences another.
        self.latency_gates: dict[str, Threshold] = {}
        self.aging: dict[str, TrendDetector] = {}
        self.aging_gates: dict[str, Threshold] = {}

    # -- construction of the detectors ----------------------------------------------------------
    def _make_chart(self) -> MaxOf:
        n, clip = self.learning, self.clip
        return MaxOf([
            EWMA(learning=n, lam=0.2, sigmas=self._sigmas, clip=clip, side=self.side),
            CUSUM(learning=n, k=0.5, h=self._cusum_h, clip=clip, side=self.side),
        ])

    def make_chart(self) -> MaxOf:
        """A fresh, unlearned chart of one latency component, built as this judge builds its own (the
        benchmark scores it)."""
        return self._make_chart()

    def _latency_gate(self, component: str) -> Threshold:
        gate = self.latency_gates.get(component)
        if gate is None:
            p = self.params
            gate = self.latency_gates[component] = Threshold(
                1.0 - self.alpha, hold_off_s=p["hold_off_s"], quiet_s=p["quiet_s"], repeat_s=p["repeat_s"])
        return gate

    def _aging_for(self, metric: str) -> tuple[TrendDetector, Threshold]:
        det = self.aging.get(metric)
        if det is None:
            p = self.params
            det = self.aging[metric] = TrendDetector(
                limit=float(self.aging_limits[metric]), bucket_s=p["aging_bucket_s"],
                window=p["aging_window"], min_buckets=p["aging_min_buckets"],
                horizon_s=p["aging_horizon_s"], warmup_s=p["aging_warmup_s"])
            self.aging_gates[metric] = Threshold(1.0 - p["aging_alpha"], hold_off_s=p["aging_hold_off_s"],
                                                 quiet_s=p["quiet_s"], repeat_s=p["aging_repeat_s"])
        return det, self.aging_gates[metric]

    # -- the seam -------------------------------------------------------------------------------
    def feed(self, obs: Observation) -> list[Verdict]:
        """Judge one observation; returns the verdicts it causes (usually none)."""
        out: list[Verdict] = []
        values = obs.values
        t = obs.mono
        if obs.ok and self.latency_metric in values:
            latency = _number(values[self.latency_metric])
            v = self._latency(obs, latency, t)
            if v is not None:
                out.append(v)
        for metric in self.aging_limits:
            if metric in values:
                v = self._aging(obs, metric, _number(values[metric]), t)
                if v is not None:
                    out.append(v)
        return out

    def _latency(self, obs: Observation, latency: float, t: float) -> Verdict | None:
        if not math.isfinite(latency):
            return None
        component = obs.probe
        x = math.log(max(latency, self.latency_floor_s))
        score = self.narrower.update(component, x, t)
        det = self.narrower.detectors.get(component)
        if det is None:
            return None
        ev = det.evidence()
        alarm = self._latency_gate(component).judge(score, t, ev)
        if alarm is None:
            return None
        first = det.members[0] if isinstance(det, MaxOf) else det
        centre, sigma = getattr(first, "centre", math.nan), getattr(first, "sigma", math.nan)
        ranking = self.narrower.ranking()
        # The suspect is the component whose own stream alarmed: that is the evidence. The narrower's
        # ranking (which deviated first) is reported beside it, never in its place.
        suspect = component
        lower = 0.0 if self.side == "up" else math.exp(centre - self._sigmas * sigma)
        upper = math.exp(centre + self._sigmas * sigma)
        evidence = {
            "metric": self.latency_metric, "component": component, "probe": obs.probe,
            "value": latency, "centre": math.exp(centre),
            "lower": lower, "upper": upper, "limits": [lower, upper], "side": self.side,
            "repeat": bool(alarm.evidence.get("repeat")),
            "rule": alarm.rule, "detector": ev.get("detector"), "z": ev.get("z"),
            "statistic": ev.get("statistic"), "window": ev.get("window"), "score": score,
            "alpha": self.alpha, "scale": "log", "suspect": suspect,
            "first_deviation": ranking[0].component if ranking else component,
            "ranking": [s.as_dict() for s in ranking[:5]],
        }
        sev = Severity.CRITICAL if latency > 10 * math.exp(centre) else Severity.WARNING
        return Verdict(self.unit, f"charts:{self.latency_metric}", VerdictKind.ANOMALY, sev, t,
                       f"{self.latency_metric} of {component} out of control ({alarm.rule}): "
                       f"{latency * 1000:.1f} ms vs {math.exp(centre) * 1000:.1f} ms; suspect {suspect}",
                       evidence)

    def _aging(self, obs: Observation, metric: str, value: float, t: float) -> Verdict | None:
        det, gate = self._aging_for(metric)
        score = det.update(value, t)
        ev = det.evidence()
        alarm = gate.judge(score, t, ev)
        if alarm is None:
            return None
        exhaust = ev.get("exhaust_in_s")
        evidence = {
            "metric": metric, "value": value, "level": ev.get("level"), "limit": ev.get("limit"),
            "slope_per_s": ev.get("slope_per_s"), "exhaust_in_s": exhaust, "mk_z": ev.get("mk_z"),
            "mk_p": ev.get("mk_p"), "window_s": ev.get("window_s"), "buckets": ev.get("buckets"),
            "rule": alarm.rule, "probe": obs.probe, "repeat": bool(alarm.evidence.get("repeat")),
        }
        crit = isinstance(exhaust, (int, float)) and exhaust <= self.critical_exhaust_s
        when = _duration(exhaust) if isinstance(exhaust, (int, float)) else "an unknown time"
        return Verdict(self.unit, f"aging:{metric}", VerdictKind.AGING,
                       Severity.CRITICAL if crit else Severity.WARNING, t,
                       f"{metric} grows {_amount(metric, float(ev.get('slope_per_s') or 0.0))}/s and reaches its "
                       f"limit {_amount(metric, float(ev.get('limit') or 0.0))} in {when}", evidence)

    def limits(self) -> dict[str, Limit]:
        """Per component (``"http.latency_s"``), the single-value limits of its latency chart now — the
        ``lower``/``upper`` its ANOMALY verdicts report. Components still learning have none."""
        out: dict[str, Limit] = {}
        z = self._sigmas
        for component, det in self.narrower.detectors.items():
            first = det.members[0] if isinstance(det, MaxOf) else det
            c, s = getattr(first, "centre", math.nan), getattr(first, "sigma", math.nan)
            if isinstance(c, float) and isinstance(s, float) and math.isfinite(c) and math.isfinite(s) and s > 0:
                lower = 0.0 if self.side == "up" else math.exp(c - z * s)
                out[f"{component}.{self.latency_metric}"] = Limit(math.exp(c), lower, math.exp(c + z * s))
        return out

    # -- lifecycle and state --------------------------------------------------------------------
    def reset(self, *, latency: bool = False, aging: bool = True) -> None:
        """Forget after a restart: aging detectors (default) and, if asked, the latency charts."""
        if aging:
            self.aging.clear()
            self.aging_gates.clear()
        if latency:
            self.narrower.forget()
            self.latency_gates.clear()

    def state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "kind": "unit_judge", "version": self.version,
                "params": {"unit": self.unit, **self.params},
                "data": {"narrower": self.narrower.state(),
                         "latency_gates": {c: g.state() for c, g in self.latency_gates.items()},
                         "aging": {m: d.state() for m, d in self.aging.items()},
                         "aging_gates": {m: g.state() for m, g in self.aging_gates.items()}}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> UnitJudge:
        params, data = check_state(state, "unit_judge", cls.version)
        try:
            unit = str(params.pop("unit"))
            judge = cls(unit, **params)
            judge.narrower.restore(data["narrower"])
            # (A state saved before the gates were per component had one "latency_gate": its streams
            # start armed.)
            judge.latency_gates = {str(c): Threshold.from_state(g) for c, g in data.get("latency_gates", {}).items()}
            aging: dict[str, TrendDetector] = {}
            for m, s in data["aging"].items():
                det = detector_from_state(s)
                if not isinstance(det, TrendDetector):
                    raise StateFormatError("unit_judge", f"aging detector {m} is a {det.kind}")
                aging[str(m)] = det
            judge.aging = aging
            judge.aging_gates = {str(m): Threshold.from_state(s) for m, s in data["aging_gates"].items()}
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StateFormatError("unit_judge", f"malformed body: {exc!r}") from exc
        return judge

    def restore(self, state: Mapping[str, Any]) -> None:
        """Become the judge that saved ``state``."""
        other = UnitJudge.from_state(state)
        vars(self).clear()
        vars(self).update(vars(other))


def _amount(metric: str, value: float) -> str:
    """A value for a person: bytes in KiB/MiB/GiB, other counts as they are."""
    if metric.endswith("_bytes"):
        for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if abs(value) >= size:
                return f"{value / size:.3g} {unit}"
        return f"{value:.3g} B"
    return f"{value:.4g}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
