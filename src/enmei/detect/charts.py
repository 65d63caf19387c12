"""Control charts: Shewhart individuals / X̄ with Western Electric and Nelson rules, EWMA, CUSUM.

Every chart starts with a **learning phase** (Phase I): the first ``learning`` samples (for X̄, subgroup
means) only estimate the in-control centre and standard deviation and score 0. The estimate is robust
by default (median and 1.4826 × MAD; if more than half the samples are equal, the mean absolute
deviation from the median × 1.2533), refined by the standard deviation of the samples within 3.5 such sigmas
(see :func:`robust_centre_sigma`) — or classic (``robust=False``: mean, and for individuals the average
moving range / 1.128, for X̄ the standard deviation of the subgroup means). The spread is floored at
``max(min_sigma, 1e-6 × |centre|, 1e-12)`` so that a constant series still has limits, and a change
from it scores high but finite. Then the limits are fixed (Phase II) until the detector is replaced.

**Scores are nominal false-alarm probabilities.** A chart's score is ``1 - alpha`` where ``alpha`` is
the nominal probability, for in-control independent normal data, of evidence this strong: for a
fired rule, the per-sample probability that the rule fires; for CUSUM, ``1 / ARL0`` of a limit at
the current statistic (Siegmund's approximation). A chart's scores when no rule fires stay below
:attr:`alarm_level`, the lowest score of a fired rule, so ``Threshold(chart.alarm_level)`` alarms
exactly when a configured rule fires, and a higher level selects only the rarer rules.
Evidence (``evidence()``): value, centre, lower, upper (the chart's limits in value units; for CUSUM
the limits ``±h`` of its signed statistic, in sigmas), z, rule (the strongest rule that fired, or
``none``), window (samples in the rule's window), statistic.

Rules (``SHEWHART_RULES``; nominal per-sample alpha, two-sided)::

    beyond_limit    1 point beyond ±L sigma (L = ``sigmas``, 3 by default)   WE1, Nelson 1   0.0027
    2of3_beyond_2s  2 of 3 beyond 2 sigma, same side                        WE2, Nelson 5   0.0031
    4of5_beyond_1s  4 of 5 beyond 1 sigma, same side                        WE3, Nelson 6   0.0055
    8_same_side     8 in a row on one side of the centre                     WE4             0.0078
    9_same_side     9 in a row on one side                                   Nelson 2        0.0039
    6_trending      6 in a row steadily increasing or decreasing             Nelson 3        0.0028
    14_alternating  14 in a row alternating up and down                      Nelson 4        0.0046
    15_within_1s    15 in a row within 1 sigma (stratification)              Nelson 7        0.0033
    8_outside_1s    8 in a row beyond 1 sigma, either side                   Nelson 8        0.0001

Presets: ``"western_electric"`` (the first four) and ``"nelson"`` (all but 8_same_side).
Bad input: see :mod:`enmei.detect.base`.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from collections.abc import Sequence
from typing import Any, ClassVar

from enmei.detect.base import StreamingDetector

__all__ = ["CUSUM", "EWMA", "SHEWHART_RULES", "Shewhart", "classic_centre_sigma", "cusum_arl0",
           "normal_two_sided_tail", "robust_centre_sigma"]


def normal_two_sided_tail(z: float) -> float:
    """P(|N(0,1)| >= |z|)."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def _q1(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _rule_alphas(sigmas: float) -> dict[str, float]:
    p1, p2, pl = _q1(1.0), _q1(2.0), _q1(sigmas)
    two_of_three = 3 * p2 * p2 * (1 - p2) + p2**3
    four_of_five = 5 * p1**4 * (1 - p1) + p1**5
    return {
        "beyond_limit": 2 * pl,
        "2of3_beyond_2s": 2 * two_of_three,
        "4of5_beyond_1s": 2 * four_of_five,
        "8_same_side": 2 * 0.5**8,
        "9_same_side": 2 * 0.5**9,
        "6_trending": 2 / 720,
        "14_alternating": 0.0046,
        "15_within_1s": (1 - 2 * p1) ** 15,
        "8_outside_1s": (2 * p1) ** 8,
    }


SHEWHART_RULES: dict[str, tuple[str, ...]] = {
    "western_electric": ("beyond_limit", "2of3_beyond_2s", "4of5_beyond_1s", "8_same_side"),
    "nelson": ("beyond_limit", "9_same_side", "6_trending", "14_alternating", "2of3_beyond_2s",
               "4of5_beyond_1s", "15_within_1s", "8_outside_1s"),
}
_RULE_WINDOW = {"beyond_limit": 1, "2of3_beyond_2s": 3, "4of5_beyond_1s": 5, "8_same_side": 8,
                "9_same_side": 9, "6_trending": 6, "14_alternating": 14, "15_within_1s": 15,
                "8_outside_1s": 8}


def robust_centre_sigma(values: Sequence[float]) -> tuple[float, float]:
    """Median, and the standard deviation of the values within 3.5 robust sigmas of it.

    The robust sigma is 1.4826 × MAD (the mean absolute deviation × 1.2533 when the MAD is 0). Keeping
    only the values within 3.5 of those and taking their standard deviation is as robust to outliers
    and almost as efficient as the standard deviation on clean normal data (the MAD alone needs
    about 2.7 times more samples for the same precision, which matters for tight limits). If that
    leaves no spread (most values equal), the robust sigma is kept.
    """
    med = statistics.median(values)
    dev = [abs(v - med) for v in values]
    mad = statistics.median(dev)
    sigma0 = 1.4826 * mad if mad > 0.0 else 1.2533 * (math.fsum(dev) / len(dev))
    if sigma0 <= 0.0:
        return med, 0.0
    kept = [v for v in values if abs(v - med) <= 3.5 * sigma0]
    # 0.99767: the standard deviation of a normal truncated at ±3.5 sigma, relative to sigma.
    refined = statistics.pstdev(kept, med) / 0.99767 if len(kept) >= 3 else 0.0
    return med, refined if refined > 0.0 else sigma0


def classic_centre_sigma(values: Sequence[float], individuals: bool) -> tuple[float, float]:
    """Mean and, for individuals, the average moving range / 1.128; otherwise the sample std."""
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    if individuals:
        mr = [abs(b - a) for a, b in itertools.pairwise(values)]
        return mean, (math.fsum(mr) / len(mr)) / 1.128
    return mean, statistics.stdev(values)


_SIDES = ("both", "up", "down")


def _side(side: str) -> str:
    if side not in _SIDES:
        raise ValueError(f"side must be one of {', '.join(_SIDES)}, got {side!r}")
    return side


def _clipped(x: float, centre: float, sigma: float, clip: float | None) -> float:
    """``x`` limited to ``centre ± clip * sigma`` (unchanged if ``clip`` is None)."""
    if clip is None:
        return x
    lim = clip * sigma
    return min(max(x, centre - lim), centre + lim)


class _Chart(StreamingDetector):
    """Learning phase and the shared parameters of the charts."""

    def __init__(self, learning: int, robust: bool, min_sigma: float) -> None:
        super().__init__()
        if learning < 2:
            raise ValueError("learning must be >= 2")
        self.learning = int(learning)
        self.robust = bool(robust)
        self.min_sigma = float(min_sigma)
        self._learn: list[float] | None = []
        self.centre = math.nan
        self.sigma = math.nan

    @property
    def learned(self) -> bool:
        return self._learn is None

    def _learn_one(self, x: float, t: float, individuals: bool) -> bool:
        """Feed the learning phase; True once the limits are fixed."""
        if self._learn is None:
            return True
        self._learn.append(x)
        self._ev = {"value": x, "t": t, "rule": "learning", "window": len(self._learn)}
        if len(self._learn) >= self.learning:
            if self.robust:
                centre, sigma = robust_centre_sigma(self._learn)
            else:
                centre, sigma = classic_centre_sigma(self._learn, individuals)
            self.centre = centre
            self.sigma = max(sigma, self.min_sigma, 1e-6 * abs(centre), 1e-12)
            self._learn = None
        return False

    def _base_params(self) -> dict[str, Any]:
        return {"learning": self.learning, "robust": self.robust, "min_sigma": self.min_sigma}

    def _base_dump(self) -> dict[str, Any]:
        return {"learn": self._learn, "centre": None if math.isnan(self.centre) else self.centre,
                "sigma": None if math.isnan(self.sigma) else self.sigma}

    def _base_load(self, data: Any) -> None:
        learn = data["learn"]
        self._learn = None if learn is None else [float(v) for v in learn]
        self.centre = math.nan if data["centre"] is None else float(data["centre"])
        self.sigma = math.nan if data["sigma"] is None else float(data["sigma"])
        if self._learn is None and not (math.isfinite(self.centre) and self.sigma > 0.0):
            raise ValueError("a learned chart needs a centre and a positive sigma")


class Shewhart(_Chart):
    """Shewhart individuals chart (``subgroup=1``) or X̄ chart, with run rules.

    With ``subgroup = n > 1`` samples are grouped by arrival, n at a time; the chart point is the
    subgroup mean with sigma/√n, and the samples that only fill a subgroup score 0 (their evidence says
    ``"rule": "filling"``).
    """

    kind: ClassVar[str] = "shewhart"

    def __init__(self, learning: int = 100, sigmas: float = 3.0,
                 rules: str | Sequence[str] = "western_electric", subgroup: int = 1,
                 robust: bool = True, min_sigma: float = 0.0) -> None:
        super().__init__(learning, robust, min_sigma)
        names = SHEWHART_RULES[rules] if isinstance(rules, str) else tuple(rules)
        alphas = _rule_alphas(sigmas)
        unknown = [r for r in names if r not in alphas]
        if unknown or not names:
            raise ValueError(f"unknown rules {unknown}; choose from {sorted(alphas)}")
        if subgroup < 1:
            raise ValueError("subgroup must be >= 1")
        self.sigmas = float(sigmas)
        self.rules = tuple(names)
        self.subgroup = int(subgroup)
        self._alpha = {r: alphas[r] for r in self.rules}
        self.alarm_level = 1.0 - max(self._alpha.values())
        self._zs: deque[float] = deque(maxlen=15)
        self._group: list[float] = []

    def _step(self, x: float, t: float) -> float:
        if self.subgroup > 1:
            self._group.append(x)
            if len(self._group) < self.subgroup:
                self._ev = {"value": x, "t": t, "rule": "filling", "window": len(self._group)}
                return 0.0
            point = math.fsum(self._group) / self.subgroup
            self._group = []
        else:
            point = x
        if not self._learn_one(point, t, self.subgroup == 1):
            return 0.0
        sd = self.sigma / math.sqrt(self.subgroup)
        z = (point - self.centre) / sd
        zs = self._zs
        zs.append(z)
        fired = [r for r in self.rules if self._fires(r, zs)]
        if fired:
            rule = min(fired, key=self._alpha.__getitem__)
            score = 1.0 - self._alpha[rule]
        else:
            rule = "none"
            score = self.alarm_level * (1.0 - normal_two_sided_tail(z))
        lim = self.sigmas * sd
        self._ev = {"value": point, "t": t, "centre": self.centre, "lower": self.centre - lim,
                    "upper": self.centre + lim, "z": z, "rule": rule, "fired": fired,
                    "window": _RULE_WINDOW.get(rule, 1), "statistic": point}
        return score

    def _fires(self, rule: str, zs: deque[float]) -> bool:
        n = len(zs)
        if rule == "beyond_limit":
            return abs(zs[-1]) > self.sigmas
        w = _RULE_WINDOW[rule]
        if n < w:
            return False
        last = [zs[i] for i in range(n - w, n)]
        if rule == "2of3_beyond_2s":
            return sum(z > 2 for z in last) >= 2 or sum(z < -2 for z in last) >= 2
        if rule == "4of5_beyond_1s":
            return sum(z > 1 for z in last) >= 4 or sum(z < -1 for z in last) >= 4
        if rule in ("8_same_side", "9_same_side"):
            return all(z > 0 for z in last) or all(z < 0 for z in last)
        if rule == "6_trending":
            steps = [b - a for a, b in itertools.pairwise(last)]
            return all(s > 0 for s in steps) or all(s < 0 for s in steps)
        if rule == "14_alternating":
            steps = [b - a for a, b in itertools.pairwise(last)]
            return all(s != 0 for s in steps) and all(
                (a > 0) != (b > 0) for a, b in itertools.pairwise(steps))
        if rule == "15_within_1s":
            return all(abs(z) < 1 for z in last)
        if rule == "8_outside_1s":
            return all(abs(z) > 1 for z in last)
        raise AssertionError(rule)

    def _params(self) -> dict[str, Any]:
        return {**self._base_params(), "sigmas": self.sigmas, "rules": list(self.rules),
                "subgroup": self.subgroup}

    def _dump(self) -> Any:
        return {**self._base_dump(), "zs": list(self._zs), "group": list(self._group)}

    def _load(self, data: Any) -> None:
        self._base_load(data)
        self._zs = deque((float(z) for z in data["zs"]), maxlen=15)
        self._group = [float(v) for v in data["group"]]


class EWMA(_Chart):
    """EWMA chart: ``z = lam * x + (1 - lam) * z``, limits ``centre ± L sigma_z(i)`` (exact variance).

    The score is ``1 - 2 Q(|z - centre| / sigma_z)``; the rule ``ewma_beyond_limit`` fires beyond
    ``sigmas`` (so :attr:`alarm_level` is ``1 - 2 Q(sigmas)``). With ``clip`` (sigmas), each value is
    first limited to ``centre ± clip * sigma``: one wild sample then moves the statistic by at most
    ``lam * clip`` sigmas, while a sustained shift is still found (evidence ``value`` is unclipped).

    ``side`` ``"up"`` (or ``"down"``) makes the chart one-sided: only a statistic above (below) the
    centre scores, ``1 - Q(z)`` with the one-sided tail, and ``alarm_level`` is ``1 - Q(sigmas)``; a
    move the other way scores 0 (for a latency, faster is not a problem).
    """

    kind: ClassVar[str] = "ewma"

    def __init__(self, learning: int = 100, lam: float = 0.2, sigmas: float = 3.0, robust: bool = True,
                 min_sigma: float = 0.0, clip: float | None = None, side: str = "both") -> None:
        super().__init__(learning, robust, min_sigma)
        self.side = _side(side)
        if not 0.0 < lam <= 1.0:
            raise ValueError("lam must be in (0, 1]")
        if clip is not None and clip <= 0.0:
            raise ValueError("clip must be > 0 sigmas")
        self.lam = float(lam)
        self.clip = None if clip is None else float(clip)
        self.sigmas = float(sigmas)
        self.alarm_level = 1.0 - (normal_two_sided_tail(self.sigmas) if self.side == "both" else _q1(self.sigmas))
        self._z = math.nan
        self._i = 0

    def _step(self, x: float, t: float) -> float:
        if not self._learn_one(x, t, True):
            return 0.0
        lam = self.lam
        x_in = _clipped(x, self.centre, self.sigma, self.clip)
        self._z = (self.centre + lam * (x_in - self.centre) if self._i == 0
                   else lam * x_in + (1 - lam) * self._z)
        self._i += 1
        var_factor = lam / (2 - lam) * (1 - (1 - lam) ** (2 * min(self._i, 10_000)))
        sd = self.sigma * math.sqrt(var_factor)
        zz = (self._z - self.centre) / sd
        # The deviation in the direction that matters (one-sided: the other direction is no evidence).
        dev = abs(zz) if self.side == "both" else (zz if self.side == "up" else -zz)
        rule = "ewma_beyond_limit" if dev > self.sigmas else "none"
        lim = self.sigmas * sd
        self._ev = {"value": x, "t": t, "centre": self.centre, "lower": self.centre - lim,
                    "upper": self.centre + lim, "z": zz, "rule": rule, "window": self._i,
                    "statistic": self._z}
        if self.side == "both":
            return 1.0 - normal_two_sided_tail(zz)
        return 1.0 - _q1(dev) if dev > 0.0 else 0.0

    def _params(self) -> dict[str, Any]:
        return {**self._base_params(), "lam": self.lam, "sigmas": self.sigmas, "clip": self.clip,
                "side": self.side}

    def _dump(self) -> Any:
        return {**self._base_dump(), "z": None if math.isnan(self._z) else self._z, "i": self._i}

    def _load(self, data: Any) -> None:
        self._base_load(data)
        self._z = math.nan if data["z"] is None else float(data["z"])
        self._i = int(data["i"])


def cusum_arl0(h: float, k: float, sides: int = 2) -> float:
    """In-control average run length of a CUSUM with limit ``h`` and slack ``k`` (in sigmas).

    Siegmund's approximation for one side; two-sided (``sides=2``, the default) combined as
    ``1/ARL = 1/ARL+ + 1/ARL-``. Raises ``ValueError`` unless ``sides`` is 1 or 2.
    """
    if sides not in (1, 2):
        raise ValueError("sides must be 1 or 2")
    b = h + 1.166
    if k < 1e-3:
        return b * b / sides  # the k -> 0 limit (Brownian motion)
    if 2.0 * k * b > 700.0:
        return math.inf
    d = -k
    one = (math.exp(-2.0 * d * b) + 2.0 * d * b - 1.0) / (2.0 * d * d)
    return one / sides


class CUSUM(_Chart):
    """Two-sided tabular CUSUM on standardised values: ``S+ = max(0, S+ + z - k)``, ``S-`` likewise.

    ``k`` and ``h`` are in sigmas (0.5 and 5 by default: ARL0 ≈ 465 two-sided, detects a one-sigma
    shift in about 10 samples). The score is ``1 - 1/ARL0(max(S+, S-))``; the rule ``cusum_up`` or
    ``cusum_down`` fires when the statistic passes ``h``. The statistic is not reset after an alarm: it
    stays high while the shift lasts and drains by ``k`` per in-control sample; it is capped at
``cap * h`` (2h by default; None: no cap) so that after a long or huge shift the chart is back in
control within about ``(cap - 1) * h / k`` in-control samples. Evidence ``since`` is the change-point
estimate: the time the deviating side last left zero. ``clip`` (sigmas) limits each standardised
value before it is added, as for :class:`EWMA`: an isolated outlier cannot signal on its own.
``side`` ``"up"`` (or ``"down"``) makes it one-sided: only ``S+`` (``S-``) scores and alarms, with the
one-sided ARL0 (twice the two-sided one for the same ``h``).
    """

    kind: ClassVar[str] = "cusum"

    def __init__(self, learning: int = 100, k: float = 0.5, h: float = 5.0, robust: bool = True,
                 min_sigma: float = 0.0, cap: float | None = 2.0, clip: float | None = None,
                 side: str = "both") -> None:
        super().__init__(learning, robust, min_sigma)
        self.side = _side(side)
        self._sides = 2 if self.side == "both" else 1
        if k < 0.0 or h <= 0.0 or (cap is not None and cap < 1.0):
            raise ValueError("k must be >= 0, h > 0 and cap >= 1")
        if clip is not None and clip <= 0.0:
            raise ValueError("clip must be > 0 sigmas")
        self.clip = None if clip is None else float(clip)
        self.k = float(k)
        self.h = float(h)
        self.cap = None if cap is None else float(cap)
        self._max = math.inf if cap is None else float(cap) * self.h
        self.alarm_level = 1.0 - 1.0 / cusum_arl0(self.h, self.k, self._sides)
        self._up = 0.0
        self._down = 0.0
        self._up_since: float | None = None
        self._down_since: float | None = None

    def _step(self, x: float, t: float) -> float:
        if not self._learn_one(x, t, True):
            return 0.0
        z = (_clipped(x, self.centre, self.sigma, self.clip) - self.centre) / self.sigma
        self._up = min(max(0.0, self._up + z - self.k), self._max)
        self._down = min(max(0.0, self._down - z - self.k), self._max)
        # The classic change-point estimate: the last time each side left zero.
        if self._up == 0.0:
            self._up_since = None
        elif self._up_since is None:
            self._up_since = t
        if self._down == 0.0:
            self._down_since = None
        elif self._down_since is None:
            self._down_since = t
        up = self._up >= self._down if self.side == "both" else self.side == "up"
        stat = self._up if up else self._down
        rule = ("cusum_up" if up else "cusum_down") if stat > self.h else "none"
        self._ev = {"value": x, "t": t, "centre": self.centre, "lower": -self.h, "upper": self.h,
                    "z": z, "rule": rule, "window": 1, "statistic": stat if up else -stat,
                    "limit": self.h, "up": self._up, "down": self._down,
                    "since": self._up_since if up else self._down_since}
        if stat <= 0.0:
            return 0.0
        return 1.0 - 1.0 / cusum_arl0(stat, self.k, self._sides)

    def _params(self) -> dict[str, Any]:
        return {**self._base_params(), "k": self.k, "h": self.h, "cap": self.cap, "clip": self.clip,
                "side": self.side}

    def _dump(self) -> Any:
        return {**self._base_dump(), "up": self._up, "down": self._down,
                "up_since": self._up_since, "down_since": self._down_since}

    def _load(self, data: Any) -> None:
        self._base_load(data)
        self._up = float(data["up"])
        self._down = float(data["down"])
        self._up_since = None if data["up_since"] is None else float(data["up_since"])
        self._down_since = None if data["down_since"] is None else float(data["down_since"])
