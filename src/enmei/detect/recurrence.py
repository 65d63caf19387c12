"""Recurrence discount: evidence that this series has already produced as strongly before counts less.

:class:`RecurrenceDiscount` wraps a calibrated streaming detector (one whose ``alpha_of`` gives a
nominal false-alarm probability per sample) and multiplies each sample's nominal alpha by
``(1 + k) ** gamma``, where ``k`` is how many earlier samples of this stream had evidence at least as
strong (at least the same ``-ln alpha``, in bins of ``bin_width``). The first event of its strength is
reported as the inner detector scored it; the sixth step of a staircase, a record broken for the
tenth time by a drifting series, or a burst like ten before it, are reported ``(1 + k) ** gamma``
times less surprising. This is the correction a per-family independence assumption misses: a
detector that says "p = 1e-5" on something this series does every few hundred samples is
miscalibrated *on this series*, and the count says by how much.

Chosen as enmei's default (``gamma`` 1) on training data only — NAB's k-fold training folds and the
even-numbered channels of SMAP and MSL, see ``enmei.bench.detect`` — where most false alarms were
repeated level steps and records of drifting telemetry.

Scores stay on the inner detector's scale (``level_for`` / ``alpha_of`` are the inner's): a discounted
score is the inner's score of the discounted alpha. A score ``<= 0`` (learning, nothing novel) is passed
through and not counted; a skipped sample (NaN, see :mod:`enmei.detect.base`) neither scores nor counts.

Memory: ``bins`` counters (400 by default, ``-ln alpha`` up to 100), whatever the stream's length; cost
per sample O(``bins``) integer additions at most. The counts are never forgotten: a stream that has
alarmed ``k`` times keeps that history across restarts of its unit (the state is saved with the rest).
Evidence: the inner's, plus ``recurrences`` (``k``) and ``inner_score``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

from enmei.detect.base import StateFormatError, StreamingDetector, check_state, detector_from_state

__all__ = ["RecurrenceDiscount"]


class RecurrenceDiscount(StreamingDetector):
    """``inner``'s score with its alpha multiplied by ``(1 + earlier samples at least as strong) ** gamma``."""

    kind: ClassVar[str] = "recurrence_discount"

    def __init__(self, inner: StreamingDetector, gamma: float = 1.0, bin_width: float = 0.25,
                 bins: int = 400) -> None:
        super().__init__()
        if not gamma >= 0.0 or not math.isfinite(gamma):
            raise ValueError("gamma must be a finite number >= 0")
        if not bin_width > 0.0 or not math.isfinite(bin_width):
            raise ValueError("bin_width must be a finite number > 0")
        if bins < 1:
            raise ValueError("bins must be >= 1")
        self.inner = inner
        self.gamma = float(gamma)
        self.bin_width = float(bin_width)
        self.bins = int(bins)
        self._hist = [0] * self.bins  # samples by bin of -ln(alpha)

    def _step(self, x: float, t: float) -> float:
        score = self.inner.update(x, t)
        ev: dict[str, Any] = dict(self.inner.evidence())
        if ev.get("skipped") or not score > 0.0:
            self._ev = ev
            return score if not ev.get("skipped") else 0.0
        alpha = self.inner.alpha_of(score)
        surprise = -math.log(alpha) if alpha > 0.0 else math.inf
        b = min(self.bins - 1, int(surprise / self.bin_width)) if math.isfinite(surprise) else self.bins - 1
        k = sum(self._hist[b:])
        self._hist[b] += 1
        ev["recurrences"] = k
        ev["inner_score"] = score
        self._ev = ev
        if k == 0 or self.gamma == 0.0 or not math.isfinite(surprise):
            return score
        left = surprise - self.gamma * math.log1p(k)
        if left <= 0.0:
            return 0.0
        return self.inner.level_for(math.exp(-left))

    def level_for(self, alpha: float) -> float:
        """The inner detector's level: the discount moves scores down that scale, it does not rescale it."""
        return self.inner.level_for(alpha)

    def alpha_of(self, score: float) -> float:
        return self.inner.alpha_of(score)

    def _params(self) -> dict[str, Any]:
        return {"gamma": self.gamma, "bin_width": self.bin_width, "bins": self.bins}

    def _dump(self) -> Any:
        return {"inner": self.inner.state(), "hist": [[i, c] for i, c in enumerate(self._hist) if c]}

    def _load(self, data: Any) -> None:
        raise AssertionError("RecurrenceDiscount is restored by from_state")

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> RecurrenceDiscount:
        params, data = check_state(state, cls.kind, cls.version)
        try:
            body = data["body"]
            obj = cls(detector_from_state(body["inner"]), float(params["gamma"]), float(params["bin_width"]),
                      int(params["bins"]))
            t_last = data["t_last"]
            obj._t_last = -math.inf if t_last is None else float(t_last)
            for i, c in body["hist"]:
                obj._hist[int(i)] = int(c)
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateFormatError(cls.kind, f"malformed body: {exc!r}") from exc
        return obj
