"""Context novelty: a streaming anomaly detector for single metrics (enmei's NAB detector).

The idea: a sample is anomalous when it puts the series into a *context it has never been in*, and
this is the more surprising the rarer new contexts have been in this series so far.

How a score is made, one sample at a time:

1. **Learning.** The first ``learning`` samples are only stored (score 0: a series shorter than
   ``learning`` is never scored — :meth:`NoveltyDetector.for_rows` sizes it from a known length).
   When the last one arrives, the detector fixes its grids: the value range ``[lo, hi]`` of the
   learning samples (floored for a constant series), the sampling interval (median gap), and the seasonal lag
   ``round(season_s / interval)`` with the range of the seasonal differences seen so far. Then it
   replays the stored samples through step 2 to learn their contexts. (That one sample costs
   O(learning); every other costs O(1).)
2. **Contexts.** Each sample yields keys in several *families*. For each grid resolution ``r`` in
   ``resolutions`` (cells of width ``(hi - lo) / r``): ``sequence``, the cells of the last three
   values; ``mean``, the cell of the mean of the last 16; ``hour``, the pair (hour of day, cell) —
   surprising only when the cell itself is known (``hour_given_value``, default): a value in a cell
   never seen at all is already new to ``sequence``, and counting it again as new for its hour made
   every level step twice as surprising (on the development corpora's telemetry, whose timestamps
   carry no daily rhythm, most false alarms were such steps).
   Once: ``spread``, the log-scaled range of the last 16 values; ``trend``, the cell (resolution 8)
   of the mean of the last 128; ``season``, the cell of ``x - x[lag]``, how the value differs from
   one season ago; and, with weight 0 by default, ``value``, the value's own cell. Cells are
   unbounded integers, so a value far outside the learning range lands in a new cell.
3. **Surprise.** Each family counts its keys. A key never seen before scores ``-ln((N1 + 1)/(n + 2))``
   (Good–Turing: ``N1`` keys seen exactly once among ``n`` observations estimate how likely *some* new
   key is); a known key scores 0. Family surprises (averaged over resolutions) are weighted
   (``weights``) and summed; the sum divided by ``theta`` is the evidence ``e``.
4. **Range break.** If the value leaves the running ``[min, max]`` of everything seen by more than
   ``tolerance`` of its width, ``e += range_base + range_slope * excess`` (excess in widths).
5. **Score** ``e / (1 + e)`` in [0, 1) (its meaning as a nominal false-alarm probability per sample,
   ``exp(-theta * e)``, is :meth:`NoveltyDetector.level_for` / ``alpha_of``), reported only if it
   beats every score of the previous ``rest`` samples (else 0): one alarm per episode, whatever
   threshold is put on it. ``rest`` is 0.3 × ``learning`` by default (``rest = 1``: no rule; the rule
   on its own is :class:`~enmei.detect.alarm.OneAlarmPerEpisode`).

Bad input follows :mod:`enmei.detect.base` (NaN/inf skipped, clamping, monotone clock). Timestamps are
used for the hour of day (UTC) and for the sampling interval; the seasonal comparison counts samples,
so gaps make it compare with a slightly different time of the previous season (less sensitive, not
wrong). The key tables are capped at ``max_keys`` per family: when one overflows, its keys seen only
once are forgotten (they count as new again if they come back).

Memory: the learning buffer, one season of samples, 128 recent values and the key tables.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import deque
from typing import Any, ClassVar

from enmei.detect.alarm import beats_recent
from enmei.detect.base import StreamingDetector

__all__ = ["NoveltyDetector"]

_Key = int | tuple[int, ...]


class _Family:
    """Counts of the keys of one family, with the Good–Turing novelty estimate."""

    __slots__ = ("counts", "n", "n1")

    def __init__(self) -> None:
        self.counts: dict[_Key, int] = {}
        self.n = 0
        self.n1 = 0

    def see(self, key: _Key, max_keys: int) -> float:
        counts = self.counts
        c = counts.get(key, 0)
        surprise = -math.log((self.n1 + 1) / (self.n + 2)) if c == 0 else 0.0
        counts[key] = c + 1
        self.n += 1
        if c == 0:
            self.n1 += 1
            if len(counts) > max_keys:
                self._forget_singletons()
        elif c == 1:
            self.n1 -= 1
        return surprise

    def _forget_singletons(self) -> None:
        keep = {k: v for k, v in self.counts.items() if v > 1}
        self.n -= len(self.counts) - len(keep)
        self.n1 = 0
        self.counts = keep

    def dump(self) -> list[Any]:
        return [self.n, self.n1, [[_key_out(k), v] for k, v in self.counts.items()]]

    @classmethod
    def load(cls, data: Any) -> _Family:
        fam = cls()
        fam.n, fam.n1 = int(data[0]), int(data[1])
        fam.counts = {_key_in(k): int(v) for k, v in data[2]}
        return fam


def _key_out(key: _Key) -> Any:
    return list(key) if isinstance(key, tuple) else key


def _key_in(raw: Any) -> _Key:
    if isinstance(raw, list):
        return tuple(int(v) for v in raw)
    return int(raw)


class _Grid:
    """A value grid fixed at the end of learning, and the running range of what was seen since."""

    __slots__ = ("lo", "mn", "mx", "width")

    def __init__(self, lo: float, width: float, mn: float, mx: float) -> None:
        self.lo = lo
        self.width = width
        self.mn = mn
        self.mx = mx

    @classmethod
    def fit(cls, values: list[float]) -> _Grid:
        lo, hi = min(values), max(values)
        width = hi - lo
        if not width > 0.0:
            width = max(abs(hi) * 1e-3, 1e-9)
        return cls(lo, width, lo, hi)

    def cell(self, x: float, res: int) -> int:
        return math.floor((x - self.lo) / self.width * res)

    def excess(self, x: float) -> float:
        """How far ``x`` leaves the running range, in widths of that range (0 inside); then widen it."""
        span = self.mx - self.mn
        out = 0.0
        if span > 0.0:
            if x > self.mx:
                out = (x - self.mx) / span
            elif x < self.mn:
                out = (self.mn - x) / span
        if x > self.mx:
            self.mx = x
        elif x < self.mn:
            self.mn = x
        return out

    def dump(self) -> list[float]:
        return [self.lo, self.width, self.mn, self.mx]

    @classmethod
    def load(cls, data: Any) -> _Grid:
        lo, width, mn, mx = (float(v) for v in data)
        return cls(lo, width, mn, mx)


class NoveltyDetector(StreamingDetector):
    """Good–Turing surprise of new contexts, plus range breaks, with one alarm per episode."""

    kind: ClassVar[str] = "novelty"

    _SHORT = 16  # samples in the short history (mean, spread)
    _LONG = 128  # samples in the long history (trend)
    #: Families and their default weights in the evidence (0: not computed).
    WEIGHTS: ClassVar[dict[str, float]] = {"value": 0.0, "sequence": 1.0, "mean": 1.0, "hour": 1.0,
                                           "spread": 1.0, "trend": 1.0, "season": 1.0}

    def __init__(self, learning: int = 750, resolutions: tuple[int, ...] | list[int] = (5, 7, 9, 11),
                 seasonal_resolution: int = 8, theta: float = 8.0, rest: int | None = None,
                 tolerance: float = 0.02, season_s: float = 86400.0, max_keys: int = 200_000,
                 weights: dict[str, float] | None = None, range_base: float = 1.0,
                 range_slope: float = 10.0, hour_given_value: bool = True) -> None:
        super().__init__()
        if learning < 2:
            raise ValueError("learning must be >= 2 samples")
        if not resolutions or min(resolutions) < 1:
            raise ValueError("resolutions must be positive integers")
        self.learning = int(learning)
        self.resolutions = tuple(int(r) for r in resolutions)
        self.seasonal_resolution = int(seasonal_resolution)
        self.theta = float(theta)
        self.rest = max(1, (3 * self.learning) // 10) if rest is None else max(1, int(rest))
        self.tolerance = float(tolerance)
        self.season_s = float(season_s)
        self.max_keys = int(max_keys)
        self.weights = dict(self.WEIGHTS if weights is None else weights)
        unknown = set(self.weights) - set(self.WEIGHTS)
        if unknown:
            raise ValueError(f"unknown families {sorted(unknown)}; known: {sorted(self.WEIGHTS)}")
        self._w = {f: float(self.weights.get(f, 0.0)) for f in self.WEIGHTS}
        self.range_base = float(range_base)
        self.range_slope = float(range_slope)
        self.hour_given_value = bool(hour_given_value)
        self._learn_x: list[float] | None = []
        self._learn_t: list[float] = []
        self._grid: _Grid | None = None
        self._sgrid: _Grid | None = None
        self._lag = 0
        self._short: deque[float] = deque(maxlen=self._SHORT)
        self._long: deque[float] = deque(maxlen=self._LONG)
        self._long_sum = 0.0
        self._long_age = 0  # samples since the running sum was last recomputed exactly
        self._season: deque[float] = deque(maxlen=1)
        self._fams: dict[str, _Family] = {}
        self._i = 0  # samples scored after learning
        self._peaks: deque[tuple[int, float]] = deque()  # decreasing scores of the last `rest` samples

    @classmethod
    def for_rows(cls, n_rows: int, **options: Any) -> NoveltyDetector:
        """A detector for a series of ``n_rows`` samples known in advance: its learning phase is NAB's
        probation of such a series (``min(floor(0.15 n), 750)``, at least 2), so that a short series is
        scored after its first 15 % instead of not at all (the default ``learning=750`` scores nothing
        on a series shorter than that). ``options`` are the other constructor arguments."""
        from enmei.detect.nab_score import probation_length

        return cls(learning=max(2, probation_length(int(n_rows))), **options)

    def level_for(self, alpha: float) -> float:
        """The score whose evidence ``e`` has ``theta * e = -ln(alpha)``: the summed surprises are
        ``-ln`` of Good–Turing estimates of how likely a new context is, so ``exp(-theta * e)`` is the
        nominal probability of that much novelty in one sample (as if the families were independent;
        a range break counts as log-probability ``range_base + range_slope * excess`` too)."""
        super().level_for(alpha)
        e = -math.log(alpha) / self.theta
        return e / (1.0 + e)

    def alpha_of(self, score: float) -> float:
        if not score > 0.0:
            return 1.0
        if score >= 1.0:
            return 0.0
        return math.exp(-self.theta * score / (1.0 - score))

    # -- scoring --------------------------------------------------------------------------------
    def _step(self, x: float, t: float) -> float:
        if self._learn_x is not None:
            self._learn_x.append(x)
            self._learn_t.append(t)
            self._ev = {"value": x, "t": t, "rule": "learning", "window": len(self._learn_x)}
            if len(self._learn_x) >= self.learning:
                self._finish_learning()
            return 0.0
        e, ev = self._evidence(x, t)
        score = e / (1.0 + e)
        # One alarm per episode (the rule of enmei.detect.alarm, built in here: its state is this
        # detector's): report only what beats the last `rest` scores.
        beaten = beats_recent(self._peaks, self._i, self.rest, score)
        self._i += 1
        ev["raw_score"] = score
        ev["suppressed"] = not beaten
        self._ev = ev
        return score if beaten else 0.0

    def _finish_learning(self) -> None:
        xs = self._learn_x or []
        ts = self._learn_t
        self._learn_x = None
        self._learn_t = []
        gaps = [b - a for a, b in itertools.pairwise(ts) if b > a]
        interval = statistics.median(gaps) if gaps else 1.0
        self._grid = _Grid.fit(xs)
        lag = round(self.season_s / interval) if interval > 0 else 0
        # A seasonal view needs enough learning data to know what a normal seasonal change is.
        if 1 <= lag <= len(xs) - max(10, len(xs) // 10):
            self._lag = lag
            self._sgrid = _Grid.fit([xs[i] - xs[i - lag] for i in range(lag, len(xs))])
        self._season = deque(maxlen=self._lag + 1)
        for x, t in zip(xs, ts, strict=True):
            self._evidence(x, t)

    def _fam(self, name: str) -> _Family:
        fam = self._fams.get(name)
        if fam is None:
            fam = self._fams[name] = _Family()
        return fam

    def _evidence(self, x: float, t: float) -> tuple[float, dict[str, Any]]:
        grid = self._grid
        assert grid is not None
        mk = self.max_keys
        w = self._w
        fam = self._fam
        short = self._short
        short.append(x)
        full = len(short) == self._SHORT
        hour = int(t // 3600.0) % 24
        mean = sum(short) / len(short)
        sv = ss = sm = sh = 0.0
        given = self.hour_given_value
        for res in self.resolutions:
            c = grid.cell(x, res)
            known = True
            if w["value"] or given:
                vf = fam(f"v{res}")
                known = vf.counts.get(c, 0) > 0
                sv += vf.see(c, mk)
            if w["sequence"] and len(short) >= 3:
                ss += fam(f"s{res}").see((grid.cell(short[-3], res), grid.cell(short[-2], res), c), mk)
            if w["mean"] and full:
                sm += fam(f"m{res}").see(grid.cell(mean, res), mk)
            if w["hour"]:
                s_h = fam(f"h{res}").see((hour, c), mk)  # (counted either way: the key is now known)
                if known or not given:
                    sh += s_h
        k = len(self.resolutions)
        surprises = {"value": sv / k, "sequence": ss / k, "mean": sm / k, "hour": sh / k}
        if w["spread"] and full:
            spread = max(short) - min(short)
            surprises["spread"] = fam("spread").see(
                math.floor(2.0 * math.log2(spread / grid.width + 1e-6)), mk)
        long_mean = self._push_long(x)
        if w["trend"] and long_mean is not None:
            surprises["trend"] = fam("trend").see(grid.cell(long_mean, 8), mk)
        diff = math.nan
        if self._lag:
            season = self._season
            season.append(x)
            if w["season"] and len(season) > self._lag and self._sgrid is not None:
                diff = x - season[0]
                surprises["season"] = fam("season").see(
                    self._sgrid.cell(diff, self.seasonal_resolution), mk)
        total = 0.0
        for f, v in surprises.items():
            total += w[f] * v
        e = total / self.theta
        excess = grid.excess(x)
        novel = [f for f, v in surprises.items() if v > 0.0 and w[f]]
        rule = "novel_context" if novel else "none"
        if excess > self.tolerance:
            e += self.range_base + self.range_slope * excess
            rule = "range_break"
        ev: dict[str, Any] = {
            "value": x, "t": t, "centre": mean, "lower": grid.mn, "upper": grid.mx, "rule": rule,
            "window": len(short), "surprise": total, "surprises": surprises, "range_excess": excess,
            "novel": novel, "seasonal_diff": None if math.isnan(diff) else diff,
        }
        return e, ev

    def _push_long(self, x: float) -> float | None:
        """Append to the long history; its mean once full (a running sum, re-summed exactly)."""
        long = self._long
        if len(long) == self._LONG:
            self._long_sum -= long[0]
        long.append(x)
        self._long_sum += x
        self._long_age += 1
        if self._long_age >= self._LONG:
            self._long_sum = math.fsum(long)
            self._long_age = 0
        return self._long_sum / self._LONG if len(long) == self._LONG else None

    # -- state ----------------------------------------------------------------------------------
    def _params(self) -> dict[str, Any]:
        return {"learning": self.learning, "resolutions": list(self.resolutions),
                "seasonal_resolution": self.seasonal_resolution, "theta": self.theta, "rest": self.rest,
                "tolerance": self.tolerance, "season_s": self.season_s, "max_keys": self.max_keys,
                "weights": dict(self.weights), "range_base": self.range_base,
                "range_slope": self.range_slope, "hour_given_value": self.hour_given_value}

    def _dump(self) -> Any:
        return {
            "learn_x": self._learn_x, "learn_t": self._learn_t if self._learn_x is not None else [],
            "grid": None if self._grid is None else self._grid.dump(),
            "sgrid": None if self._sgrid is None else self._sgrid.dump(),
            "lag": self._lag, "short": list(self._short), "season": list(self._season),
            "long": list(self._long), "long_sum": self._long_sum, "long_age": self._long_age,
            "fams": {k: f.dump() for k, f in self._fams.items()}, "i": self._i,
            "peaks": [[i, s] for i, s in self._peaks],
        }

    def _load(self, data: Any) -> None:
        lx = data["learn_x"]
        self._learn_x = None if lx is None else [float(v) for v in lx]
        self._learn_t = [float(v) for v in data["learn_t"]]
        self._grid = None if data["grid"] is None else _Grid.load(data["grid"])
        self._sgrid = None if data["sgrid"] is None else _Grid.load(data["sgrid"])
        self._lag = int(data["lag"])
        self._short = deque((float(v) for v in data["short"]), maxlen=self._SHORT)
        self._season = deque((float(v) for v in data["season"]), maxlen=self._lag + 1)
        self._long = deque((float(v) for v in data["long"]), maxlen=self._LONG)
        self._long_sum = float(data["long_sum"])
        self._long_age = int(data["long_age"])
        self._fams = {str(k): _Family.load(v) for k, v in data["fams"].items()}
        self._i = int(data["i"])
        self._peaks = deque((int(i), float(s)) for i, s in data["peaks"])
        if self._learn_x is None and self._grid is None:
            raise ValueError("a detector past learning needs its grid")
