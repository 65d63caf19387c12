"""Combinations of detectors, and restoring any detector of this package from its state.

:class:`MaxOf` runs several detectors on the same samples and reports the highest score with the
evidence of the detector that gave it (``evidence()["detector"]`` names its kind; ``since`` is the
earliest change-point estimate any member gives, e.g. a CUSUM's, or None). Since each chart's
score is ``1 - nominal alpha``, the maximum is the strongest evidence; its own nominal false-alarm rate
is at most the sum of the members' (a union bound).

:func:`enmei.detect.base.detector_from_state` rebuilds any detector kind of this package from ``state()``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from enmei.detect.base import StateFormatError, StreamingDetector, check_state, detector_from_state

__all__ = ["MaxOf"]


class MaxOf(StreamingDetector):
    """The highest score of several detectors fed the same samples."""

    kind: ClassVar[str] = "max_of"

    def __init__(self, members: Sequence[StreamingDetector]) -> None:
        super().__init__()
        if not members:
            raise ValueError("MaxOf needs at least one member")
        self.members = list(members)
        levels = [getattr(m, "alarm_level", None) for m in self.members]
        known = [lv for lv in levels if isinstance(lv, float)]
        #: The lowest alarm level of the members: at or above it, at least one member alarms.
        self.alarm_level = min(known) if known else 1.0

    def _step(self, x: float, t: float) -> float:
        best = -1.0
        best_ev: dict[str, Any] = {}
        since: float | None = None
        for m in self.members:
            s = m.update(x, t)
            ev = m.evidence()
            ms = ev.get("since")
            if isinstance(ms, (int, float)) and (since is None or ms < since):
                since = float(ms)
            if s > best:
                best = s
                best_ev = ev
                best_ev["detector"] = m.kind
        best_ev["since"] = since
        self._ev = best_ev
        return best

    def _params(self) -> dict[str, Any]:
        return {}

    def _dump(self) -> Any:
        return [m.state() for m in self.members]

    def _load(self, data: Any) -> None:
        raise AssertionError("MaxOf is restored by from_state")

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MaxOf:
        _, data = check_state(state, cls.kind, cls.version)
        try:
            members = [detector_from_state(s) for s in data["body"]]
            obj = cls(members)
            t_last = data["t_last"]
            obj._t_last = -float("inf") if t_last is None else float(t_last)
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise StateFormatError(cls.kind, f"malformed body: {exc!r}") from exc
        return obj
