"""Every HTTP endpoint over a real engine (fake backend, fake clock), through the ASGI transport."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enmei.errors import VisorError
from enmei.model import UnitState
from enmei.remedy import REMEDIES, Remedy, Result, UnitControl
from enmei.visor.base import Capability
from enmei.visor.fake import FakeBackend

from .rig import WebRig, web_rig


@pytest.fixture
async def rig(tmp_path: Path):  # type: ignore[no-untyped-def]
    async with web_rig(tmp_path) as r:
        yield r


# -- reading ---------------------------------------------------------------------------------------

async def test_units_list_and_one(rig: WebRig) -> None:
    r = await rig.client.get("/api/units")
    assert r.status_code == 200
    units = {u["name"]: u for u in r.json()}
    assert set(units) == {"web", "batch"}
    web = units["web"]
    assert web["state"] == "running" and web["backend"] == "process" and web["pid"] >= 100_000
    assert [a["name"] for a in web["actions"]][:4] == ["restart", "rejuvenate", "stop", "start"]
    assert "escalate" not in [a["name"] for a in web["actions"]]
    assert web["actions"][0]["arguments"] == {"delay_s": "int or float", "graceful": "bool"}
    r = await rig.client.get("/api/units/web")
    assert r.status_code == 200 and r.json()["name"] == "web" and r.json()["probes"] == ["proc"]


async def test_unknown_unit_is_404_and_a_bad_name_422(rig: WebRig) -> None:
    r = await rig.client.get("/api/units/nope")
    assert r.status_code == 404
    assert r.json()["detail"] == "no unit named 'nope' (units: batch, web)"
    for path in ("/units/nope", "/api/units/nope/charts", "/api/units/nope/logs", "/api/units/nope/snapshots"):
        assert (await rig.client.get(path)).status_code == 404, path
    r = await rig.client.get("/api/units/-bad")
    assert r.status_code == 422 and "path parameter 'name'" in r.json()["detail"]


async def test_charts_have_a_figure_per_metric(rig: WebRig) -> None:
    await rig.advance(3.0)
    await rig.journal.aflush(timeout_s=5)
    r = await rig.client.get("/api/units/web/charts", params={"window_s": 600})
    assert r.status_code == 200
    figs = r.json()["figures"]
    assert "proc.rss_bytes" in figs and "proc.ok" in figs
    rss = figs["proc.rss_bytes"]
    assert rss["data"][0]["y"] and rss["layout"]["xaxis"]["type"] == "date"
    r = await rig.client.get("/api/units/web/charts", params={"metric": "proc.ok"})
    assert list(r.json()["figures"]) == ["proc.ok"]


@pytest.mark.parametrize(("query", "says"), [
    ({"window_s": 0}, "query parameter 'window_s': Input should be greater than 0"),
    ({"window_s": "soon"}, "query parameter 'window_s': Input should be a valid number"),
    ({"window_s": 10**9}, "query parameter 'window_s': Input should be less than or equal to 2592000"),
])
async def test_bad_chart_parameters_are_422_with_a_sentence(rig: WebRig, query: dict[str, object], says: str) -> None:
    r = await rig.client.get("/api/units/web/charts", params=query)
    assert r.status_code == 422
    assert r.json()["detail"].startswith(says)
    assert r.json()["errors"]


async def test_logs_and_their_bad_parameters(rig: WebRig) -> None:
    path = rig.engine.units["web"].backend.log_path("web", "stderr")
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"request {i} took {i * 3} ms\n" for i in range(30)) + "started on 127.0.0.1:80\n")
    r = await rig.client.get("/api/units/web/logs", params={"stream": "stderr", "lines": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["lines"][-1] == "started on 127.0.0.1:80" and len(body["lines"]) == 5
    assert {"shape": "request <n> took <n> ms", "count": 4} in body["shapes"]
    assert (await rig.client.get("/api/units/web/logs", params={"stream": "console"})).json()["lines"] == []
    r = await rig.client.get("/api/units/web/logs", params={"stream": "syslog"})
    assert r.status_code == 422 and "query parameter 'stream'" in r.json()["detail"]
    assert (await rig.client.get("/api/units/web/logs", params={"lines": 0})).status_code == 422


async def test_snapshots_say_unsupported_for_processes(rig: WebRig) -> None:
    r = await rig.client.get("/api/units/web/snapshots")
    assert r.json() == {"supported": False, "tags": []}


# -- actions and the token -------------------------------------------------------------------------

async def test_an_action_needs_the_token(rig: WebRig) -> None:
    url = "/api/units/web/actions/restart"
    r = await rig.client.post(url)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert str(rig.token_path) in r.json()["detail"]
    r = await rig.client.post(url, headers={"Authorization": "Bearer not-the-token"})
    assert r.status_code == 403 and r.json()["detail"].startswith("wrong token")
    r = await rig.client.post(url, headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert r.status_code == 401
    # the token is checked before the body: no hints about parameters without it
    r = await rig.client.post(url, json={"args": {"delay_s": "x"}})
    assert r.status_code == 401
    assert not [k for _, k, _, _ in _decisions(rig)]


def _decisions(rig: WebRig) -> list[tuple[int, str, str, dict[str, object]]]:
    with rig.ctx.reader() as r:
        from enmei.report.incidents import Rec

        return [(x.seq, x.kind, x.unit, dict(x.body)) for x in map(Rec.of, r.records(kinds=["decision"]))
                if x.body.get("policy") == "operator:web"]


async def test_restart_from_the_api_is_journaled_and_done(rig: WebRig) -> None:
    old = rig.backend.identity("web")
    assert old is not None
    r = await rig.client.post("/api/units/web/actions/restart", headers=rig.auth, json={"args": {"delay_s": 0}})
    assert r.status_code == 202
    body = r.json()
    assert body["queued"] is True and body["action"] == "restart" and body["args"] == {"delay_s": 0}
    unit = rig.engine.units["web"]
    assert await rig.until(lambda: unit.state is UnitState.RUNNING and unit.remedy is None
                           and rig.backend.identity("web") != old)
    (seq, _, _, decision), = _decisions(rig)
    assert seq > body["after_seq"]
    assert decision["action"] == "restart" and decision["rule"] == "manual"
    r = await rig.client.get("/api/incidents", params={"kind": "manual", "action": "restart"})
    (inc,) = r.json()
    assert inc["state"] == "succeeded" and inc["steps"][0]["decision"]["seq"] == seq
    assert inc["steps"][0]["outcome"]["body"]["state"] == "succeeded"


async def test_reset_from_the_api_is_journaled_as_the_web_operators(rig: WebRig) -> None:
    r = await rig.client.post("/api/units/web/actions/reset", headers=rig.auth)
    assert r.status_code == 202 and r.json()["action"] == "reset"
    assert await rig.until(lambda: any(k == "unit.reset" for _, k, _, _ in rig.rig.records))
    (body,) = [b for _, k, u, b in rig.rig.records if k == "unit.reset" and u == "web"]
    assert body["by"] == "operator:web" and "restarts_in_window" in body["cleared"]
    r = await rig.client.post("/api/units/web/actions/reset", headers=rig.auth, json={"args": {"x": 1}})
    assert r.status_code == 422 and r.json()["detail"] == "reset takes no arguments"


async def test_an_action_without_a_body_is_fine(rig: WebRig) -> None:
    r = await rig.client.post("/api/units/batch/actions/stop", headers=rig.auth)
    assert r.status_code == 202
    unit = rig.engine.units["batch"]
    assert await rig.until(lambda: unit.state is UnitState.STOPPED)


@pytest.mark.parametrize(("action", "body", "says"), [
    ("fly", {}, "no action named 'fly' (unit web supports: restart, rejuvenate, stop, start"),
    ("restart", {"args": {"delay_s": "soon"}}, "remedy 'restart': argument 'delay_s' must be int or float, not str"),
    ("restart", {"args": {"delay_s": True}}, "remedy 'restart': argument 'delay_s' must be int or float, not a bool"),
    ("restart", {"args": {"force": 1}}, "remedy 'restart' takes no argument 'force' (allowed: delay_s, graceful)"),
    ("restart", {"args": "now"}, "body 'args': Input should be a valid dictionary"),
    ("Restart!", {}, "path parameter 'action': String should match pattern"),
])
async def test_bad_actions_are_422_and_queue_nothing(rig: WebRig, action: str, body: dict[str, object],
                                                     says: str) -> None:
    r = await rig.client.post(f"/api/units/web/actions/{action}", headers=rig.auth, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(says), r.json()["detail"]
    await rig.settle()
    assert _decisions(rig) == []


async def test_action_on_an_unknown_unit_is_404(rig: WebRig) -> None:
    r = await rig.client.post("/api/units/nope/actions/restart", headers=rig.auth)
    assert r.status_code == 404


# -- journal, incidents, records, policy -----------------------------------------------------------

async def test_journal_status_and_verify(rig: WebRig) -> None:
    r = await rig.client.get("/api/journal")
    assert r.status_code == 200
    j = r.json()
    assert j["status"] == "ok" and j["last_seq"] >= 1 and j["size_bytes"] > 0 and j["verify"] is None
    assert (await rig.client.post("/api/journal/verify")).status_code == 401
    assert (await rig.client.post("/api/journal/verify", headers={"Authorization": "Bearer x"})).status_code == 403
    r = await rig.client.post("/api/journal/verify", headers=rig.auth)
    assert r.status_code == 200
    v = r.json()["verify"]
    assert v["ok"] is True and v["records"] >= j["durable_seq"] and v["first_bad"] is None


async def test_incidents_filters_and_bad_filters(rig: WebRig) -> None:
    await rig.crash_and_recover("web")
    every = (await rig.client.get("/api/incidents")).json()
    kinds = {i["kind"] for i in every}
    assert {"exited", "autostart"} <= kinds
    exited = (await rig.client.get("/api/incidents", params={"kind": "exited"})).json()
    assert exited and all(i["kind"] == "exited" for i in exited)
    assert exited[0]["cause"]["body"]["code"] == 3 and exited[0]["steps"][0]["action"] == "restart"
    assert (await rig.client.get("/api/incidents", params={"unit": "batch", "kind": "exited"})).json() == []
    one = (await rig.client.get("/api/incidents", params={"limit": 1})).json()
    assert len(one) == 1 and one[0]["key"] == max(i["key"] for i in every)
    for bad in ({"limit": 0}, {"limit": 10_000}, {"kind": "DROP TABLE"}, {"window_s": -1}):
        r = await rig.client.get("/api/incidents", params=bad)
        assert r.status_code == 422, bad


async def test_records_tail_after_and_filtered(rig: WebRig) -> None:
    r = await rig.client.get("/api/records", params={"limit": 3})
    recs = r.json()
    assert len(recs) == 3 and recs[0]["seq"] < recs[-1]["seq"]
    r = await rig.client.get("/api/records", params={"since_seq": 0, "limit": 2})
    assert [x["seq"] for x in r.json()] == [1, 2] and r.json()[0]["kind"] == "supervisor"
    r = await rig.client.get("/api/records", params=[("kind", "unit.state"), ("unit", "web")])
    assert r.json() and all(x["kind"] == "unit.state" and x["unit"] == "web" for x in r.json())
    r = await rig.client.get("/api/records", params={"kind": "no such kind!"})
    assert r.status_code == 422 and "'kind'" in r.json()["detail"]
    assert (await rig.client.get("/api/records", params={"since_seq": -1})).status_code == 422


async def test_policy(rig: WebRig) -> None:
    r = await rig.client.get("/api/policy")
    p = r.json()
    assert p["version"] == rig.engine.policy.version and p["file"] is None
    assert p["replay"]["available"] in (True, False)
    assert (await rig.client.get("/api/policy", params={"limit": 0})).status_code == 422


# -- metrics, openapi, static ----------------------------------------------------------------------

async def test_metrics_read_the_engine_at_scrape_time(rig: WebRig) -> None:
    await rig.crash_and_recover("web")
    r = await rig.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(r.text)}
    state = {(s.labels["unit"], s.labels["state"]): s.value for s in fams["enmei_unit_state"].samples}
    assert state[("web", "running")] == 1.0 and state[("web", "exited")] == 0.0
    remedies = {(s.labels["unit"], s.labels["action"], s.labels["state"]): s.value
                for s in fams["enmei_remedies"].samples if s.name == "enmei_remedies_total"}
    assert remedies[("web", "restart", "succeeded")] == 1.0
    assert remedies[("web", "start", "succeeded")] == 1.0  # the autostart, counted live here
    hist = [s for s in fams["enmei_remedy_duration_seconds"].samples
            if s.name.endswith("_count") and s.labels["action"] == "restart"]
    assert hist[0].value == 1.0
    assert fams["enmei_journal_records"].samples[0].value >= 1
    assert fams["enmei_journal_writable"].samples[0].value == 1.0
    assert "enmei_journal_verify_ok" not in fams  # nothing verified yet
    await rig.ctx.verify()
    fams = {f.name: f for f in text_string_to_metric_families((await rig.client.get("/metrics")).text)}
    assert fams["enmei_journal_verify_ok"].samples[0].value == 1.0


async def test_metrics_leave_the_global_registry_alone(rig: WebRig) -> None:
    from prometheus_client import REGISTRY

    before = set(REGISTRY._names_to_collectors)
    await rig.client.get("/metrics")
    assert set(REGISTRY._names_to_collectors) == before
    assert not any(n.startswith("enmei_") for n in before)


async def test_openapi_describes_the_api_and_its_token(rig: WebRig) -> None:
    spec = (await rig.client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "enmei"
    paths = spec["paths"]
    for p in ("/api/units", "/api/units/{name}", "/api/units/{name}/charts", "/api/units/{name}/logs",
              "/api/units/{name}/snapshots", "/api/units/{name}/actions/{action}", "/api/incidents", "/api/records",
              "/api/journal", "/api/journal/verify", "/api/policy", "/api/events", "/metrics"):
        assert p in paths, p
    assert paths["/api/units/{name}/actions/{action}"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/api/units"]["get"]
    assert "/" not in paths and "/timeline" not in paths  # pages are not API
    assert (await rig.client.get("/docs")).status_code == 404  # swagger would load a CDN


async def test_static_files_and_plotly_are_served_locally(rig: WebRig) -> None:
    r = await rig.client.get("/vendor/plotly.min.js")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript")
    assert b"plotly.js" in r.content[:400]
    assert (await rig.client.get("/static/enmei.js")).status_code == 200
    assert (await rig.client.get("/static/enmei.css")).status_code == 200
    assert (await rig.client.get("/static/nothing.js")).status_code == 404


# -- guards ----------------------------------------------------------------------------------------

async def test_only_loopback_host_names_are_served(rig: WebRig) -> None:
    r = await rig.client.get("/api/units", headers={"Host": "attacker.example:8470"})
    assert r.status_code == 421 and "loopback names only" in r.text
    for host in ("localhost:8470", "127.0.0.1", "[::1]:8470"):
        assert (await rig.client.get("/api/units", headers={"Host": host})).status_code == 200, host


async def test_security_headers(rig: WebRig) -> None:
    r = await rig.client.get("/")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY" and r.headers["x-content-type-options"] == "nosniff"


async def test_a_handler_that_raises_is_a_500_and_supervision_goes_on(rig: WebRig) -> None:
    app = rig.client._transport.app  # type: ignore[attr-defined]

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("kaboom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
        r = await c.get("/boom")
    assert r.status_code == 500
    await rig.crash_and_recover("web", code=1)


# -- policy replay ---------------------------------------------------------------------------------

class FakePolicy:
    version = "candidate-1"
    closed = False

    def close(self) -> None:
        FakePolicy.closed = True


class FakeReport:
    def __init__(self, records: list[object]) -> None:
        self.records = records
        agree = SimpleNamespace(agree=True, seq=1, kind="exit", unit="web", original=[], replayed=[])
        differ = SimpleNamespace(agree=False, seq=9, kind="verdict", unit="web", original=[{"action": "restart"}],
                                 replayed=[])
        self.points = [agree, differ]
        self.errors: list[dict[str, object]] = []

    def summary(self) -> dict[str, object]:
        return {"policy": "candidate-1", "evaluations": 2, "evaluations_agreeing": 1}


async def test_policy_replay_runs_a_fresh_policy_off_the_loop(rig: WebRig, monkeypatch: pytest.MonkeyPatch) -> None:
    import enmei.web.policy as wp

    seen: dict[str, object] = {}

    def open_policy(path: object) -> FakePolicy:
        seen["path"] = path
        return FakePolicy()

    def replay_records(policy: FakePolicy, records: list[object], journal: str) -> FakeReport:
        seen["records"] = len(records)
        return FakeReport(records)

    monkeypatch.setattr(wp, "replay_functions", lambda: (open_policy, replay_records))
    assert (await rig.client.post("/api/policy/replay")).status_code == 401
    assert (await rig.client.post("/api/policy/replay", headers={"Authorization": "Bearer no"})).status_code == 403
    r = await rig.client.post("/api/policy/replay", headers=rig.auth, params={"window_s": 3600})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["summary"]["evaluations"] == 2 and body["records"] == seen["records"] == rig.journal.durable_seq
    assert [d["seq"] for d in body["disagreements"]] == [9]
    assert seen["path"] is None and FakePolicy.closed
    assert (await rig.client.get("/api/policy")).json()["replay"]["available"] is True
    assert (await rig.client.post("/api/policy/replay", headers=rig.auth, params={"window_s": 0})).status_code == 422


async def test_policy_replay_unavailable_or_broken(rig: WebRig, monkeypatch: pytest.MonkeyPatch) -> None:
    import enmei.web.policy as wp
    from enmei.errors import PolicyError

    def missing() -> None:
        raise wp.ReplayUnavailable("enmei.policy offers no replay (test)")

    monkeypatch.setattr(wp, "replay_functions", missing)
    r = await rig.client.post("/api/policy/replay", headers=rig.auth)
    assert r.status_code == 501 and "no replay" in r.json()["detail"]
    assert (await rig.client.get("/api/policy")).json()["replay"]["available"] is False

    def broken(path: object) -> None:
        raise PolicyError("syntax error", file="policy.star", line=3, column=7)

    monkeypatch.setattr(wp, "replay_functions", lambda: (broken, None))
    r = await rig.client.post("/api/policy/replay", headers=rig.auth)
    assert r.status_code == 409 and r.json()["detail"] == "the policy does not load: policy.star:3:7: syntax error"


# -- what a backend supports -----------------------------------------------------------------------

class _VmOnly(Remedy):
    name: ClassVar[str] = "phase_reboot"
    description: ClassVar[str] = "load the boot-phase snapshot"
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.PHASE_REBOOT})

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return 10.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        return Result.ok()


class _Snapshot(_VmOnly):
    name: ClassVar[str] = "snapshot"
    description: ClassVar[str] = "take a snapshot"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"tag": str}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS})


class SnapshottingBackend(FakeBackend):
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS, Capability.SNAPSHOT})

    async def snapshot_list(self, name: str) -> list[str]:
        if name == "batch":
            raise VisorError(name, "snapshot list", "the monitor does not answer")
        return ["boot-phase", "before-update"]


async def test_only_supported_actions_are_offered_and_accepted(rig: WebRig, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REMEDIES, "phase_reboot", _VmOnly)
    monkeypatch.setitem(REMEDIES, "snapshot", _Snapshot)
    actions = [a["name"] for a in (await rig.client.get("/api/units/web")).json()["actions"]]
    assert "phase_reboot" not in actions and actions.index("snapshot") == 4
    html = (await rig.client.get("/units/web")).text
    assert 'data-action="snapshot"' in html and 'data-action="phase_reboot"' not in html
    r = await rig.client.post("/api/units/web/actions/phase_reboot", headers=rig.auth)
    assert r.status_code == 422
    assert r.json()["detail"].startswith("action 'phase_reboot' does not apply to process units (unit web supports:")
    r = await rig.client.post("/api/units/web/actions/snapshot", headers=rig.auth, json={"args": {"tag": 3}})
    assert r.status_code == 422 and "argument 'tag' must be str" in r.json()["detail"]


async def test_snapshots_are_listed_for_backends_that_have_them(tmp_path: Path) -> None:
    async with web_rig(tmp_path, backend_cls=SnapshottingBackend) as rig:
        r = await rig.client.get("/api/units/web/snapshots")
        assert r.json() == {"supported": True, "tags": ["boot-phase", "before-update"]}
        r = await rig.client.get("/api/units/batch/snapshots")
        assert r.status_code == 409 and "the monitor does not answer" in r.json()["detail"]
        html = (await rig.client.get("/units/web")).text
        assert "<h2>Snapshots</h2>" in html and "<code>before-update</code>" in html
        assert "the monitor does not answer" in (await rig.client.get("/units/batch")).text
