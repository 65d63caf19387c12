"""Reference detectors: NAB's windowed Gaussian baseline (used to validate the scorer) and a rolling
robust z-score; ``enmei bench detect`` compares enmei's default with them.

:class:`WindowedGaussian` follows the description of NAB's ``windowedGaussian`` detector: the score of
a value is ``1 - Q(|x - mean| / std)`` (``Q`` the normal upper tail), mean and population standard
deviation taken over the previous ``window`` values (1000 in NAB); the first value scores 0; a zero
standard deviation is replaced by 1e-6. Its NAB standard score is published as 39.65.

Mean and variance are kept incrementally over a ring buffer (O(1) per sample) and recomputed exactly
every ``window`` samples so that rounding cannot drift.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from typing import Any, ClassVar

from enmei.detect.base import StreamingDetector

__all__ = ["RollingRobustZ", "WindowedGaussian"]


class WindowedGaussian(StreamingDetector):
    """Gaussian tail score over a sliding window of the previous values (NAB's baseline)."""

    kind: ClassVar[str] = "windowed_gaussian"

    def __init__(self, window: int = 1000) -> None:
        super().__init__()
        if window < 1:
            raise ValueError("window must be >= 1")
        self.window = window
        self._buf: list[float] = []
        self._pos = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._since_exact = 0

    def _step(self, x: float, t: float) -> float:
        n = len(self._buf)
        score = 0.0
        z = 0.0
        std = 1e-6
        if n:
            var = self._m2 / n
            std = math.sqrt(var) if var > 0.0 else 0.0
            if std == 0.0:
                std = 1e-6
            z = abs(x - self._mean) / std
            score = 1.0 - 0.5 * math.erfc(z / math.sqrt(2.0))
        self._ev = {"value": x, "t": t, "centre": self._mean, "lower": self._mean - 3 * std,
                    "upper": self._mean + 3 * std, "z": z, "rule": "gaussian_tail", "window": n}
        self._push(x)
        return score

    def _push(self, x: float) -> None:
        n = len(self._buf)
        if n < self.window:
            self._buf.append(x)
            n += 1
            d = x - self._mean
            self._mean += d / n
            self._m2 += d * (x - self._mean)
        else:
            old = self._buf[self._pos]
            self._buf[self._pos] = x
            self._pos = (self._pos + 1) % self.window
            new_mean = self._mean + (x - old) / n
            self._m2 += (x - old) * (x - new_mean + old - self._mean)
            self._mean = new_mean
        self._since_exact += 1
        if self._since_exact >= self.window or self._m2 < 0.0:
            self._exact()

    def _exact(self) -> None:
        n = len(self._buf)
        self._since_exact = 0
        if not n:
            self._mean = self._m2 = 0.0
            return
        mean = math.fsum(self._buf) / n
        self._mean = mean
        self._m2 = math.fsum((v - mean) ** 2 for v in self._buf)

    def _params(self) -> dict[str, Any]:
        return {"window": self.window}

    def _dump(self) -> Any:
        return {"buf": list(self._buf), "pos": self._pos, "mean": self._mean, "m2": self._m2,
                "since_exact": self._since_exact}

    def _load(self, data: Any) -> None:
        self._buf = [float(v) for v in data["buf"]]
        self._pos = int(data["pos"])
        self._mean = float(data["mean"])
        self._m2 = float(data["m2"])
        self._since_exact = int(data["since_exact"])
        if len(self._buf) > self.window or not 0 <= self._pos < max(self.window, 1):
            raise ValueError("buffer does not fit the window")


class RollingRobustZ(StreamingDetector):
    """A rolling robust z-score: ``z = (x - median) / scale`` over the previous ``window`` values.

    ``scale`` is the interquartile range / 1.349 (the normal's sigma from its quartiles; a robust
    scale like 1.4826 × MAD, but read straight off the sorted window, O(log window) per sample plus
    a C-level list insert), floored at 1e-9 and at 1e-6 × |median|. The score is
    ``1 - P(|N(0,1)| >= |z|)`` — a nominal two-sided p-value, 0 until ``min_window`` values are
    seen. No alarm rule of its own: wrap it in :class:`~enmei.detect.alarm.OneAlarmPerEpisode`.
    """

    kind: ClassVar[str] = "rolling_robust_z"

    def __init__(self, window: int = 1000, min_window: int = 20) -> None:
        super().__init__()
        if window < 4 or not 2 <= min_window <= window:
            raise ValueError("window must be >= 4 and 2 <= min_window <= window")
        self.window = int(window)
        self.min_window = int(min_window)
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def _step(self, x: float, t: float) -> float:
        srt = self._sorted
        n = len(srt)
        score = 0.0
        z = 0.0
        med = math.nan
        if n >= self.min_window:
            med = _quantile(srt, 0.5)
            scale = (_quantile(srt, 0.75) - _quantile(srt, 0.25)) / 1.349
            scale = max(scale, 1e-9, 1e-6 * abs(med))
            z = (x - med) / scale
            score = 1.0 - math.erfc(abs(z) / math.sqrt(2.0))
        self._ev = {"value": x, "t": t, "centre": None if math.isnan(med) else med, "z": z,
                    "rule": "robust_z", "window": n}
        self._fifo.append(x)
        bisect.insort(srt, x)
        if len(self._fifo) > self.window:
            old = self._fifo.popleft()
            del srt[bisect.bisect_left(srt, old)]
        return score

    def _params(self) -> dict[str, Any]:
        return {"window": self.window, "min_window": self.min_window}

    def _dump(self) -> Any:
        return {"fifo": list(self._fifo)}

    def _load(self, data: Any) -> None:
        fifo = [float(v) for v in data["fifo"]]
        if len(fifo) > self.window:
            raise ValueError("more values than the window")
        self._fifo = deque(fifo)
        self._sorted = sorted(fifo)


def _quantile(srt: list[float], q: float) -> float:
    """Linear-interpolated quantile of a sorted, non-empty list."""
    pos = q * (len(srt) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(srt) - 1)
    return srt[lo] + (srt[hi] - srt[lo]) * (pos - lo)
