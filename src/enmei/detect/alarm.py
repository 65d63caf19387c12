"""The alarm rule as a component of its own: one alarm per episode, around any streaming detector.

:class:`OneAlarmPerEpisode` wraps a detector and reports its score only when it beats every score of
the previous ``rest`` samples (else 0): an episode of high scores gives one alarm — at its first,
rising edge — whatever threshold is then put on the scores, and a stronger event inside the rest
period still alarms. It is what makes NAB's sparse-detection scoring reward a detector, so it is
applied the same way to enmei's default and to the baselines it is compared with (``enmei bench
detect``), and it is configurable (``rest``; ``rest = 1`` reports every score).

Memory: a monotone queue of at most ``rest`` scores (amortised O(1) per sample). The wrapped
detector's evidence is passed through, with ``raw_score`` (its own score) and ``suppressed``.
Bad input follows :mod:`enmei.detect.base`: a skipped sample neither scores nor enters the queue.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from enmei.detect.base import StateFormatError, StreamingDetector, check_state, detector_from_state

__all__ = ["OneAlarmPerEpisode", "beats_recent", "rested"]


def rested(scores: Sequence[float], rest: int) -> list[float]:
    """The rule applied afterwards to a whole stream's scores: what :class:`OneAlarmPerEpisode` with
    ``rest`` reports for an inner detector that gave ``scores`` (a stream without skipped samples).
    Lets a benchmark try several ``rest`` values on one run of the detector. ``ValueError`` if
    ``rest < 1``."""
    if rest < 1:
        raise ValueError("rest must be >= 1 sample")
    out: list[float] = []
    peaks: deque[tuple[int, float]] = deque()
    for i, score in enumerate(scores):
        while peaks and peaks[0][0] <= i - rest:
            peaks.popleft()
        beaten = not peaks or score > peaks[0][1]
        while peaks and peaks[-1][1] <= score:
            peaks.pop()
        peaks.append((i, score))
        out.append(score if beaten else 0.0)
    return out


def beats_recent(peaks: deque[tuple[int, float]], i: int, rest: int, score: float) -> bool:
    """The rule's step for sample ``i``: does ``score`` beat every score of the last ``rest`` samples?

    ``peaks`` is the rule's whole memory (a monotone queue of (index, score), at most ``rest`` long, so
    O(1) amortised per sample); it is updated in place with ``score``."""
    while peaks and peaks[0][0] <= i - rest:
        peaks.popleft()
    beaten = not peaks or score > peaks[0][1]
    while peaks and peaks[-1][1] <= score:
        peaks.pop()
    peaks.append((i, score))
    return beaten


class OneAlarmPerEpisode(StreamingDetector):
    """Scores of ``inner`` that beat the previous ``rest`` scores; 0 for the others."""

    kind: ClassVar[str] = "one_alarm_per_episode"

    def __init__(self, inner: StreamingDetector, rest: int) -> None:
        super().__init__()
        if rest < 1:
            raise ValueError("rest must be >= 1 sample")
        self.inner = inner
        self.rest = int(rest)
        self._i = 0
        self._peaks: deque[tuple[int, float]] = deque()  # decreasing scores of the last `rest` samples

    def _step(self, x: float, t: float) -> float:
        score = self.inner.update(x, t)
        ev: dict[str, Any] = dict(self.inner.evidence())
        if ev.get("skipped"):
            self._ev = ev
            return 0.0
        beaten = beats_recent(self._peaks, self._i, self.rest, score)
        self._i += 1
        ev["raw_score"] = score
        ev["suppressed"] = not beaten
        self._ev = ev
        return score if beaten else 0.0

    def level_for(self, alpha: float) -> float:
        """The wrapped detector's level: the rule only removes scores, it does not rescale them."""
        return self.inner.level_for(alpha)

    def alpha_of(self, score: float) -> float:
        return self.inner.alpha_of(score)

    def _params(self) -> dict[str, Any]:
        return {"rest": self.rest}

    def _dump(self) -> Any:
        return {"inner": self.inner.state(), "i": self._i, "peaks": [[i, s] for i, s in self._peaks]}

    def _load(self, data: Any) -> None:
        raise AssertionError("OneAlarmPerEpisode is restored by from_state")

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> OneAlarmPerEpisode:
        params, data = check_state(state, cls.kind, cls.version)
        try:
            body = data["body"]
            obj = cls(detector_from_state(body["inner"]), int(params["rest"]))
            t_last = data["t_last"]
            obj._t_last = -math.inf if t_last is None else float(t_last)
            obj._i = int(body["i"])
            obj._peaks = deque((int(i), float(s)) for i, s in body["peaks"])
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateFormatError(cls.kind, f"malformed body: {exc!r}") from exc
        return obj
