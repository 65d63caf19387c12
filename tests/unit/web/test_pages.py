"""The dashboard's pages and fragments render what the engine and the journal hold."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from .rig import WebRig, web_rig


@pytest.fixture
async def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with web_rig(tmp_path) as r:
        yield r


async def test_overview_lists_units_with_state_health_and_verdicts(rig: WebRig) -> None:
    await rig.crash_and_recover("web")
    r = await rig.client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert '<tr data-unit="web">' in html and '<tr data-unit="batch">' in html
    assert 'data-live="/fragments/units"' in html
    row = html.split('<tr data-unit="web">')[1].split("</tr>")[0]
    assert 'class="badge running"' in row and "restart ×1" in row and "start ×1" in row
    assert "Incidents in the last hour" in html and 'data-kind="exited"' in html
    assert '<script src="/static/enmei.js' in html and "<script>" not in html  # no inline scripts (CSP)


async def test_unit_page_has_actions_charts_logs_and_incidents(rig: WebRig) -> None:
    r = await rig.client.get("/units/web")
    assert r.status_code == 200
    html = r.text
    buttons = re.findall(r'data-action="([a-z_]+)"', html)
    assert buttons[:4] == ["restart", "rejuvenate", "stop", "start"] and "escalate" not in buttons
    assert 'data-charts-url="/api/units/web/charts"' in html
    assert '<script src="/vendor/plotly.min.js"></script>' in html
    assert "<h3>stdout" in html and "<h3>stderr" in html
    assert "Snapshots" not in html  # the process backend has none
    assert "autostart" in html  # its first incident


async def test_fragments(rig: WebRig) -> None:
    r = await rig.client.get("/fragments/units", params={"after": rig.journal.last_seq})
    assert r.status_code == 200 and "<html" not in r.text and '<table id="units"' in r.text
    r = await rig.client.get("/fragments/units/web")
    assert r.status_code == 200 and 'id="actions"' in r.text
    r = await rig.client.get("/fragments/incidents", params={"window": "24h", "unit": "web"})
    assert r.status_code == 200 and 'data-unit="web"' in r.text and 'data-unit="batch"' not in r.text
    assert (await rig.client.get("/fragments/units", params={"after": -1})).status_code == 422


async def test_timeline_filters(rig: WebRig) -> None:
    await rig.crash_and_recover("web")
    r = await rig.client.get("/timeline")
    assert r.status_code == 200
    assert r.text.count('class="incident ') == 3  # two autostarts and the exit
    r = await rig.client.get("/timeline", params={"kind": "exited"})
    assert r.text.count('class="incident ') == 1 and '<option value="exited" selected>' in r.text
    assert "observed" in r.text and "decided" in r.text and "outcome" in r.text and "exited: exit code 3" in r.text
    r = await rig.client.get("/timeline", params={"state": "failed"})
    assert r.text.count('class="incident ') == 0 and "No incidents." in r.text
    # the filter form sends every field, "" meaning any
    r = await rig.client.get("/timeline", params={"window": "1h", "unit": "", "kind": "", "action": "", "state": ""})
    assert r.status_code == 200 and r.text.count('class="incident ') == 3
    r = await rig.client.get("/fragments/incidents", params={"unit": "", "kind": "exited", "action": "", "state": ""})
    assert r.status_code == 200 and r.text.count('class="incident ') == 1
    r = await rig.client.get("/timeline", params={"window": "3 fortnights"})
    assert r.status_code == 422 and "'window'" in r.json()["detail"]
    r = await rig.client.get("/timeline", params={"unit": "../etc"})
    assert r.status_code == 422


async def test_journal_policy_and_api_pages(rig: WebRig) -> None:
    r = await rig.client.get("/journal")
    assert r.status_code == 200 and str(rig.journal.path) in r.text and 'id="verify-now"' in r.text
    r = await rig.client.get("/journal", params={"kind": "unit.state"})
    kinds = re.findall(r"<td>(unit\.[a-z]+|decision|supervisor)</td>", r.text)
    assert kinds and set(kinds) == {"unit.state"}
    assert (await rig.client.get("/journal", params={"kind": "x; drop"})).status_code == 422
    r = await rig.client.get("/policy")
    assert r.status_code == 200 and rig.engine.policy.version in r.text
    r = await rig.client.get("/api")
    assert r.status_code == 200 and "/api/units/{name}/actions/{action}" in r.text and "<b>token</b>" in r.text


async def test_a_page_for_an_unknown_unit_is_404(rig: WebRig) -> None:
    assert (await rig.client.get("/units/ghost")).status_code == 404


async def test_a_verdict_is_shown_as_judged_and_its_limits_reach_the_charts(rig: WebRig) -> None:
    from enmei.model import Severity, Verdict, VerdictKind
    from enmei.report.data import latest_limits

    rig.engine.emit_verdict(Verdict("web", "charts:latency_s", VerdictKind.ANOMALY, Severity.WARNING,
                                    rig.clock.monotonic(), "latency_s of http out of control",
                                    {"probe": "http", "component": "http", "metric": "latency_s", "value": 0.2,
                                     "centre": 0.01, "lower": 0.004, "upper": 0.03}))
    await rig.settle()
    r = await rig.client.get("/timeline", params={"kind": "anomaly"})
    assert "judged" in r.text and "latency_s of http out of control" in r.text and "by charts:latency_s" in r.text
    with rig.ctx.reader() as reader:
        lim = latest_limits(reader, "web", "http")
        assert lim is not None and (lim.centre, lim.lower, lim.upper) == (0.01, 0.004, 0.03)
        assert lim.source.startswith("verdict #")
        assert latest_limits(reader, "web", "proc") is None


async def test_an_update_is_one_incident_on_the_timeline_with_its_phases(rig: WebRig) -> None:
    e = rig.engine
    d = e.record("decision", "web", {"action": "shadow_update", "rule": "manual", "policy": "operator:web",
                                     "cause_seq": None, "reason": "requested by operator"})
    e.record("remedy.start", "web", {"action": "shadow_update", "remedy_id": "web-u", "decision_seq": d})
    for step, took in (("clone", 0.6), ("boot", 9.8), ("snapshot", 1.2), ("swap", 0.4), ("verify", 3.1)):
        e.record("remedy.step", "web", {"action": "shadow_update", "remedy_id": "web-u", "step": step,
                                        "took_s": took, **({"downtime_s": 0.302} if step == "swap" else {})})
    e.record("remedy.outcome", "web", {"action": "shadow_update", "remedy_id": "web-u", "decision_seq": d,
                                       "state": "succeeded", "duration_s": 15.3})
    await rig.settle()
    r = await rig.client.get("/timeline", params={"action": "shadow_update"})
    assert r.status_code == 200 and r.text.count('class="incident ') == 1
    phases = r.text.split('<div class="link phases">')[1].split("</div>")[0]
    shown = re.sub(r"<[^>]+>", "", phases.split('<span class="step">phases</span>')[1])
    assert [" ".join(p.split()) for p in shown.split("→")] == [
        "clone 0.60 s", "boot 9.80 s", "snapshot 1.20 s", "swap 0.40 s (down 0.302 s)", "verify 3.10 s"]
    api = (await rig.client.get("/api/incidents", params={"action": "shadow_update"},
                                headers=rig.auth)).json()
    (inc,) = api
    assert [p["step"] for p in inc["steps"][0]["phases"]] == ["clone", "boot", "snapshot", "swap", "verify"]
