"""Figures: samples, control limits, detections on the line, remedies as coloured lines."""

from __future__ import annotations

import math

from enmei.report.charts import Limits, Marker, downsample, limits_from_evidence, metric_figure, plotly_js_path


def test_latency_figure_with_limits_detections_and_remedies() -> None:
    pts = [(100.0 + i, 0.01 + (0.5 if i == 50 else 0.0)) for i in range(100)]
    marks = [Marker(150.0, "anomaly: slow", "verdict", "warning", 0.51, "http", "http.latency_s"),
             Marker(160.0, "probe_failed", "verdict", "critical", None, "http"),
             Marker(170.0, "aging", "verdict", "warning", 9e9, "proc", "proc.rss_bytes"),  # another probe
             Marker(155.0, "restart (succeeded)", "remedy", "succeeded"),
             Marker(500.0, "outside the window", "remedy", "failed")]
    fig = metric_figure("http.latency_s", pts, since=100.0, until=200.0,
                        limits=Limits(0.01, 0.004, 0.03, "live detector"), markers=marks)
    names = [t["name"] for t in fig["data"]]
    assert names == ["http.latency_s", "centre", "lower limit", "upper limit", "detections"]
    assert fig["layout"]["yaxis"]["type"] == "log"
    det = fig["data"][-1]
    assert det["y"] == [0.51, 0.01]  # its own value, then the sample nearest in time
    assert len(fig["layout"]["shapes"]) == 1 and fig["layout"]["shapes"][0]["line"]["color"] == "#2e7d32"
    assert fig["data"][2]["y"] == [0.004, 0.004] and fig["data"][1]["x"][0].startswith("19")


def test_plain_metric_has_a_linear_axis_and_no_legend_without_extras() -> None:
    fig = metric_figure("proc.rss_bytes", [(1.0, 5.0), (2.0, math.nan), (3.0, 6.0)], since=0.0, until=4.0)
    assert fig["layout"]["yaxis"]["type"] == "linear" and fig["layout"]["showlegend"] is False
    assert fig["data"][0]["y"] == [5.0, 6.0]


def test_downsample_keeps_spikes_and_bounds_points() -> None:
    pts = [(float(i), 1.0) for i in range(10_000)]
    pts[7777] = (7777.0, 99.0)
    out = downsample(pts, 500)
    assert len(out) <= 500 and (7777.0, 99.0) in out
    assert [p[0] for p in out] == sorted(p[0] for p in out)
    assert downsample(pts[:10], 500) == pts[:10]


def test_limits_from_evidence() -> None:
    assert limits_from_evidence({"centre": 0.01, "lower": 0.005, "upper": 0.02}, "verdict #3") == Limits(
        0.01, 0.005, 0.02, "verdict #3")
    assert limits_from_evidence({"centre": 0.01}, "x") is None
    assert limits_from_evidence({"centre": "NaN", "lower": 1, "upper": 2}, "x") is None


def test_plotly_js_ships_with_the_plotly_wheel() -> None:
    path = plotly_js_path()
    assert path.name == "plotly.min.js" and path.stat().st_size > 1_000_000


def test_a_long_window_starts_where_the_data_does() -> None:
    from enmei.report.charts import when

    fig = metric_figure("m", [(950.0, 1.0), (1000.0, 2.0)], since=0.0, until=1000.0)
    assert fig["layout"]["xaxis"]["range"] == [when(948.5), when(1000.0)]
    empty = metric_figure("m", [], since=0.0, until=1000.0)
    assert empty["layout"]["xaxis"]["range"] == [when(0.0), when(1000.0)]
