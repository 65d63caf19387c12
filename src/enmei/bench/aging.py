"""``enmei bench aging``: find leaks before they kill, and never take growth that levels off for one.

The labelled set, split into ``dev`` (for choosing defaults) and ``heldout`` (for the figures; the
default), each made of two parts:

- **real**: series recorded once from real processes by :mod:`enmei.bench.aging_record` (PostgreSQL
  filling its shared buffers under pgbench, Redis filling to ``maxmemory`` and evicting, a bounded
  cache, a GC sawtooth, a compressed day; Python services that leak fast, slowly, in lumps, late or
  under a sawtooth until they die), committed under ``tests/data/aging`` (``index.json`` says what ran).
- **synthetic** (clearly so: generated, seeded by the split, time-compressed to minutes and hours at
  1 Hz, for speed and for shapes the recordings are too short for): leaks — linear, under a GC sawtooth,
  in lumps, of file descriptors, starting late — that run until they reach their limit; normal series —
  a rise to two thirds of the limit that then stays (the hard case: it rises like a leak), a cache
  filling asymptotically, a sawtooth, a compressed day (rising and falling), a step, noise.

Every series is fed, one sample at a time, to each detector under comparison, thresholded at
``1 - alpha`` (``alpha`` = 1e-3, the aging_alpha default):

- ``enmei`` — :class:`~enmei.detect.aging.TrendDetector` with the defaults of ``[units.NAME.detect]``;
- ``old_defaults`` — the detector shipped before issue 13 with its defaults (60 s buckets, 20 of them,
  600 s warm-up);
- ``old_tuned`` — the same, tuned by hand as the issue's new user did (5 s buckets, 6 of them, 30 s
  warm-up).

Each gets the series' limit (a leak's: the size it dies at; a normal series': 1.5 times its peak, the
``memory_max`` its operator would give it). A leak is *found* if the first alarm comes after the leak
began and before the series ends (it died, or reached its limit); an alarm before it began, or any alarm
on a normal series, is a false alarm. Results per detector and part: ``detection_rate``,
``false_alarms``, ``normal`` (count), ``median_delay_s`` (leak start to alarm), ``min_lead_s`` and
``median_lead_s`` (alarm to death), ``us_per_sample`` (over the samples fed, until the first alarm);
the top-level keys are those of ``enmei`` over the whole split, and ``old_*`` those of
``old_defaults``. ``cost_us_per_sample``: each detector on one trending series at 1 s and at 5-minute
sampling (:func:`cost`).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from enmei.bench.aging_legacy import MannKendallTrend
from enmei.detect.aging import TrendDetector
from enmei.detect.aging_unit import AgingOptions
from enmei.detect.base import StreamingDetector

__all__ = ["ALPHA", "DETECTORS", "Series", "data_dir", "evaluate", "load_recorded", "run", "synthetic"]

MIB = 2**20
ALPHA = 1e-3


@dataclass(frozen=True)
class Series:
    """One labelled resource series: ``values`` at times ``t`` (seconds), and what it is."""

    name: str
    label: str  # "leak" or "normal"
    kind: str
    source: str  # "real" or "synthetic"
    split: str
    t: np.ndarray
    values: np.ndarray
    limit: float
    leak_start_s: float | None = None

    @property
    def leak(self) -> bool:
        return self.label == "leak"


def data_dir() -> Path:
    """Where the recorded series are: ``tests/data/aging`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[3] / "tests" / "data" / "aging"


def load_recorded(root: Path, split: str) -> list[Series]:
    """The recorded series of ``split`` (none if ``root`` has no ``index.json``)."""
    index_path = root / "index.json"
    if not index_path.exists():
        return []
    index = json.loads(index_path.read_text())
    out: list[Series] = []
    for name, meta in sorted(index["series"].items()):
        if meta["split"] != split:
            continue
        with open(root / meta["file"], newline="") as f:
            rows = [(float(a), float(b)) for a, b in list(csv.reader(f))[1:]]
        arr = np.array(rows, dtype=np.float64)
        start = meta.get("leak_start_s")
        out.append(Series(name, meta["label"], meta["kind"], "real", split, arr[:, 0], arr[:, 1],
                          float(meta["limit_bytes"]), None if start is None else float(start)))
    return out


# -- the synthetic part ----------------------------------------------------------------------------

def _noise(rng: np.random.Generator, n: int, mib: float = 1.0) -> np.ndarray:
    return rng.normal(0.0, mib * MIB, n)


def _saw(rng: np.random.Generator, t: np.ndarray, amp_mib: float) -> np.ndarray:
    period = rng.uniform(5, 120)
    return amp_mib * MIB * np.mod(t + rng.uniform(0, period), period) / period


def _leak(rng: np.random.Generator, kind: str, i: int, split: str) -> Series:
    limit = float(rng.choice([256, 512, 1024, 2048])) * MIB
    base = rng.uniform(0.1, 0.3) * limit
    life = float(rng.uniform(600, 3 * 3600))  # from the leak's start to the limit
    start = float(rng.uniform(60, 900)) if kind != "leak_late" else float(rng.uniform(1800, 3600))
    rate = (limit - base) / life
    n = int(start + life) + 1
    t = np.arange(n, dtype=np.float64)
    if kind == "fd_leak":
        limit = float(rng.choice([256, 1024, 4096]))
        base_fd = rng.integers(20, 41, n).astype(np.float64)
        fd_rate = (limit - 40.0) / life
        values = base_fd + np.floor(np.clip(t - start, 0, None) * fd_rate)
        return Series(f"syn_{kind}_{split}_{i}", "leak", kind, "synthetic", split, t, values, limit, start)
    grow = np.clip(t - start, 0, None) * rate
    if kind == "leak_steps":
        grow = np.zeros(n)
        at, total = start, 0.0
        while at < n:
            gap = float(rng.uniform(20, 200))
            at += gap
            total += rate * gap
            if at < n:
                grow[int(at):] = total
    values = base + grow + _noise(rng, n)
    if kind == "leak_gc":
        values += _saw(rng, t, float(rng.uniform(10, 40)))
    end = np.flatnonzero(values >= limit)
    cut = int(end[0]) if len(end) else n  # the series ends where the process would die
    return Series(f"syn_{kind}_{split}_{i}", "leak", kind, "synthetic", split, t[:cut], values[:cut], limit, start)


def _normal(rng: np.random.Generator, kind: str, i: int, split: str) -> Series:
    n = int(rng.uniform(2, 4) * 3600)
    t = np.arange(n, dtype=np.float64)
    base = float(rng.uniform(50, 200)) * MIB
    values = base + _noise(rng, n)
    if kind == "plateau":  # a rise like a leak's, that stops at two thirds of the limit
        top = float(rng.uniform(100, 800)) * MIB
        at, length = float(rng.uniform(300, 1800)), float(rng.uniform(300, 3600))
        values += np.clip((t - at) / length, 0.0, 1.0) * top
    elif kind == "cache_fill":
        top, tau = float(rng.uniform(100, 800)) * MIB, float(rng.uniform(300, 2400))
        values += top * (1 - np.exp(-t / tau))
    elif kind == "gc":
        values += _saw(rng, t, float(rng.uniform(10, 60)))
    elif kind == "diurnal":  # a day compressed to 1-2 h: the working set rises for half of it
        period, amp = float(rng.uniform(3600, 7200)), float(rng.uniform(50, 400)) * MIB
        values += amp * (1 - np.cos(2 * math.pi * (t / period + rng.uniform(0, 1)))) / 2
    elif kind == "step":
        values += np.where(t >= rng.uniform(600, n - 600), float(rng.uniform(50, 300)) * MIB, 0.0)
    limit = 1.5 * float(values.max())
    return Series(f"syn_{kind}_{split}_{i}", "normal", kind, "synthetic", split, t, values, limit)


LEAK_KINDS = ("leak", "leak_gc", "leak_steps", "fd_leak", "leak_late")
NORMAL_KINDS = ("plateau", "cache_fill", "gc", "diurnal", "step", "flat")


def synthetic(split: str, per_kind: int = 4, seed: int = 0) -> list[Series]:
    """The synthetic part of ``split`` (seeded by it: ``dev`` and ``heldout`` never share a series;
    ``seed`` makes another draw of the same split)."""
    rng = np.random.default_rng({"dev": 1, "heldout": 2}[split] + 1000 * seed)
    out: list[Series] = []
    for i in range(per_kind):
        out += [_leak(rng, k, i, split) for k in LEAK_KINDS]
        out += [_normal(rng, k, i, split) for k in NORMAL_KINDS]
    return out


# -- the detectors and their evaluation -----------------------------------------------------------

def _enmei(limit: float) -> StreamingDetector:
    o = AgingOptions(kind="aging")  # the documented defaults, as a unit gets them
    return TrendDetector(limit=limit, bucket_s=o.bucket_s, window=o.window, min_buckets=o.min_buckets,
                         horizon_s=o.horizon_s, warmup_s=o.warmup_s, slope_ratio=o.slope_ratio, urgency=o.urgency)


DETECTORS: dict[str, Callable[[float], StreamingDetector]] = {
    "enmei": _enmei,
    "old_defaults": lambda limit: MannKendallTrend(limit=limit),
    "old_tuned": lambda limit: MannKendallTrend(limit=limit, bucket_s=5.0, min_buckets=6, warmup_s=30.0),
}


def first_alarm(s: Series, make: Callable[[float], StreamingDetector],
                alpha: float = ALPHA) -> tuple[float | None, float]:
    """(time of the first score >= 1 - alpha or None, seconds spent in ``update``)."""
    det = make(s.limit)
    level = 1.0 - alpha
    t0 = time.perf_counter()
    for t, v in zip(s.t.tolist(), s.values.tolist(), strict=True):
        if det.update(v, t) >= level:
            return t, time.perf_counter() - t0
    return None, time.perf_counter() - t0


def evaluate(series: Iterable[Series], make: Callable[[float], StreamingDetector],
             alpha: float = ALPHA) -> dict[str, Any]:
    """The figures of one detector over ``series`` (see the module docstring), with per-series results."""
    found = leaks = normal = false_alarms = samples = 0
    spent = 0.0
    delays: list[float] = []
    leads: list[float] = []
    rows: list[dict[str, Any]] = []
    for s in series:
        at, sec = first_alarm(s, make, alpha)
        fed = len(s.t) if at is None else int(np.searchsorted(s.t, at)) + 1
        samples += fed
        spent += sec
        end = float(s.t[-1])
        row: dict[str, Any] = {"name": s.name, "label": s.label, "kind": s.kind, "alarm_s": at}
        if s.leak:
            leaks += 1
            start = s.leak_start_s or 0.0
            if at is not None and start <= at <= end:
                found += 1
                delays.append(at - start)
                leads.append(end - at)
                row.update(found=True, delay_s=at - start, lead_s=end - at)
            else:
                row["found"] = False
                if at is not None:
                    false_alarms += 1  # before the leak began
        else:
            normal += 1
            if at is not None:
                false_alarms += 1
                row["false_alarm"] = True
        rows.append(row)
    return {
        "detection_rate": found / leaks if leaks else math.nan, "leaks": leaks, "found": found,
        "false_alarms": false_alarms, "normal": normal,
        "median_delay_s": statistics.median(delays) if delays else math.nan,
        "min_lead_s": min(leads) if leads else math.nan,
        "median_lead_s": statistics.median(leads) if leads else math.nan,
        "us_per_sample": 1e6 * spent / samples if samples else math.nan, "samples": samples, "series": rows,
    }


def cost(n: int = 5000) -> dict[str, dict[str, float]]:
    """µs per sample of each detector on one slowly trending noisy series of ``n`` samples, at 1 s and at
    5-minute sampling (the issue measured the old detector at 1.05-1.25 ms per 5-minute sample)."""
    rng = np.random.default_rng(7)
    out: dict[str, dict[str, float]] = {}
    for name, make in DETECTORS.items():
        out[name] = {}
        for label, dt in (("1s", 1.0), ("300s", 300.0)):
            values = (100 * MIB + rng.normal(0, MIB, n) + np.arange(n) * dt * 50.0).tolist()
            det = make(1e12)  # far: never urgent, so every judgement runs in full
            t0 = time.perf_counter()
            for i, v in enumerate(values):
                det.update(v, i * dt)
            out[name][label] = 1e6 * (time.perf_counter() - t0) / n
    return out


def run(split: str = "heldout", root: Path | None = None, *, detail: bool = False, seed: int = 0,
        detectors: Iterable[str] | None = None, cost_n: int = 5000) -> dict[str, Any]:
    """The benchmark on ``split``; the top-level figures are enmei's over all of it (module docstring).
    Figures that have no value (no leak found: no delay) are None. ``detectors`` (default: all; enmei
    always) and ``cost_n`` (0: no cost run) make a shorter run."""
    started = time.perf_counter()
    real = load_recorded(root or data_dir(), split)
    syn = synthetic(split, seed=seed)
    out: dict[str, Any] = {"split": split, "alpha": ALPHA, "real_series": len(real), "synthetic_series": len(syn)}
    per: dict[str, Any] = {}
    chosen = {"enmei", *(DETECTORS if detectors is None else detectors)}
    for name, make in DETECTORS.items():
        if name not in chosen:
            continue
        per[name] = {part: evaluate(ss, make) for part, ss in (("real", real), ("synthetic", syn),
                                                                ("all", real + syn))}
        if not detail:
            for part in per[name].values():
                part.pop("series")
    main = per["enmei"]["all"]
    out.update({k: main[k] for k in ("detection_rate", "false_alarms", "median_delay_s", "min_lead_s",
                                     "us_per_sample")})
    out.update({"leaks": main["leaks"], "normal": main["normal"]})
    if "old_defaults" in per:
        old = per["old_defaults"]["all"]
        out.update({f"old_{k}": old[k] for k in ("detection_rate", "false_alarms", "median_delay_s",
                                                 "us_per_sample")})
    out["detectors"] = per
    if cost_n:
        out["cost_us_per_sample"] = cost(cost_n)
    out["seconds"] = time.perf_counter() - started
    cleaned: dict[str, Any] = _plain(out)
    return cleaned


def _plain(x: Any) -> Any:
    """JSON-ready: NaN becomes None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    return x
