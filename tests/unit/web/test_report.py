"""``enmei report``: a self-contained page from the journal alone, and its command."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from enmei.box import Journal, Reader, verify
from enmei.cli.report import parse_since, report
from enmei.report import build_report, write_report
from enmei.report.data import metric_points

from .rig import web_rig


@pytest.fixture
async def journal(tmp_path: Path) -> Path:
    async with web_rig(tmp_path) as rig:
        await rig.advance(2.0)
        await rig.crash_and_recover("web")
        path = rig.journal.path
    return path


def figures(html: str) -> list[dict[str, object]]:
    import html as h

    return [json.loads(h.unescape(m)) for m in re.findall(r'data-fig="([^"]*)"', html)]


async def test_report_holds_incidents_charts_and_plotly(journal: Path) -> None:
    page = build_report(journal, time.time() - 3600, check=verify(journal))
    assert "<h1>enmei incident report</h1>" in page
    assert 'class="badge ok">verified</span>' in page
    assert page.count("<script") == 2 and "plotly.js v" in page  # plotly inlined: no CDN, no network
    assert "src=" not in page.split("<script>")[1][:20]
    incidents = page.split('<table id="incidents">')[1].split("</table>")[0]
    assert "exited: exit code 3" in incidents and "<b>restart</b>" in incidents and "succeeded" in incidents
    assert "<h2>Unit web</h2>" in page and "<h2>Unit batch</h2>" in page
    figs = figures(page)
    titles = [f["layout"]["title"]["text"] for f in figs]  # type: ignore[index]
    assert "proc.rss_bytes" in titles
    rss = figs[titles.index("proc.rss_bytes")]
    assert rss["data"][0]["y"]  # type: ignore[index]
    assert any(s["line"]["color"] == "#2e7d32" for s in rss["layout"]["shapes"])  # type: ignore[index]


async def test_an_empty_window_says_so(journal: Path) -> None:
    page = build_report(journal, time.time() + 10, time.time() + 20)
    assert "No incidents in this window." in page and 'class="badge">not checked</span>' in page


def test_charts_fall_back_to_summary_records(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        for mean in (1.0, 2.0, 3.0):
            j.append("samples", "web", {"period_s": 60, "metrics": {"proc.rss_bytes": {"mean": mean, "n": 60}}})
        j.flush(5)
    with Reader(path) as r:
        assert [v for _, v in metric_points(r, "web", "proc.rss_bytes", 0, time.time() + 1)] == [1.0, 2.0, 3.0]
    page = build_report(path, 0)
    (fig,) = figures(page)
    assert fig["data"][0]["y"] == [1.0, 2.0, 3.0]  # type: ignore[index]


def test_write_report_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    out.write_text("old")
    write_report(out, "<html>new</html>")
    assert out.read_text() == "<html>new</html>" and [p.name for p in tmp_path.iterdir()] == ["r.html"]


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(report)
    return app


async def test_the_command_writes_the_report(journal: Path, tmp_path: Path) -> None:
    out = tmp_path / "incidents.html"
    res = CliRunner().invoke(_app(), ["--since", "1h", "--html", str(out), "-j", str(journal)])
    assert res.exit_code == 0, res.output
    assert f"report: {out}" in res.output and "exited: exit code 3" in out.read_text()


def test_the_command_refuses_bad_times_and_missing_journals(tmp_path: Path) -> None:
    res = CliRunner().invoke(_app(), ["--since", "yesterday-ish", "--html", str(tmp_path / "x.html"),
                                      "-j", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 2 and "use 90s, 30m, 1h" in res.output
    res = CliRunner().invoke(_app(), ["--html", str(tmp_path / "x.html"), "-j", str(tmp_path / "none.sqlite")])
    assert res.exit_code == 5 and "no journal here" in res.output
    assert not (tmp_path / "x.html").exists()


def test_a_broken_chain_is_reported_and_exits_4(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        for i in range(3):
            j.append("verdict", "web", {"kind": "anomaly", "summary": f"v{i}"})
        j.flush(5)
    conn = sqlite3.connect(path)
    conn.execute("UPDATE records SET body = ? WHERE seq = 2", ('{"kind":"anomaly","summary":"forged"}',))
    conn.commit()
    conn.close()
    out = tmp_path / "r.html"
    res = CliRunner().invoke(_app(), ["--since", "all", "--html", str(out), "-j", str(path)])
    assert res.exit_code == 4 and "broken at record 2" in res.output
    assert "BROKEN</span> at record 2" in out.read_text()


def test_parse_since() -> None:
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("2d", now=200_000.0) == 200_000.0 - 172_800
    assert parse_since("2025-01-31T08:00") > 1.7e9
    with pytest.raises(ValueError, match="is not a time"):
        parse_since("-1h")


def test_long_windows_are_reduced_in_sqlite_keeping_spikes(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    t0 = float(int(time.time()) - 20_000)  # recent: older samples are pruned past their retention
    with Journal(path) as j:
        rows = [("web", "http.latency_s", t0 + i, 0.01) for i in range(10_000)]
        rows[6_543] = ("web", "http.latency_s", t0 + 6_543, 2.5)
        j.add_samples(rows)
        j.append("supervisor", None, {"event": "started"})
        j.flush(5)
    with Reader(path) as r:
        pts = metric_points(r, "web", "http.latency_s", t0 - 5_000, t0 + 15_000, max_points=400)
        assert len(pts) <= 400 and max(v for _, v in pts) == 2.5
        assert [w for w, _ in pts] == sorted(w for w, _ in pts)
        raw = metric_points(r, "web", "http.latency_s", t0, t0 + 99.5, max_points=400)
        assert len(raw) == 100 and raw[0] == (t0, 0.01)


def test_an_update_shows_as_one_incident_with_its_phases(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        d = j.append("decision", "vm", {"action": "shadow_update", "rule": "manual", "policy": "operator:ctl",
                                        "cause_seq": None, "reason": "requested by operator"})
        j.append("remedy.start", "vm", {"action": "shadow_update", "remedy_id": "vm-1", "decision_seq": d})
        for step, took in (("clone", 0.6), ("boot", 9.8), ("snapshot", 1.2)):
            j.append("remedy.step", "vm", {"action": "shadow_update", "remedy_id": "vm-1", "step": step,
                                           "took_s": took})
        j.append("remedy.step", "vm", {"action": "shadow_update", "remedy_id": "vm-1", "step": "swap",
                                       "took_s": 0.4, "downtime_s": 0.302})
        j.append("remedy.step", "vm", {"action": "shadow_update", "remedy_id": "vm-1", "step": "verify",
                                       "took_s": 3.1, "ok": False, "why": "did not answer /version"})
        j.append("remedy.step", "vm", {"action": "shadow_update", "remedy_id": "vm-1", "step": "rollback",
                                       "took_s": 2.5, "after": "swap", "why": "did not answer /version"})
        j.append("remedy.outcome", "vm", {"action": "shadow_update", "remedy_id": "vm-1", "decision_seq": d,
                                          "state": "failed", "duration_s": 18.0, "detail": "rolled back"})
        j.flush(5)
    page = build_report(path, 0)
    incidents = page.split('<table id="incidents">')[1].split("</table>")[0]
    assert incidents.count("<tr>") == 2  # the header and one incident
    phases = incidents.split('<div class="phases">')[1].split("</div>")[0]
    assert [re.sub(r"<[^>]+>", "", p).strip() for p in phases.split(" → ")] == [
        "clone 0.60 s", "boot 9.80 s", "snapshot 1.20 s", "swap 0.40 s (down 0.302 s)", "verify 3.10 s",
        "rollback 2.50 s"]
    assert phases.count('class="phase bad"') == 2 and "did not answer /version" in phases
