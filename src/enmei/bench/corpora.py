"""Labelled corpora for ``enmei bench detect``, read from where they were put, never from the package.

Each loader returns NAB-style :class:`~enmei.detect.nab_score.NabSeries` (values, timestamps and the
labelled anomaly ranges as windows), so that every corpus is scored by the same NAB scorer:

- ``nab`` — NAB v1.1 (``$ENMEI_NAB_DIR`` or ``../shared/data/nab``; see :mod:`enmei.bench.nab`).
- ``smap`` and ``msl`` — NASA's SMAP (54 channels) and MSL (27) spacecraft telemetry (Hundman et al., KDD 2018; the
  ``telemanom`` release, Caltech BSD-style licence): ``telemanom/test/<chan>.npy`` (column 0 is the
  telemetry value; the others are command flags, not used) and ``telemanom/labeled_anomalies.csv``
  (the labelled ranges, row indices, both ends included, become the windows — widened the NAB way,
  see below). The series carry no
  time: samples are given 60 s apart from 2020-01-01T00:00:00Z.
- ``ucr`` — UCR Time Series Anomaly Archive files (Keogh et al., KDD Cup 2021):
  ``ucr/<n>_UCR_Anomaly_<name>_<train>_<begin>_<end>.txt``, one value a line; the range
  ``begin..end`` (1-based, both included) is the window. Samples 60 s apart as above.

Labels become windows the NAB way: a label narrower than 10 % of its file divided by the file's number
of labels is widened to that, centred on it; overlapping windows are merged.

The data directory is ``data_dir``, else ``$ENMEI_DATA_DIR``, else the first of ``../data`` and
``../../data`` from the repository root or ``/work/data`` that exists. A corpus whose files are absent
raises ``FileNotFoundError`` naming the path it looked at.
"""

from __future__ import annotations

import ast
import csv
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from enmei.bench.nab import default_nab_dir
from enmei.detect.nab_score import NabSeries, load_corpus

__all__ = ["CORPORA", "default_data_dir", "load"]

_T0 = datetime(2020, 1, 1, tzinfo=UTC)
_STEP = timedelta(seconds=60)
_UCR_NAME = re.compile(r"^\d+_UCR_Anomaly_(?P<name>.+)_(?P<train>\d+)_(?P<begin>\d+)_(?P<end>\d+)\.txt$")


def default_data_dir() -> Path:
    """Where the development corpora are (see the module docstring)."""
    env = os.environ.get("ENMEI_DATA_DIR")
    if env:
        return Path(env)
    candidates: list[Path] = []
    for parent in Path(__file__).resolve().parents:
        if (parent / "pyproject.toml").exists():
            candidates += [parent / ".." / "data", parent / ".." / ".." / "data"]
            break
    candidates.append(Path("/work/data"))
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    return candidates[-1]


def _stamps(n: int) -> tuple[datetime, ...]:
    return tuple(_T0 + i * _STEP for i in range(n))


def _windows(ranges: list[tuple[int, int]], n: int) -> tuple[tuple[int, int], ...]:
    # NAB's way: each label is a window of at least 10 % of the file divided among its anomalies,
    # centred on the label (a narrower label is widened, a wider one kept).
    width = int(0.1 * n / max(1, len(ranges)))
    wide = []
    for a, b in ranges:
        grow = max(0, width - (b - a + 1))
        wide.append((a - grow // 2, b + grow - grow // 2))
    out = sorted((max(0, a), min(n - 1, b)) for a, b in wide if a <= b and a < n and b >= 0)
    merged: list[tuple[int, int]] = []
    for a, b in out:  # overlapping labels become one window (NAB's windows never overlap)
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return tuple(merged)


def load_telemanom(root: Path, spacecraft: str) -> list[NabSeries]:
    """The ``SMAP`` or ``MSL`` channels of the telemanom release under ``root`` (sorted by channel)."""
    labels = root / "labeled_anomalies.csv"
    if not labels.exists():
        raise FileNotFoundError(f"no telemanom labels at {labels}")
    out: list[NabSeries] = []
    ranges: dict[str, list[tuple[int, int]]] = {}
    with labels.open(newline="") as fh:
        for r in csv.DictReader(fh):
            if r["spacecraft"] == spacecraft:
                # (A channel may be listed twice — SMAP's P-2 is: its labels are united.)
                ranges.setdefault(r["chan_id"], []).extend(
                    (int(a), int(b)) for a, b in ast.literal_eval(r["anomaly_sequences"]))
    for chan in sorted(ranges):
        values = np.load(root / "test" / f"{chan}.npy")[:, 0].astype(np.float64)
        out.append(NabSeries(f"{spacecraft.lower()}/{chan}", _stamps(len(values)), values,
                             _windows(ranges[chan], len(values))))
    return out


def load_ucr(root: Path) -> list[NabSeries]:
    """Every UCR anomaly-archive file under ``root`` (sorted by name)."""
    files = sorted(p for p in root.glob("*.txt") if _UCR_NAME.match(p.name))
    if not files:
        raise FileNotFoundError(f"no UCR anomaly files (*_UCR_Anomaly_*.txt) in {root}")
    out: list[NabSeries] = []
    for path in files:
        m = _UCR_NAME.match(path.name)
        assert m is not None
        values = np.array([float(v) for v in path.read_text().split()], dtype=np.float64)
        begin, end = int(m["begin"]) - 1, int(m["end"]) - 1
        out.append(NabSeries(f"ucr/{m['name']}", _stamps(len(values)), values, _windows([(begin, end)], len(values))))
    return out


CORPORA: dict[str, Callable[[Path], list[NabSeries]]] = {
    "nab": lambda _d: load_corpus(default_nab_dir()),
    "smap": lambda d: load_telemanom(d / "telemanom", "SMAP"),
    "msl": lambda d: load_telemanom(d / "telemanom", "MSL"),
    "ucr": lambda d: load_ucr(d / "ucr"),
}


def load(name: str, data_dir: Path | None = None) -> list[NabSeries]:
    """Corpus ``name`` (one of :data:`CORPORA`); ``KeyError`` naming the known ones if unknown."""
    try:
        loader = CORPORA[name]
    except KeyError:
        raise KeyError(f"no corpus {name!r} (known: {', '.join(CORPORA)})") from None
    return loader(Path(data_dir) if data_dir is not None else default_data_dir())
