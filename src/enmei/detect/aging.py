"""Software aging: a resource whose *floor* keeps rising towards its limit, told apart from normal growth.

:class:`TrendDetector` watches one resource (RSS, open fds, threads...) and answers three questions:
does its lower envelope grow persistently, is that growth slowing down towards a bound (a cache that
fills, a buffer pool warming up: not a leak), and will it reach ``limit`` soon enough that waiting for
more evidence is a risk?

How, and at what cost:

- **Warm-up.** Samples in the first ``warmup_s`` seconds after the first sample are dropped: a service
  that fills its caches at start is not aging.
- **Scales.** Samples are grouped in buckets at ``levels`` time scales: ``bucket_s``, ``bucket_s *
  factor``, ``bucket_s * factor**2``... (default 5 s, 20 s, 80 s... up to about 3.8 days). A bucket keeps
  its *minimum* — the floor that garbage collection and freeing never go below, so a GC sawtooth or a
  burst of load does not look like growth — and its maximum (for the headroom, below). Each scale keeps
  its last ``window`` closed buckets (gaps skipped; slopes use real times). A bucket is judged when the
  first sample of a later bucket arrives; a scale whose buckets are shorter than twice the sampling
  interval is not judged (it would be the next scale with less smoothing). Per sample the work is
  O(levels); per closed bucket O(window²) with window small (24): the judging of all scales together
  costs a bounded amount per ``bucket_s`` of stream time, so the cost per sample is O(1) amortised
  whatever the sampling rate.
- **Trend.** At a scale with at least ``min_buckets`` buckets, over the whole window, then its recent
  half, then its last ``min_buckets`` (the first of these parts that is urgent wins, else the most
  significant): the Mann–Kendall statistic S of the bucket minima with the tie-corrected variance
  gives a one-sided p-value for an upward trend (``z = (S - 1) / sqrt(var)``). With ``n`` buckets p
  can never be below :func:`min_p` (n): 0.0043 for 6, 4.2e-4 for 8 — a threshold below that can never
  fire, which the config refuses at check time.
- **Not slowing down, not just starting.** Sen's slope of the part ``s``, of its early half ``s1`` and
  of its recent half ``s2``: a leak keeps its rate (``s1 ≈ s2 ≈ s``), growth towards a bound
  decelerates (``s2 → 0``). The trend counts only if ``s2 > 0`` and ``s2 >= slope_ratio * max(s1, s)``
  (default 0.5; rule ``slowing`` otherwise: this also rejects a step followed by a flat stretch), and
  ``s1 >= slope_ratio * s`` (rule ``late_start`` otherwise: flat, then rising — the rise is shorter
  than the part, so the part's length is not the length of the evidence; a shorter part, tried next,
  or a finer scale judges it).
- **Exhaustion.** The floor now (the last bucket's, moved on by the trend over one bucket, at most the
  value just measured) plus the *headroom* the resource
  needs above its floor (the median bucket spread, max - min, less what the trend itself adds within a
  bucket: a sawtooth peaks above its floor, and it is the peak that meets the limit) gives
  ``exhaust_in_s = max(0, (limit - floor - spread) / s)``.
- **Urgency.** The trend is acted on when ``exhaust_in_s <= urgency * evidence_s`` and ``exhaust_in_s
  <= horizon_s``; ``evidence_s``, the length of the evidence, is the time the part covers, or less: the
  time the slope ``s`` takes to raise the floor from the part's first bucket to its last (a part that
  begins on a flat stretch holds less evidence than its span). Growth seen for an hour
  that would reach the limit in a day is worth watching, not a restart: if it is a cache filling up,
  the next hours show it slowing down. With ``urgency = 0.5`` (the default) a steady leak is acted on
  once it has used two thirds of the room it had when it began (later by up to a scale's step: the
  spans are quantised), never after the limit; a steady rise that stops at two thirds of the limit or
  below is never taken for one. Short windows (fine scales) catch fast leaks within a minute or two;
  long ones catch slow leaks.
- **Score.** ``1 - p`` of the most significant urgent, non-slowing trend over the scales; otherwise at
  most 0.5 (a trend that is slowing, or not urgent). With ``limit=None`` there is no exhaustion to
  predict: a non-slowing significant trend alone scores ``1 - p`` (``exhaust_in_s`` None). Between
  bucket closes the score of the last judgement of each scale is repeated. Evidence: value, level (the
  floor, also ``centre``), spread, upper/limit, slope_per_s, early_slope_per_s, recent_slope_per_s,
  exhaust_in_s (None if never), mk_z, mk_p, buckets, bucket_s, window_s, evidence_s, urgent, rule (``leak``;
  ``slowing``, ``late_start``, ``not_urgent`` or ``none`` when no trend counts; ``warmup``).

``direction="down"`` watches a resource that is exhausted by falling (free memory, free disk): the
values and the limit are negated inside, the evidence is given back in the original units.

Bad input follows :mod:`enmei.detect.base`. A constant resource has only ties: variance 0, p = 1.
"""

from __future__ import annotations

import math
from collections import deque
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

from enmei.detect.aging_keys import DEFAULTS as D
from enmei.detect.base import StreamingDetector

if TYPE_CHECKING:
    import numpy as np

# numpy is imported where a bucket is judged, not with the module: importing enmei.detect (which the
# config does, for the detector registry) must stay light for `enmei check` and the policy sandbox.

__all__ = ["TrendDetector", "mann_kendall", "min_p", "sen_slope"]


def min_p(n: int) -> float:
    """The smallest one-sided p-value the Mann–Kendall test can give on ``n`` values (all increasing).

    >>> round(min_p(6), 4), round(min_p(8), 5)
    (0.0043, 0.00042)
    """
    if n < 3:
        return 1.0
    s = n * (n - 1) / 2.0
    var = n * (n - 1) * (2 * n + 5) / 18.0
    return 0.5 * math.erfc((s - 1.0) / math.sqrt(var) / math.sqrt(2.0))


@lru_cache(maxsize=256)
def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np
    i, j = np.triu_indices(n, 1)
    return i, j


def mann_kendall(y: np.ndarray) -> tuple[float, float, float]:
    """(S, z, one-sided p for an upward trend) of the Mann–Kendall test, with tie correction."""
    import numpy as np
    n = len(y)
    if n < 3:
        return 0.0, 0.0, 1.0
    i, j = _pairs(n)
    s = float(np.sign(y[j] - y[i]).sum())
    var = n * (n - 1) * (2 * n + 5) / 18.0
    ordered = np.sort(y)
    if (ordered[1:] == ordered[:-1]).any():  # ties (rare in real numbers, common in counts like fds)
        _, counts = np.unique(ordered, return_counts=True)
        ties = counts[counts > 1].astype(np.float64)
        var -= float(np.sum(ties * (ties - 1) * (2 * ties + 5))) / 18.0
    if var <= 0.0:
        return s, 0.0, 1.0
    if s > 0:
        z = (s - 1.0) / math.sqrt(var)
    elif s < 0:
        z = (s + 1.0) / math.sqrt(var)
    else:
        z = 0.0
    return s, z, 0.5 * math.erfc(z / math.sqrt(2.0))


def sen_slope(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) by Theil–Sen: median pairwise slope, median of ``y - slope * t``."""
    import numpy as np
    n = len(y)
    if n < 2:
        return 0.0, float(y[0]) if n else 0.0
    i, j = _pairs(n)
    dt = t[j] - t[i]
    ok = dt > 0
    if not ok.any():
        return 0.0, float(np.median(y))
    slope = _median((y[j][ok] - y[i][ok]) / dt[ok])
    return slope, _median(y - slope * t)


def _median(a: np.ndarray) -> float:
    # np.median's checks cost more than the work on the few hundred values here.
    import numpy as np
    b = np.sort(a)
    m = len(b) // 2
    return float(b[m]) if len(b) % 2 else float(0.5 * (b[m - 1] + b[m]))


@lru_cache(maxsize=1024)
def _masks(n: int, a: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Over the pairs of ``n`` values: those within ``a..n-1``, within its first half, within its second."""
    i, j = _pairs(n)
    half = a + (n - a) // 2
    return i >= a, (i >= a) & (j < half), i >= half


def _mk_p(s: float, y: np.ndarray, n: int, ties: bool) -> tuple[float, float]:
    """(z, one-sided p) of the Mann–Kendall statistic ``s`` of ``y`` (``ties``: some values are equal)."""
    import numpy as np
    var = n * (n - 1) * (2 * n + 5) / 18.0
    if ties:
        _, counts = np.unique(y, return_counts=True)
        t = counts[counts > 1].astype(np.float64)
        var -= float(np.sum(t * (t - 1) * (2 * t + 5))) / 18.0
    if var <= 0.0:
        return 0.0, 1.0
    z = (s - 1.0) / math.sqrt(var) if s > 0 else ((s + 1.0) / math.sqrt(var) if s < 0 else 0.0)
    return z, 0.5 * math.erfc(z / math.sqrt(2.0))


#: Above this p-value the slopes are not computed (the score is min(1 - p, 0.5) either way).
_TREND_P = 0.05


class _Scale:
    """The buckets of one time scale: the open one (min, max) and the last ``window`` closed ones."""

    __slots__ = ("closed", "hi", "idx", "lo", "width")

    def __init__(self, width: float, window: int) -> None:
        self.width = width
        self.idx: int | None = None
        self.lo = math.inf
        self.hi = -math.inf
        self.closed: deque[tuple[float, float, float]] = deque(maxlen=window)  # (mid time, min, max)

    def dump(self) -> dict[str, Any]:
        return {"idx": self.idx, "lo": None if math.isinf(self.lo) else self.lo,
                "hi": None if math.isinf(self.hi) else self.hi,
                "closed": [list(b) for b in self.closed]}

    def load(self, data: Any) -> None:
        self.idx = None if data["idx"] is None else int(data["idx"])
        self.lo = math.inf if data["lo"] is None else float(data["lo"])
        self.hi = -math.inf if data["hi"] is None else float(data["hi"])
        self.closed.clear()
        self.closed.extend((float(a), float(b), float(c)) for a, b, c in data["closed"])


class TrendDetector(StreamingDetector):
    """A persistent, non-slowing rise of a resource's floor and its predicted time to exhaustion."""

    kind: ClassVar[str] = "aging"
    version: ClassVar[int] = 2

    def __init__(self, limit: float | None = None, bucket_s: float = D["bucket_s"], window: int = int(D["window"]),
                 min_buckets: int = int(D["min_buckets"]), horizon_s: float = D["horizon_s"],
                 warmup_s: float = D["warmup_s"], slope_ratio: float = D["slope_ratio"],
                 urgency: float = D["urgency"], levels: int = 8, factor: int = 4, direction: str = "up") -> None:
        super().__init__()
        if bucket_s <= 0 or not 4 <= min_buckets <= window or levels < 1 or factor < 2:
            raise ValueError("need bucket_s > 0, 4 <= min_buckets <= window, levels >= 1, factor >= 2")
        if not 0.0 <= slope_ratio <= 1.0 or urgency <= 0 or horizon_s <= 0:
            raise ValueError("need 0 <= slope_ratio <= 1, urgency > 0 and horizon_s > 0")
        if direction not in ("up", "down"):
            raise ValueError("direction is 'up' or 'down'")
        self.limit = None if limit is None else float(limit)
        self.bucket_s = float(bucket_s)
        self.window = int(window)
        self.min_buckets = int(min_buckets)
        self.horizon_s = float(horizon_s)
        self.warmup_s = float(warmup_s)
        self.slope_ratio = float(slope_ratio)
        self.urgency = float(urgency)
        self.levels = int(levels)
        self.factor = int(factor)
        self.direction = direction
        self._sign = 1.0 if direction == "up" else -1.0
        self._t0: float | None = None
        self._t_prev: float | None = None
        self._dt = math.inf  # the sampling interval, smoothed (a scale finer than twice it is not judged)
        self._scales = [_Scale(self.bucket_s * self.factor ** k, self.window) for k in range(self.levels)]
        self._scores = [0.0] * self.levels
        self._judged: list[dict[str, Any]] = [{"rule": "none", "buckets": 0} for _ in range(self.levels)]
        self._best: int | None = None  # the scale whose score is the highest (recomputed on a judgement)
        self._y_now = 0.0  # the (signed) sample being stepped, for the judgements it causes

    # -- streaming ------------------------------------------------------------------------------
    def _step(self, x: float, t: float) -> float:
        if self._t0 is None:
            self._t0 = t
        if t - self._t0 < self.warmup_s:
            self._ev = {"value": x, "t": t, "rule": "warmup"}
            return 0.0
        if self._t_prev is not None and t > self._t_prev:
            dt = t - self._t_prev
            self._dt = dt if math.isinf(self._dt) else 0.9 * self._dt + 0.1 * dt
        self._t_prev = t
        y = self._sign * x
        self._y_now = y
        origin = self._t0 + self.warmup_s
        sc = self._scales[0]
        idx = math.floor((t - origin) / sc.width)
        judged = False
        if sc.idx is None:
            sc.idx, sc.lo, sc.hi = idx, y, y
        elif idx != sc.idx:
            judged = self._close(0, t, origin)
            sc.idx, sc.lo, sc.hi = idx, y, y
        else:
            sc.lo = min(sc.lo, y)
            sc.hi = max(sc.hi, y)
        if judged or self._best is None:
            scores = self._scores
            self._best = max(range(self.levels), key=scores.__getitem__)
        self._ev = {**self._judged[self._best], "value": x, "t": t}
        return self._scores[self._best]

    def _close(self, k: int, t: float, origin: float) -> bool:
        """Close the open bucket of scale ``k`` (a sample at ``t`` lies beyond it), fold it into the next
        coarser scale's open bucket (the scales' buckets nest: each width is ``factor`` times the last),
        and close that one too if ``t`` lies beyond it. Only the finest scale sees every sample, so the
        work per sample is O(1), amortised over the scales. Returns whether a scale was judged."""
        sc = self._scales[k]
        assert sc.idx is not None
        mid = origin + (sc.idx + 0.5) * sc.width
        sc.closed.append((mid, sc.lo, sc.hi))
        judged = False
        if sc.width >= 2.0 * self._dt or k == self.levels - 1:
            self._judge(k, mid + 0.5 * sc.width)
            judged = True
        if k + 1 < self.levels:
            up = self._scales[k + 1]
            if up.idx is None:
                up.idx = sc.idx // self.factor
            up.lo = min(up.lo, sc.lo)
            up.hi = max(up.hi, sc.hi)
            idx = math.floor((t - origin) / up.width)
            if idx != up.idx:
                judged = self._close(k + 1, t, origin) or judged
                up.idx, up.lo, up.hi = idx, math.inf, -math.inf
        return judged

    def _judge(self, k: int, now: float) -> None:
        """Judge scale ``k``: its whole window, then shorter recent parts of it (half, ``min_buckets``),
        longest first; the first urgent one wins (the longest evidence), else the most significant."""
        sc = self._scales[k]
        n = len(sc.closed)
        self._scores[k] = 0.0
        self._judged[k] = {"rule": "none", "buckets": n, "bucket_s": sc.width}
        if n < self.min_buckets:
            return
        import numpy as np

        arr = np.array(sc.closed)
        tt, ys, hs = arr[:, 0] - now, arr[:, 1], arr[:, 2]
        # Every pairwise difference of the window once; each part judged below is a mask over them.
        i, j = _pairs(n)
        dy = ys[j] - ys[i]
        slopes = dy / (tt[j] - tt[i])  # bucket times are strictly increasing
        signs = np.sign(dy)
        best: tuple[float, dict[str, Any]] | None = None
        for m in sorted({n, n // 2, self.min_buckets}, reverse=True):
            if m < self.min_buckets:
                continue
            score, ev = self._part(n - m, n, signs, slopes, tt, ys, hs, sc.width)
            if best is None or score > best[0]:
                best = (score, ev)
            if ev["rule"] == "leak":
                break
        assert best is not None
        self._scores[k], self._judged[k] = best[0], {**best[1], "judged_at": now}

    def _part(self, a: int, n: int, signs: np.ndarray, slopes: np.ndarray, tt: np.ndarray, ys: np.ndarray,
              hs: np.ndarray, width: float) -> tuple[float, dict[str, Any]]:
        """(score, evidence) of buckets ``a`` to ``n - 1`` of the window (times relative to now)."""
        m = n - a
        whole, early_mask, recent_mask = _masks(n, a)
        y = ys[a:]
        s = float(signs[whole].sum())
        z, p = _mk_p(s, y, m, bool((signs[whole] == 0).any()))
        if p > _TREND_P:
            # No trend worth a slope (the score of such a trend is at most 0.5 either way): skipping the
            # slopes here keeps noise cheap to judge.
            return (min(1.0 - p, 0.5) if z > 0 else 0.0), {"rule": "none", "buckets": m, "bucket_s": width,
                                                           "mk_z": z, "mk_p": p}
        slope = _median(slopes[whole])
        # The floor now: the last bucket's floor moved on by the trend over one bucket, but never above
        # the value just measured (the line through the window would run on past a rise that has just
        # stopped).
        level = min(float(y[-1]) + max(slope, 0.0) * width, self._y_now)
        early = _median(slopes[early_mask])
        recent = _median(slopes[recent_mask])
        span = float(tt[-1] - tt[a] + width)
        # How long the evidence really is: the time this rate took to raise the floor as much as it rose
        # over the part (shorter than the span when the part begins on a flat stretch).
        evidence = max(0.0, min(span, (level - float(y[0])) / slope)) if slope > 0 else 0.0
        # The bucket's own rise is not headroom: what a bucket spans beyond its trend is.
        spread = max(0.0, _median(hs[a:] - y) - slope * width)
        ev: dict[str, Any] = {
            "rule": "none", "buckets": m, "bucket_s": width, "window_s": span, "evidence_s": evidence,
            "slope_per_s": self._sign * slope, "early_slope_per_s": self._sign * early,
            "recent_slope_per_s": self._sign * recent,
            "level": self._sign * level, "centre": self._sign * level, "spread": spread,
            "upper": self.limit, "limit": self.limit, "exhaust_in_s": None, "mk_z": z, "mk_p": p,
            "urgent": False,
        }
        capped = min(1.0 - p, 0.5)
        if slope <= 0.0 or recent <= 0.0 or recent < self.slope_ratio * max(early, slope):
            ev["rule"] = "slowing"
            return capped, ev
        if early < self.slope_ratio * slope:
            # Flat, then rising: the rise is shorter than these buckets, so their span is not the length
            # of the evidence. A shorter part, or a finer scale, lies within the rise and judges it.
            ev["rule"] = "late_start"
            return capped, ev
        if self.limit is None:
            urgent = True
        else:
            room = self._sign * self.limit - level - spread
            exhaust = max(0.0, room / slope)
            ev["exhaust_in_s"] = exhaust
            urgent = exhaust <= self.horizon_s and exhaust <= self.urgency * evidence
        ev["urgent"] = urgent
        ev["rule"] = "leak" if urgent else "not_urgent"
        return (1.0 - p if urgent else capped), ev

    # -- state ----------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {"limit": self.limit, "bucket_s": self.bucket_s, "window": self.window,
                "min_buckets": self.min_buckets, "horizon_s": self.horizon_s, "warmup_s": self.warmup_s,
                "slope_ratio": self.slope_ratio, "urgency": self.urgency, "levels": self.levels,
                "factor": self.factor, "direction": self.direction}

    def _dump(self) -> Any:
        return {"t0": self._t0, "t_prev": self._t_prev, "dt": None if math.isinf(self._dt) else self._dt,
                "scales": [sc.dump() for sc in self._scales], "scores": list(self._scores),
                "judged": [dict(j) for j in self._judged]}

    def _load(self, data: Any) -> None:
        self._t0 = None if data["t0"] is None else float(data["t0"])
        self._t_prev = None if data["t_prev"] is None else float(data["t_prev"])
        self._dt = math.inf if data["dt"] is None else float(data["dt"])
        if len(data["scales"]) != self.levels or len(data["scores"]) != self.levels:
            raise ValueError("the state has another number of scales")
        for sc, d in zip(self._scales, data["scales"], strict=True):
            sc.load(d)
        self._scores = [float(s) for s in data["scores"]]
        self._judged = [dict(j) for j in data["judged"]]
