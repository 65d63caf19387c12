"""Read what the pages and the report show from a journal: incidents, markers, samples, limits, figures.

Every function takes an open :class:`enmei.box.Reader` (read-only: it runs while ``enmei up`` writes)
and blocks on SQLite, so the web layer calls them off the event loop. Samples come from the journal's
``samples`` table; where that has been pruned past its retention, from the chained ``samples`` summary
records (one mean per period), so an old window still has a chart.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from enmei.box.readers import AnyReader
from enmei.report.charts import Limits, Marker, limits_from_evidence, metric_figure
from enmei.report.incidents import CHAIN_KINDS, Incident, Rec, build_incidents

__all__ = [
    "LimitsFn",
    "fetcher",
    "incidents_between",
    "latest_limits",
    "markers",
    "metric_points",
    "records_between",
    "unit_figures",
    "units_between",
]

#: Live control limits for (unit, probe), if a running detector knows them (the dashboard's hook).
LimitsFn = Callable[[str, str], Limits | None]


def records_between(reader: AnyReader, since: float, until: float | None = None, *, kinds: Sequence[str] | None = None,
                    unit: str | None = None, limit: int = 100_000) -> list[Rec]:
    """Records with ``since <= wall <= until`` (seq order), decoded; at most ``limit`` (the oldest)."""
    out: list[Rec] = []
    for r in reader.records(unit=unit, kinds=list(kinds) if kinds else None, since_wall=since, limit=limit):
        if until is not None and r.wall > until:
            break
        out.append(Rec.of(r))
    return out


def units_between(reader: AnyReader, since: float, until: float) -> list[str]:
    """The units with records or samples in the window, sorted."""
    return reader.units_between(since, until)


def fetcher(reader: AnyReader) -> Callable[[int], Rec | None]:
    """Look one record up by seq (for links that point before a window)."""
    def fetch(seq: int) -> Rec | None:
        r = reader.get(seq)
        return Rec.of(r) if r is not None else None
    return fetch


def incidents_between(reader: AnyReader, since: float, until: float | None = None, *,
                      unit: str | None = None) -> list[Incident]:
    """The incidents whose records fall in the window (oldest first); causes before it are looked up."""
    recs = records_between(reader, since, until, kinds=CHAIN_KINDS, unit=unit)
    return build_incidents(recs, fetch=fetcher(reader))


def markers(records: Iterable[Rec]) -> dict[str, list[Marker]]:
    """Chart markers per unit: a cross per verdict, a line per remedy (coloured by how it ended)."""
    out: dict[str, list[Marker]] = {}
    starts: dict[str, Rec] = {}
    ends: dict[str, str] = {}
    for r in records:
        b = r.body
        if r.kind == "verdict":
            raw = b.get("evidence")
            ev: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
            probe = str(ev.get("probe") or "")
            metric = f"{probe}.{ev['metric']}" if probe and ev.get("metric") else ""
            value = ev.get("value")
            out.setdefault(r.unit, []).append(Marker(
                r.wall, f"{b.get('kind')}: {b.get('summary', '')}", "verdict", str(b.get("severity", "")),
                float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None,
                probe, metric))
        elif r.kind == "remedy.start" and isinstance(b.get("remedy_id"), str):
            starts[b["remedy_id"]] = r
        elif r.kind == "remedy.outcome" and isinstance(b.get("remedy_id"), str):
            ends[b["remedy_id"]] = str(b.get("state", ""))
    for rid, r in starts.items():
        state = ends.get(rid, "running")
        out.setdefault(r.unit, []).append(Marker(r.wall, f"{r.body.get('action')} ({state})", "remedy", state))
    for ms in out.values():
        ms.sort(key=lambda m: m.wall)
    return out


def metric_points(reader: AnyReader, unit: str, metric: str, since: float, until: float,
                  max_points: int = 4000) -> list[tuple[float, float]]:
    """(wall, value) of one metric in the window: raw samples, else the summary records' means.

    More than ``max_points`` samples are reduced in SQLite to the minimum and maximum of
    ``max_points / 2`` equal time buckets (each drawn at its bucket's mean time), so a long window costs
    a bounded answer and keeps its spikes.
    """
    n = reader.sample_count(unit, metric, since, until)
    if n and n <= max_points:
        return reader.samples_between(unit, metric, since, until)
    if n:
        step = max((until - since) / max(1, max_points // 2), 1e-6)
        out: list[tuple[float, float]] = []
        for w, lo, hi in reader.sample_buckets(unit, metric, since, until, step):
            out.append((w, lo))
            if hi != lo:
                out.append((w, hi))
        return out
    pts: list[tuple[float, float]] = []
    for r in records_between(reader, since, until, kinds=["samples"], unit=unit):
        m = r.body.get("metrics")
        stat = m.get(metric) if isinstance(m, Mapping) else None
        mean = stat.get("mean") if isinstance(stat, Mapping) else None
        if isinstance(mean, (int, float)) and math.isfinite(mean):
            pts.append((r.wall, float(mean)))
    return pts


def _summary_metrics(reader: AnyReader, unit: str, since: float, until: float) -> set[str]:
    names: set[str] = set()
    for r in records_between(reader, since, until, kinds=["samples"], unit=unit, limit=2000):
        m = r.body.get("metrics")
        if isinstance(m, Mapping):
            names.update(str(k) for k in m)
    return names


def latest_limits(reader: AnyReader, unit: str, probe: str, until: float | None = None,
                  look_back: int = 500) -> Limits | None:
    """The limits in the newest ANOMALY verdict about ``probe`` (among the unit's last ``look_back``)."""
    for r in reversed(reader.tail(look_back, unit=unit, kinds=["verdict"])):
        if until is not None and r.wall > until:
            continue
        rec = Rec.of(r)
        ev = rec.body.get("evidence")
        if (rec.body.get("kind") == "anomaly" and isinstance(ev, Mapping)
                and ev.get("probe", ev.get("component")) == probe):
            lim = limits_from_evidence(ev, f"verdict #{rec.seq}")
            if lim is not None:
                return lim
    return None


def _order(metric: str) -> tuple[int, str]:
    return (0 if metric.endswith("latency_s") else 1 if metric.endswith(".ok") else 2, metric)


def unit_figures(reader: AnyReader, unit: str, since: float, until: float, *, live_limits: LimitsFn | None = None,
                 only: Sequence[str] | None = None, height: int = 240, max_points: int = 2000,
                 chain: Sequence[Rec] | None = None) -> dict[str, dict[str, Any]]:
    """One figure per metric of ``unit`` (latency first), with its verdicts, remedies and limits.

    Limits are drawn on latency charts: the live detector's (``live_limits``) when it has learned them,
    else those of the newest ANOMALY verdict about that probe. ``chain`` may pass the unit's verdict and
    remedy records of the window when the caller has them already.
    """
    names = set(reader.metrics(unit)) | _summary_metrics(reader, unit, since, until)
    if only:
        names &= set(only)
    recs = chain if chain is not None else records_between(
        reader, since, until, kinds=["verdict", "remedy.start", "remedy.outcome"], unit=unit)
    marks = markers(recs).get(unit, [])
    out: dict[str, dict[str, Any]] = {}
    for metric in sorted(names, key=_order):
        limits = None
        if metric.endswith("latency_s"):
            probe = metric.split(".", 1)[0]
            limits = live_limits(unit, probe) if live_limits is not None else None
            if limits is None:
                limits = latest_limits(reader, unit, probe, until)
        points = metric_points(reader, unit, metric, since, until)
        out[metric] = metric_figure(metric, points, since=since, until=until, limits=limits, markers=marks,
                                    height=height, max_points=max_points)
    return out
