"""Reference detectors: NAB's windowed Gaussian baseline, used to validate the scorer.

:class:`WindowedGaussian` follows the description of NAB's ``windowedGaussian`` detector: the score of
a value is ``1 - Q(|x - mean| / std)`` (``Q`` the normal upper tail), mean and population standard
deviation taken over the previous ``window`` values (1000 in NAB); the first value scores 0; a zero
standard deviation is replaced by 1e-6. Its NAB standard score is published as 39.65.

Mean and variance are kept incrementally over a ring buffer (O(1) per sample) and recomputed exactly
every ``window`` samples so that rounding cannot drift.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

from enmei.detect.base import StreamingDetector

__all__ = ["WindowedGaussian"]


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
