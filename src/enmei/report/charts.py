"""Plotly figures of one metric of one unit, with detections, remedies and control-chart limits on them.

The figures are plain dicts (``{"data": [...], "layout": {...}}``) that plotly.js draws as they are
(``Plotly.react(div, fig.data, fig.layout)``): the dashboard fetches them as JSON, the report inlines
them. Nothing here does I/O. plotly.js itself comes from the ``plotly`` wheel (:func:`plotly_js_path`):
no CDN, no network.

On a chart:

* the samples, as a line;
* control limits (:class:`Limits`): the centre line dashed, the lower and upper limits dotted red, drawn
  across the whole window (latency charts use a log axis, as the detectors judge log latencies);
* detections (verdicts) as red crosses on the line, at the verdict's own value when it is about this
  metric, else at the sample nearest in time;
* remedies as vertical lines with the action on top, green when they succeeded, red when they failed or
  timed out, amber while running.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["Limits", "Marker", "downsample", "limits_from_evidence", "metric_figure", "plotly_js_path", "when"]

_STATE_COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "timed_out": "#c62828", "cancelled": "#757575",
                  "running": "#ef8f00"}


@dataclass(frozen=True)
class Limits:
    """A control chart's centre line and single-value limits, in the metric's own unit."""

    centre: float
    lower: float
    upper: float
    source: str  # where they come from: "live detector", "verdict #123"

    def as_dict(self) -> dict[str, Any]:
        return {"centre": self.centre, "lower": self.lower, "upper": self.upper, "source": self.source}


@dataclass(frozen=True)
class Marker:
    """A detection or a remedy at wall time ``wall``; ``value`` is where on the metric, if known."""

    wall: float
    label: str
    kind: str  # "verdict" | "remedy"
    state: str = ""  # a remedy's state, a verdict's severity
    value: float | None = None
    probe: str = ""  # the probe a verdict is about ("" = any)
    metric: str = ""  # the metric ``value`` is a value of ("" = none)


def plotly_js_path() -> Path:
    """The ``plotly.min.js`` shipped inside the ``plotly`` wheel. Raises ``FileNotFoundError`` if absent."""
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: plotly.min.js is not in the installed plotly package")
    return path


def when(wall: float) -> str:
    """A wall time as plotly reads dates: local time, millisecond precision."""
    return datetime.fromtimestamp(wall).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def downsample(points: Sequence[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    """At most about ``max_points`` points: the minimum and maximum of each bucket, so spikes stay visible."""
    n = len(points)
    if n <= max_points or max_points < 4:
        return list(points)
    buckets = max_points // 2
    out: list[tuple[float, float]] = []
    for i in range(buckets):
        chunk = points[i * n // buckets:(i + 1) * n // buckets]
        if not chunk:
            continue
        lo = min(chunk, key=lambda p: p[1])
        hi = max(chunk, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    return out


def _nearest(walls: Sequence[float], values: Sequence[float], t: float) -> float | None:
    if not walls:
        return None
    i = bisect.bisect_left(walls, t)
    candidates = [j for j in (i - 1, i) if 0 <= j < len(walls)]
    return values[min(candidates, key=lambda j: abs(walls[j] - t))]


def metric_figure(metric: str, points: Sequence[tuple[float, float]], *, since: float, until: float,
                  limits: Limits | None = None, markers: Sequence[Marker] = (), height: int = 240,
                  max_points: int = 2000) -> dict[str, Any]:
    """The figure of ``metric`` over ``[since, until]`` (wall seconds; the axis starts at the first
    sample or marker when that is later). See the module docstring."""
    pts = downsample([p for p in points if math.isfinite(p[1])], max_points)
    walls = [p[0] for p in pts]
    values = [p[1] for p in pts]
    # A window longer than what there is to show starts where the data does (a unit up for a minute
    # is not drawn as a sliver at the right edge of a day).
    known = [w for w in walls if since <= w <= until] + [m.wall for m in markers if since <= m.wall <= until]
    if known:
        first = min(known)
        since = max(since, first - max(1.0, 0.03 * (until - first)))
    probe = metric.split(".", 1)[0]
    log_axis = metric.endswith("latency_s")
    data: list[dict[str, Any]] = [{
        "type": "scatter", "mode": "lines", "name": metric, "x": [when(w) for w in walls], "y": values,
        "line": {"color": "#1f5fa8", "width": 1.5}, "hovertemplate": "%{x}<br>%{y:.4g}<extra></extra>",
    }]
    if limits is not None:
        xs = [when(since), when(until)]
        data.append({"type": "scatter", "mode": "lines", "name": "centre", "x": xs,
                     "y": [limits.centre, limits.centre], "line": {"color": "#555", "dash": "dash", "width": 1},
                     "hovertemplate": f"centre %{{y:.4g}} ({limits.source})<extra></extra>"})
        for name, level in (("lower limit", limits.lower), ("upper limit", limits.upper)):
            if log_axis and level <= 0:
                continue
            data.append({"type": "scatter", "mode": "lines", "name": name, "x": xs, "y": [level, level],
                         "line": {"color": "#c62828", "dash": "dot", "width": 1},
                         "hovertemplate": f"{name} %{{y:.4g}} ({limits.source})<extra></extra>"})
    vx: list[str] = []
    vy: list[float] = []
    vt: list[str] = []
    shapes: list[dict[str, Any]] = []
    notes: list[dict[str, Any]] = []
    for m in markers:
        if not since <= m.wall <= until:
            continue
        if m.kind == "verdict":
            if m.probe and m.probe != probe:
                continue
            y: float | None = (m.value if m.metric == metric and m.value is not None and math.isfinite(m.value)
                               else _nearest(walls, values, m.wall))
            if y is None:
                continue
            vx.append(when(m.wall))
            vy.append(y)
            vt.append(m.label)
        else:
            colour = _STATE_COLOURS.get(m.state, "#ef8f00")
            shapes.append({"type": "line", "xref": "x", "yref": "paper", "x0": when(m.wall), "x1": when(m.wall),
                           "y0": 0, "y1": 1, "line": {"color": colour, "width": 1.5, "dash": "dashdot"}})
            notes.append({"x": when(m.wall), "y": 1, "xref": "x", "yref": "paper", "yanchor": "bottom",
                          "text": m.label, "showarrow": False, "font": {"size": 10, "color": colour}})
    if vx:
        data.append({"type": "scatter", "mode": "markers", "name": "detections", "x": vx, "y": vy, "text": vt,
                     "marker": {"symbol": "x", "size": 11, "color": "#c62828", "line": {"width": 1}},
                     "hovertemplate": "%{x}<br>%{text}<extra></extra>"})
    layout: dict[str, Any] = {
        "title": {"text": metric, "font": {"size": 13}, "x": 0.01, "xanchor": "left"},
        "height": height, "margin": {"l": 60, "r": 10, "t": 40, "b": 30},
        "xaxis": {"type": "date", "range": [when(since), when(until)]},
        "yaxis": {"type": "log" if log_axis else "linear", "title": {"text": "seconds" if log_axis else ""}},
        "showlegend": limits is not None or bool(vx), "legend": {"orientation": "h", "y": -0.25, "font": {"size": 10}},
        "shapes": shapes[-30:], "annotations": notes[-30:],
        "paper_bgcolor": "#fff", "plot_bgcolor": "#fafafa",
    }
    return {"data": data, "layout": layout}


def limits_from_evidence(evidence: Mapping[str, Any], source: str) -> Limits | None:
    """Limits from an ANOMALY verdict's evidence (``centre``, ``lower``, ``upper``), if it has them."""
    try:
        c, lo, hi = (float(evidence[k]) for k in ("centre", "lower", "upper"))
    except (KeyError, TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for v in (c, lo, hi)):
        return None
    return Limits(c, lo, hi, source)
