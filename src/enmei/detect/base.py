"""The streaming detector protocol, its versioned state format, and thresholds that make verdicts.

A detector scores one sample at a time::

    score = detector.update(value, t)      # 0.0 (ordinary) .. 1.0 (certainly abnormal)
    detector.evidence()                    # what the last score rests on: value, centre, limits, rule

and never decides: a :class:`Threshold` turns scores into :class:`Alarm` records that carry the
evidence, and the pipeline turns alarms into verdicts.

Promises every detector in this package keeps (the contract tests check them on each one):

- **Streaming, no look-ahead.** ``update`` sees only the samples given so far; feeding a series one
  point at a time gives exactly the scores of any batch run over it.
- **O(1) per sample** (bounded by the detector's parameters, never by the length of the stream).
- **Deterministic.** No clock, no randomness, no I/O.
- **Scores in [0, 1]**, finite. Where a detector has a statistical model, ``1 - score`` is the nominal
  probability of a score this high when the process is in control (see each detector).
- **State** is a plain JSON-ready dict, ``{"format": "enmei.detect", "kind", "version", "params",
  "data"}``; ``restore(state)`` (or ``Class.from_state``) gives a detector whose next scores are
  identical to the original's. A state of another kind, an unknown version or a malformed body
  raises :class:`StateFormatError`. Never pickle.
- **Bad input**, the same everywhere:

  - a value that is NaN or infinite is *skipped*: the score is 0.0, the state does not change
    (a missing sample is no evidence) and ``evidence()["skipped"]`` is True;
  - finite values beyond ±1e150 are clamped to ±1e150, so that no square or sum overflows;
  - a timestamp that is NaN, infinite or earlier than the last one is replaced by the last one
    (the detector's clock never runs backwards); gaps are allowed and only matter to detectors
    that use time (they say how);
  - a constant series has zero spread: detectors floor their scale (relative and absolute
    epsilons) so that the first change from a constant gives a high, finite score.
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

from enmei.errors import EnmeiError

__all__ = [
    "STATE_FORMAT",
    "VALUE_LIMIT",
    "Alarm",
    "Detector",
    "StateFormatError",
    "StreamingDetector",
    "Threshold",
    "check_state",
    "clamp",
    "detector_from_state",
    "detector_kinds",
]

STATE_FORMAT = "enmei.detect"
VALUE_LIMIT = 1e150


class StateFormatError(EnmeiError, ValueError):
    """A saved detector state cannot be restored: wrong kind, unknown version or malformed body."""

    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return f"cannot restore detector state ({self.kind}): {self.reason}"


@runtime_checkable
class Detector(Protocol):
    """What the pipeline and the benchmarks need of a detector."""

    kind: ClassVar[str]

    def update(self, value: float, t: float) -> float: ...

    def evidence(self) -> dict[str, Any]: ...

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


def clamp(x: float) -> float:
    """``x`` limited to ±VALUE_LIMIT (callers have already rejected NaN and infinities)."""
    if x > VALUE_LIMIT:
        return VALUE_LIMIT
    if x < -VALUE_LIMIT:
        return -VALUE_LIMIT
    return x


def check_state(state: Mapping[str, Any], kind: str, version: int) -> tuple[dict[str, Any], Any]:
    """Validate the envelope of a saved state; returns ``(params, data)`` or raises StateFormatError."""
    if not isinstance(state, Mapping):
        raise StateFormatError(kind, f"expected a mapping, got {type(state).__name__}")
    if state.get("format") != STATE_FORMAT:
        raise StateFormatError(kind, f"format is {state.get('format')!r}, not {STATE_FORMAT!r}")
    if state.get("kind") != kind:
        raise StateFormatError(kind, f"state is of kind {state.get('kind')!r}")
    if state.get("version") != version:
        raise StateFormatError(kind, f"version {state.get('version')!r} is not {version}")
    params = state.get("params")
    if not isinstance(params, Mapping):
        raise StateFormatError(kind, "params missing")
    return dict(params), state.get("data")


class StreamingDetector(ABC):
    """Base of the detectors here: input hygiene, clock monotony, the state envelope.

    Subclasses implement ``_step(x, t) -> score`` (``x`` finite and clamped, ``t`` monotone),
    ``_params()`` (constructor keyword arguments), ``_dump()`` and ``_load(data)`` (the mutable part),
    and keep ``self._ev`` (the evidence dict of the last step) up to date.
    """

    kind: ClassVar[str] = "abstract"
    version: ClassVar[int] = 1

    def __init__(self) -> None:
        self._t_last = -math.inf
        self._ev: dict[str, Any] = {}

    # -- the protocol -------------------------------------------------------------------------
    def update(self, value: float, t: float) -> float:
        """Score one sample. See the module docstring for what happens on bad input."""
        if not math.isfinite(t) or t < self._t_last:
            t = self._t_last if math.isfinite(self._t_last) else 0.0
        if not math.isfinite(value):
            self._ev = {"value": value, "t": t, "skipped": True}
            return 0.0
        self._t_last = t
        s = self._step(clamp(float(value)), t)
        if not s > 0.0:  # also catches NaN
            return 0.0
        return 1.0 if s > 1.0 else s

    def level_for(self, alpha: float) -> float:
        """The score at or above which this detector's nominal false-alarm probability per sample is
        ``alpha`` — the calibration that lets one threshold mean the same for every detector.

        The default reads the score as ``1 - p`` (a nominal p-value: control charts, the windowed
        Gaussian, the robust z-score), so the level is ``1 - alpha``; a detector whose score means
        something else overrides this (:class:`~enmei.detect.novelty.NoveltyDetector`). Raises
        ``ValueError`` unless ``0 < alpha < 1``."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        return 1.0 - alpha

    def alpha_of(self, score: float) -> float:
        """The nominal false-alarm probability per sample of a score (the inverse of :meth:`level_for`;
        1.0 for a score of 0)."""
        return 1.0 - score if score > 0.0 else 1.0

    def evidence(self) -> dict[str, Any]:
        """What the last score rests on (a copy: value, centre, limits, rule, window...)."""
        return dict(self._ev)

    def state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "kind": self.kind, "version": self.version,
                "params": self._params(),
                "data": {"t_last": None if not math.isfinite(self._t_last) else self._t_last,
                         "body": self._dump()}}

    def restore(self, state: Mapping[str, Any]) -> None:
        """Become the detector that saved ``state`` (its parameters included)."""
        fresh = type(self).from_state(state)
        vars(self).clear()
        vars(self).update(vars(fresh))

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        params, data = check_state(state, cls.kind, cls.version)
        try:
            obj = cls(**params)
            t_last = data["t_last"]
            obj._t_last = -math.inf if t_last is None else float(t_last)
            obj._load(data["body"])
        except StateFormatError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise StateFormatError(cls.kind, f"malformed body: {exc!r}") from exc
        return obj

    # -- for subclasses -------------------------------------------------------------------------
    @abstractmethod
    def _step(self, x: float, t: float) -> float: ...

    @abstractmethod
    def _params(self) -> dict[str, Any]: ...

    @abstractmethod
    def _dump(self) -> Any: ...

    @abstractmethod
    def _load(self, data: Any) -> None: ...


@dataclass(frozen=True)
class Alarm:
    """A score that crossed a threshold, with the evidence it rests on (plain values only)."""

    t: float
    score: float
    level: float
    rule: str
    evidence: Mapping[str, Any] = field(default_factory=dict)


class Threshold:
    """Turns scores into alarms: fire at ``score >= level``, then hold off; documented re-arm rule.

    After an alarm the threshold is *disarmed*. It re-arms when both hold: at least ``hold_off_s``
    seconds have passed since the alarm, and the score has stayed below ``rearm_level`` (default:
    ``level``) for ``quiet_s`` seconds. While disarmed, an episode that goes on (score still at or above
    ``level``) is reported again every ``repeat_s`` seconds if ``repeat_s`` is set (never if None).
    Timestamps that go backwards are treated as the last timestamp seen.
    """

    version: ClassVar[int] = 1

    def __init__(self, level: float, *, hold_off_s: float = 300.0, rearm_level: float | None = None,
                 quiet_s: float = 30.0, repeat_s: float | None = None) -> None:
        if not 0.0 <= level <= 1.0:
            raise ValueError(f"level must be in [0, 1], got {level}")
        self.level = level
        self.hold_off_s = hold_off_s
        self.rearm_level = level if rearm_level is None else rearm_level
        self.quiet_s = quiet_s
        self.repeat_s = repeat_s
        self._armed = True
        self._last_alarm = -math.inf
        self._quiet_since: float | None = None
        self._t = -math.inf

    @property
    def armed(self) -> bool:
        return self._armed

    @property
    def last_alarm(self) -> float:
        """When the last alarm (or repeat) was reported (-inf if never)."""
        return self._last_alarm

    def repeated(self, t: float) -> None:
        """Record a repeat the caller reported at ``t`` by a test of its own (a detector that scores an
        episode only once); the next ``repeat_s`` period starts there."""
        self._last_alarm = t

    def judge(self, score: float, t: float, evidence: Mapping[str, Any] | None = None) -> Alarm | None:
        """An alarm if this score should be reported now, else None."""
        if not math.isfinite(t) or t < self._t:
            t = self._t if math.isfinite(self._t) else 0.0
        self._t = t
        if not math.isfinite(score):
            score = 0.0
        ev = dict(evidence or {})
        rule = str(ev.get("rule") or "score")
        if self._armed:
            if score >= self.level:
                self._armed = False
                self._last_alarm = t
                self._quiet_since = None
                return Alarm(t, score, self.level, rule, ev)
            return None
        # Disarmed: track quiet time, maybe re-arm, maybe repeat.
        if score < self.rearm_level:
            if self._quiet_since is None:
                self._quiet_since = t
        else:
            self._quiet_since = None
        if (t - self._last_alarm >= self.hold_off_s and self._quiet_since is not None
                and t - self._quiet_since >= self.quiet_s):
            self._armed = True
            return None
        if (self.repeat_s is not None and score >= self.level
                and t - self._last_alarm >= self.repeat_s):
            self._last_alarm = t
            return Alarm(t, score, self.level, rule, {**ev, "repeat": True})
        return None

    def state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "kind": "threshold", "version": self.version,
                "params": {"level": self.level, "hold_off_s": self.hold_off_s,
                           "rearm_level": self.rearm_level, "quiet_s": self.quiet_s,
                           "repeat_s": self.repeat_s},
                "data": {"armed": self._armed, "last_alarm": _fin(self._last_alarm),
                         "quiet_since": self._quiet_since, "t": _fin(self._t)}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Threshold:
        params, data = check_state(state, "threshold", cls.version)
        try:
            obj = cls(float(params["level"]), hold_off_s=float(params["hold_off_s"]),
                      rearm_level=float(params["rearm_level"]), quiet_s=float(params["quiet_s"]),
                      repeat_s=None if params["repeat_s"] is None else float(params["repeat_s"]))
            obj._armed = bool(data["armed"])
            obj._last_alarm = _unfin(data["last_alarm"])
            q = data["quiet_since"]
            obj._quiet_since = None if q is None else float(q)
            obj._t = _unfin(data["t"])
        except (KeyError, TypeError, ValueError) as exc:
            raise StateFormatError("threshold", f"malformed body: {exc!r}") from exc
        return obj


def _fin(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _unfin(x: Any) -> float:
    return -math.inf if x is None else float(x)


#: Every detector kind ``state()`` can name, by module and class. Imported by name on first use: these
#: modules import this one, and the wrappers among them (MaxOf, OneAlarmPerEpisode) restore their inner
#: detectors through :func:`detector_from_state`, so a static import either way would be a cycle.
_KIND_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("enmei.detect.charts", ("Shewhart", "EWMA", "CUSUM")),
    ("enmei.detect.ensemble", ("MaxOf",)),
    ("enmei.detect.baselines", ("WindowedGaussian", "RollingRobustZ")),
    ("enmei.detect.novelty", ("NoveltyDetector",)),
    ("enmei.detect.aging", ("TrendDetector",)),
    ("enmei.detect.alarm", ("OneAlarmPerEpisode",)),
    ("enmei.detect.recurrence", ("RecurrenceDiscount",)),
    ("enmei.detect.latency", ("LatencyStream",)),
)


def detector_kinds() -> dict[str, type[StreamingDetector]]:
    """Every detector kind this package can restore, by its ``kind`` name."""
    out: dict[str, type[StreamingDetector]] = {}
    for module, names in _KIND_CLASSES:
        mod = importlib.import_module(module)
        for name in names:
            cls = getattr(mod, name)
            out[cls.kind] = cls
    return out


def detector_from_state(state: Mapping[str, Any]) -> StreamingDetector:
    """The detector that saved ``state``; StateFormatError if its kind is unknown or the state bad."""
    kind = state.get("kind") if isinstance(state, Mapping) else None
    cls = detector_kinds().get(str(kind))
    if cls is None:
        raise StateFormatError(str(kind), "unknown detector kind")
    return cls.from_state(state)
