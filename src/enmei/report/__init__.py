"""Reports from the journal alone: incidents as chains, charts with detections, a self-contained page.

``enmei report --since 1h --html FILE`` uses :func:`build_report`; the web dashboard uses the same
incident chains (:mod:`enmei.report.incidents`), data (:mod:`enmei.report.data`) and figures
(:mod:`enmei.report.charts`).
"""

from enmei.report.charts import Limits, Marker, metric_figure, plotly_js_path
from enmei.report.html import Summary, build_report, summarise, write_report
from enmei.report.incidents import CHAIN_KINDS, Incident, Rec, Step, build_incidents, filter_incidents

__all__ = [
    "CHAIN_KINDS",
    "Incident",
    "Limits",
    "Marker",
    "Rec",
    "Step",
    "Summary",
    "build_incidents",
    "build_report",
    "filter_incidents",
    "metric_figure",
    "plotly_js_path",
    "summarise",
    "write_report",
]
