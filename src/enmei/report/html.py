"""``enmei report``: a self-contained HTML incident report, made from the journal alone.

:func:`build_report` reads the journal (read-only; a running supervisor may keep writing it) and
returns one HTML page holding everything: the journal's integrity, a summary, every incident of the
window as its chain (observed -> judged -> decided -> repaired), and per unit the charts of its metrics
with detections, remedies and control limits, drawn by plotly.js inlined into the page (no CDN, no
network, opens from a file). :func:`write_report` writes it with write-temp-then-rename, so a reader
never sees half a report.

Failure: ``BoxError`` when there is no journal or it cannot be read; ``FileNotFoundError`` when the
plotly package lacks its ``plotly.min.js``; ``OSError`` when the file cannot be written (nothing is left
behind but the unwritten temp file's removal).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import jinja2

from enmei.box import Reader, VerifyResult
from enmei.report.charts import plotly_js_path, when
from enmei.report.data import fetcher, markers, records_between, unit_figures, units_between
from enmei.report.incidents import CHAIN_KINDS, Incident, build_incidents

__all__ = ["Summary", "build_report", "summarise", "write_report"]

_env = jinja2.Environment(loader=jinja2.PackageLoader("enmei.report", "templates"), autoescape=True,
                          undefined=jinja2.StrictUndefined)
_env.filters["when"] = lambda w: when(float(w))[:-4]


@dataclass(frozen=True)
class Summary:
    """Counts over a window: incidents by kind and by final state, remedies by action and by state."""

    incidents: int
    by_kind: dict[str, int]
    by_state: dict[str, int]
    remedies: dict[str, int]  # "action state" -> count
    mean_remedy_s: float | None
    max_remedy_s: float | None


def summarise(incidents: list[Incident]) -> Summary:
    by_kind = Counter(i.kind for i in incidents)
    by_state = Counter(i.state for i in incidents)
    remedies: Counter[str] = Counter()
    durations: list[float] = []
    for inc in incidents:
        for s in inc.steps:
            if s.start is not None or s.outcome is not None:
                remedies[f"{s.action} {s.state}"] += 1
            if s.duration_s is not None:
                durations.append(s.duration_s)
    return Summary(len(incidents), dict(by_kind.most_common()), dict(by_state.most_common()),
                   dict(sorted(remedies.items())), sum(durations) / len(durations) if durations else None,
                   max(durations) if durations else None)


def build_report(journal: Path, since: float, until: float | None = None, *, check: VerifyResult | None = None,
                 max_points: int = 1500) -> str:
    """The report page for ``since <= wall <= until`` (until: now). Raises ``BoxError`` (see module).

    ``check`` is the journal's verification to show (``enmei.box.verify(journal)``); None shows "not
    checked".
    """
    until = time.time() if until is None else until
    # The Reader raises BoxError ("cannot read the journal") on a damaged file: no SQLite error escapes.
    with Reader(journal) as reader:
        recs = records_between(reader, since, until, kinds=CHAIN_KINDS)
        incidents = build_incidents(recs, fetch=fetcher(reader))
        units = units_between(reader, since, until)
        chain = [r for r in recs if r.kind in ("verdict", "remedy.start", "remedy.outcome")]
        marks = markers(chain)
        figures = {u: unit_figures(reader, u, since, until, chain=[r for r in chain if r.unit == u],
                                   height=260, max_points=max_points) for u in units}
        count, last_seq = reader.count(), reader.last_seq()
    return _env.get_template("report.html").render(
        journal=str(journal), since=since, until=until, generated=time.time(), count=count, last_seq=last_seq,
        verify=check, incidents=list(reversed(incidents)), summary=summarise(incidents), units=units,
        figures=figures, detections={u: sum(1 for m in ms if m.kind == "verdict") for u, ms in marks.items()},
        plotly_js=_inline_js(plotly_js_path().read_text(encoding="utf-8")))


def _inline_js(js: str) -> str:
    # A "</script" inside the inlined source would end the element early.
    return js.replace("</script", "<\\/script")


def write_report(path: Path, html: str) -> None:
    """Write ``html`` to ``path`` atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
