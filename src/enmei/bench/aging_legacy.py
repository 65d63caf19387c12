"""The aging detector enmei shipped before issue 13, unchanged (its own Mann–Kendall and Sen code too, so
that its cost is measured as it was), kept for ``enmei bench aging`` to compare against. The supervisor
does not use it. Its description:

Software aging: a resource that trends towards its limit (Mann–Kendall test, Sen's slope).

:class:`TrendDetector` watches one resource (RSS, open fds, threads...) and answers two questions:
does it grow *persistently*, and when will it reach ``limit`` at this rate?

How, and at what cost:

- **Warm-up.** Samples in the first ``warmup_s`` seconds after the first sample are dropped: a service
  that fills its caches at start is not aging.
- **Buckets.** Samples are grouped in ``bucket_s``-second buckets keyed by time; a bucket keeps its
  *minimum* — the floor that garbage collection and freeing never go below, so a GC sawtooth or a
  burst of load does not look like growth. A bucket is judged when the first sample of a later bucket
  arrives. The window holds the last ``window`` non-empty buckets (gaps are skipped; slopes use real
  times). Per sample the work is O(1); per closed bucket it is O(window²) with window bounded (120 by
  default: about 15k pairs in numpy, well under a millisecond, once per ``bucket_s``).
- **Test.** For the most recent ``m`` buckets, ``m`` in {window, window/2, window/4} (each at least
  ``min_buckets``): the Mann–Kendall statistic S with the tie-corrected variance gives a one-sided
  p-value for an upward trend (``z = (S - 1) / sqrt(var)``). The trend must also be *persistent*:
  each third of those buckets must trend up on its own (Mann–Kendall z >= ``segment_z``) at a
  Sen slope of at least ``consistency`` times the slope of the whole, which rejects a single step
  or a short ramp to a plateau (flat on at least one side of it).
- **Rate and exhaustion.** Sen's slope (median of pairwise slopes, per second) and a level through
  the median intercept at the last bucket give ``exhaust_in_s = (limit - level) / slope``.
- **Score.** ``1 - p`` of the most significant persistent upward suffix, if it predicts exhaustion
  within ``horizon_s``; otherwise at most 0.5 (a trend that will not matter within the horizon, or
  no limit known and ``horizon_s`` finite). Between bucket closes the score of the last judgement is
  repeated. Evidence: value, level (the centre), upper (the limit), slope_per_s, exhaust_in_s
  (None if never), mk_z, mk_p, buckets, window_s, persistent, rule ``mann_kendall`` or ``none``.

``direction="down"`` watches a resource that is exhausted by falling (free memory, free disk): the
values and the limit are negated inside, the evidence is given back in the original units.

Bad input follows :mod:`enmei.detect.base`. A constant resource has only ties: variance 0, p = 1.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

from enmei.detect.base import StreamingDetector

if TYPE_CHECKING:
    import numpy as np

__all__ = ["MannKendallTrend"]


def _mann_kendall(y: np.ndarray) -> tuple[float, float, float]:
    """(S, z, one-sided p for an upward trend) of the Mann–Kendall test, with tie correction."""
    import numpy as np
    n = len(y)
    if n < 3:
        return 0.0, 0.0, 1.0
    diff = y[None, :] - y[:, None]
    s = float(np.sign(diff[np.triu_indices(n, 1)]).sum())
    _, counts = np.unique(y, return_counts=True)
    ties = counts[counts > 1].astype(np.float64)
    var = (n * (n - 1) * (2 * n + 5) - float(np.sum(ties * (ties - 1) * (2 * ties + 5)))) / 18.0
    if var <= 0.0:
        return s, 0.0, 1.0
    if s > 0:
        z = (s - 1.0) / math.sqrt(var)
    elif s < 0:
        z = (s + 1.0) / math.sqrt(var)
    else:
        z = 0.0
    return s, z, 0.5 * math.erfc(z / math.sqrt(2.0))


def _sen_slope(t: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) by Theil–Sen: median pairwise slope, median of ``y - slope * t``."""
    import numpy as np
    n = len(y)
    if n < 2:
        return 0.0, float(y[0]) if n else 0.0
    i, j = np.triu_indices(n, 1)
    dt = t[j] - t[i]
    ok = dt > 0
    if not ok.any():
        return 0.0, float(np.median(y))
    slope = float(np.median((y[j][ok] - y[i][ok]) / dt[ok]))
    return slope, float(np.median(y - slope * t))


class MannKendallTrend(StreamingDetector):
    """Persistent upward trend of a resource and its predicted time to exhaustion."""

    kind: ClassVar[str] = "aging_v1"

    def __init__(self, limit: float | None = None, bucket_s: float = 60.0, window: int = 120,
                 min_buckets: int = 20, horizon_s: float = 86400.0, warmup_s: float = 600.0,
                 segment_z: float = 1.0, consistency: float = 0.3, direction: str = "up") -> None:
        super().__init__()
        if bucket_s <= 0 or window < 6 or not 6 <= min_buckets <= window:
            raise ValueError("need bucket_s > 0 and 6 <= min_buckets <= window")
        if direction not in ("up", "down"):
            raise ValueError("direction is 'up' or 'down'")
        self.limit = None if limit is None else float(limit)
        self.bucket_s = float(bucket_s)
        self.window = int(window)
        self.min_buckets = int(min_buckets)
        self.horizon_s = float(horizon_s)
        self.warmup_s = float(warmup_s)
        self.segment_z = float(segment_z)
        self.consistency = float(consistency)
        self.direction = direction
        self._sign = 1.0 if direction == "up" else -1.0
        self._t0: float | None = None
        self._bucket: int | None = None
        self._bucket_min = math.inf
        self._buckets: deque[tuple[float, float]] = deque(maxlen=self.window)
        self._score = 0.0
        self._judged: dict[str, Any] = {"rule": "none", "buckets": 0}

    def _step(self, x: float, t: float) -> float:
        if self._t0 is None:
            self._t0 = t
        if t - self._t0 < self.warmup_s:
            self._ev = {"value": x, "t": t, "rule": "warmup"}
            return 0.0
        y = self._sign * x
        idx = math.floor((t - self._t0 - self.warmup_s) / self.bucket_s)
        if self._bucket is None:
            self._bucket, self._bucket_min = idx, y
        elif idx != self._bucket:
            mid = self._t0 + self.warmup_s + (self._bucket + 0.5) * self.bucket_s
            self._buckets.append((mid, self._bucket_min))
            self._bucket, self._bucket_min = idx, y
            self._judge(mid)
        elif y < self._bucket_min:
            self._bucket_min = y
        self._ev = {**self._judged, "value": x, "t": t}
        return self._score

    def _judge(self, now: float) -> None:
        n = len(self._buckets)
        self._score = 0.0
        self._judged = {"rule": "none", "buckets": n}
        if n < self.min_buckets:
            return
        import numpy as np

        ts = np.array([b[0] for b in self._buckets])
        ys = np.array([b[1] for b in self._buckets])
        best: tuple[float, int, float, float, float] | None = None
        sizes = sorted({n, n // 2, n // 4}, reverse=True)
        for m in sizes:
            if m < self.min_buckets:
                continue
            y = ys[-m:]
            tt = ts[-m:] - now
            _, z, p = _mann_kendall(y)
            if z <= 0.0 or (best is not None and p >= best[0]):
                continue
            slope, intercept = _sen_slope(tt, y)
            if slope <= 0.0 or not self._persistent(tt, y, slope):
                continue
            best = (p, m, z, slope, intercept)
        if best is None:
            return
        p, m, z, slope, level = best  # the intercept is the level at t = now (times shifted by now)
        exhaust: float | None = None
        if self.limit is not None:
            lim = self._sign * self.limit
            exhaust = max(0.0, (lim - level) / slope)
        soon = exhaust is not None and exhaust <= self.horizon_s
        if self.limit is None and math.isinf(self.horizon_s):
            soon = True
        self._score = 1.0 - p if soon else min(1.0 - p, 0.5)
        self._judged = {
            "rule": "mann_kendall", "buckets": m, "window_s": float(ts[-1] - ts[-m] + self.bucket_s),
            "slope_per_s": self._sign * slope, "level": self._sign * level, "centre": self._sign * level,
            "upper": self.limit, "limit": self.limit, "exhaust_in_s": exhaust, "mk_z": z, "mk_p": p,
            "persistent": True, "judged_at": now,
        }

    def _persistent(self, tt: np.ndarray, y: np.ndarray, slope: float) -> bool:
        """Each third trends up on its own, at a rate comparable with the whole (no step, no plateau)."""
        m = len(y)
        third = m // 3
        for k in range(3):
            seg = slice(k * third, (k + 1) * third if k < 2 else m)
            if _mann_kendall(y[seg])[1] < self.segment_z:
                return False
            if _sen_slope(tt[seg], y[seg])[0] < self.consistency * slope:
                return False
        return True

    def _params(self) -> dict[str, Any]:
        return {"limit": self.limit, "bucket_s": self.bucket_s, "window": self.window,
                "min_buckets": self.min_buckets, "horizon_s": self.horizon_s, "warmup_s": self.warmup_s,
                "segment_z": self.segment_z, "consistency": self.consistency,
                "direction": self.direction}

    def _dump(self) -> Any:
        return {"t0": self._t0, "bucket": self._bucket,
                "bucket_min": None if math.isinf(self._bucket_min) else self._bucket_min,
                "buckets": [[a, b] for a, b in self._buckets], "score": self._score,
                "judged": dict(self._judged)}

    def _load(self, data: Any) -> None:
        self._t0 = None if data["t0"] is None else float(data["t0"])
        self._bucket = None if data["bucket"] is None else int(data["bucket"])
        self._bucket_min = math.inf if data["bucket_min"] is None else float(data["bucket_min"])
        self._buckets = deque(((float(a), float(b)) for a, b in data["buckets"]), maxlen=self.window)
        self._score = float(data["score"])
        self._judged = dict(data["judged"])
