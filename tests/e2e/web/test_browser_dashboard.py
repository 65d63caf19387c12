"""The dashboard in a real browser (Debian's chromium, headless) over a real supervisor and real units:
see the units, watch a detection land on the chart and in the timeline, restart a unit from the UI
with confirmation, and see the timeline update live. Screenshots go to ``artifacts/screenshots/``."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine.loop import Engine
from enmei.engine.run import supervise
from enmei.model import UnitState
from enmei.monitor.http import http_get
from enmei.web import serve
from enmei.web.views import live_limits_now
from support.wait import auntil, scaled

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = Path(__file__).resolve().parents[3] / "artifacts" / "screenshots"
PY = sys.executable


def config(port: int) -> str:
    return f"""
[supervisor]
state_dir = "state"
tick_s = 0.5

[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 2
start_s = 0.3

[units.web.detect]
latency_learning = 20
latency_hold_off_s = 5

[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = 0.1
timeout_s = 5  # a loaded CI machine answers late (failed probes at 0.5 s spent the restart budget),
              # and the injected fault may be up to 3 s

[[units.web.probes]]
kind = "process"
interval_s = 0.5

[units.worker]
command = ["{PY}", "-c", "import time; time.sleep(3600)"]
start_s = 0.2
stop_timeout_s = 2
"""


@dataclass
class Live:
    engine: Engine
    url: str
    token: str
    port: int
    records: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)

    def pid(self) -> int:
        ident = self.engine.units["web"].backend.identity("web")
        assert ident is not None
        return int(ident.pid)

    def has(self, record_kind: str, after: int = 0, **match: Any) -> bool:
        """A record of ``record_kind`` (later than seq ``after``) whose body has every ``match``."""
        return any(s > after and k == record_kind and all(b.get(x) == v for x, v in match.items())
                   for s, k, _, b in self.records)

    def last_seq(self) -> int:
        return self.records[-1][0] if self.records else 0


def T(seconds: float) -> float:
    """A playwright timeout (ms) for an event expected within ``seconds`` on an idle machine: generous
    (>= 30 s) and stretched by the machine's measured slowness; the wait ends as soon as the event comes."""
    return scaled(max(seconds, 30.0)) * 1000


async def until(pred: Callable[[], Any], timeout: float = 10.0) -> bool:
    """Poll ``pred`` until it holds (``support.wait.auntil``); generous like ``T``."""
    return bool(await auntil(pred, max(timeout, 30.0), fail=False))


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[Live]:
    port, wport = free_ports(2)
    loaded = load_text(config(port), tmp_path / "enmei.toml")
    ready: asyncio.Future[Live] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def companion(engine: Engine) -> None:
        state = Live(engine, f"http://127.0.0.1:{wport}", "", port)
        engine.subscribe(lambda s, k, u, b: state.records.append((s, k, u, dict(b))))
        web = asyncio.create_task(serve(engine, f"127.0.0.1:{wport}", loaded.state_dir / "web.token",
                                        say=lambda _m: None))
        try:
            assert await until(lambda: all(u.state is UnitState.RUNNING for u in engine.units.values()), 20)
            state.token = (loaded.state_dir / "web.token").read_text().strip()
            ready.set_result(state)
            await done.wait()
        finally:
            web.cancel()
            await asyncio.gather(web, return_exceptions=True)
            engine.stop()

    task = asyncio.create_task(supervise(loaded, companion=companion))
    try:
        yield await wait_for(asyncio.shield(ready), scaled(120))
    finally:
        done.set()
        if not ready.done():
            task.cancel()
        await wait_for(asyncio.gather(task, return_exceptions=True), scaled(60))


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make test does)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield b
        finally:
            await b.close()


async def test_see_a_unit_watch_a_detection_restart_it_from_the_ui(live: Live, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1000})
    # navigations and actions without a timeout of their own: playwright's 30 s, stretched like T()
    ctx.set_default_timeout(T(30))
    ctx.set_default_navigation_timeout(T(30))
    problems: list[str] = []
    try:
        page, timeline = await ctx.new_page(), await ctx.new_page()
        for p in (page, timeline):
            p.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
            p.on("pageerror", lambda e: problems.append(f"page error: {e}"))

        # the overview: the units, their state and health; the token arrives in the URL's fragment
        await page.goto(f"{live.url}/#token={live.token}")
        row = page.locator('tr[data-unit="web"]')
        await row.locator(".state .badge").filter(has_text="running").wait_for(timeout=T(5))
        await page.locator("#live-status").filter(has_text="live").wait_for(timeout=T(5))
        assert await page.locator('tr[data-unit="worker"]').count() == 1
        assert await page.evaluate("localStorage.getItem('enmei-token')") == live.token
        assert "#token" not in page.url
        await page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)

        # the timeline is open in another tab while things happen
        await timeline.goto(f"{live.url}/timeline?window=15m")
        await timeline.locator("#live-status").filter(has_text="live").wait_for(timeout=T(5))

        # a latency fault: the control chart leaves its limits; a detection lands on the chart and the timeline
        assert await until(lambda: "http" in live_limits_now(live.engine, "web"), 20), "detector did not learn"
        # The unit may be restarting (a loaded machine can make the policy act early): inject the fault once
        # it runs and answers, not into a refused connection.
        web = live.engine.units["web"]
        assert await until(lambda: web.state is UnitState.RUNNING and web.remedy is None)

        # The fault: 60 ms, or twice the level at which the detector calls a slowdown sustained if that is
        # more (a machine loaded while the detector learned has a slow, noisy normal: 60 ms may be in it).
        stream = live.engine.judges["web"].get("latency").streams["http"]  # type: ignore[union-attr]
        fault_ms = min(3000, max(60, round(2000 * math.exp(stream.sustained_level))))

        async def inject_fault() -> bool:
            try:
                status, _ = await http_get("127.0.0.1", live.port, f"/admin/fault?latency_ms={fault_ms}",
                                           timeout_s=2)
            except (OSError, TimeoutError):
                return False
            return status == 200

        assert await until(inject_fault), f"the fault could not be injected: {live.records[-10:]}"
        assert await until(lambda: live.has("verdict", kind="anomaly"), 15), (
            f"no anomaly verdict for a {fault_ms} ms fault; limits {live_limits_now(live.engine, 'web')}; "
            f"last records {live.records[-8:]}")
        # The shipped policy answers a latency anomaly with a restart, which also clears the fault; if the
        # restart is under way the reset finds no one to answer, which is fine.
        with contextlib.suppress(OSError, TimeoutError):
            await http_get("127.0.0.1", live.port, "/admin/reset", timeout_s=2)
        await timeline.locator('li.incident[data-kind="anomaly"]').first.wait_for(timeout=T(10))

        await page.goto(f"{live.url}/units/web")
        chart = page.locator("#chart-http_latency_s .main-svg").first
        await chart.wait_for(timeout=T(15))
        traces = await page.evaluate(
            "() => document.getElementById('chart-http_latency_s').data.map(t => t.name)")
        assert {"http.latency_s", "centre", "upper limit", "detections"} <= set(traces), traces
        await page.screenshot(path=str(SHOTS / "unit-detection.png"), full_page=True)

        # restart from the UI, with confirmation. The policy may still be restarting the unit for the
        # anomaly: wait until that is over, so that "the restart" below can only be the operator's.
        assert await until(lambda: live.engine.units["web"].state is UnitState.RUNNING
                           and live.engine.units["web"].remedy is None)
        old, mark = live.pid(), live.last_seq()
        await page.locator('button.action[data-action="restart"]').click()
        dialog = page.locator("#confirm-dialog")
        await dialog.wait_for(state="visible", timeout=T(5))
        assert (await page.locator("#confirm-title").inner_text()) == "restart web?"
        await page.screenshot(path=str(SHOTS / "confirm-restart.png"))
        await page.locator("#confirm-ok").click()
        await page.locator("#toast").filter(has_text="queued").wait_for(timeout=T(5))
        assert await until(lambda: live.has("decision", mark, action="restart", policy="operator:web",
                                            rule="manual"))
        assert await until(lambda: live.has("remedy.outcome", mark, action="restart", state="succeeded"), 15)
        assert await until(lambda: live.engine.units["web"].state is UnitState.RUNNING, 5)
        assert live.pid() != old

        # the unit page and the other tab update by themselves (server-sent events), no reload
        await page.locator('#unit-live li.incident[data-kind="manual"] .badge.succeeded').first.wait_for(
            timeout=T(10))
        item = timeline.locator('li.incident[data-kind="manual"]').filter(has_text="operator:web")
        await item.locator(".badge.succeeded").first.wait_for(timeout=T(10))
        text = (await item.first.inner_text()).lower()
        assert "restart" in text and "requested" in text and "decided" in text and "outcome" in text
        await page.wait_for_timeout(600)  # let the charts redraw the remedy line
        await page.screenshot(path=str(SHOTS / "unit-after-restart.png"), full_page=True)
        await timeline.bring_to_front()  # a background tab draws no frames to capture
        await timeline.screenshot(path=str(SHOTS / "timeline.png"), full_page=True)
        await page.bring_to_front()

        await page.goto(f"{live.url}/journal")
        async with page.expect_navigation(timeout=T(15)):  # the page reloads with the new result
            await page.locator("#verify-now").click()
        assert "intact" in await page.locator("#verify-result").inner_text()
        await page.screenshot(path=str(SHOTS / "journal.png"), full_page=True)
        assert problems == []
    finally:
        with contextlib.suppress(Exception):
            await ctx.close()


async def test_an_action_without_the_token_asks_for_it(live: Live, browser: Any) -> None:
    ctx = await browser.new_context()
    try:
        page = await ctx.new_page()
        await page.goto(f"{live.url}/units/worker")
        await page.locator('button.action[data-action="restart"]').click()
        await page.locator("#confirm-ok").click()
        await page.locator("#token-dialog").wait_for(state="visible", timeout=T(5))
        await page.locator("#toast").filter(has_text="needs the token").wait_for(timeout=T(5))
        await page.fill("#token-input", "wrong")
        await page.locator('#token-dialog button[value="save"]').click()
        await page.locator("#toast").filter(has_text="wrong token").wait_for(timeout=T(5))  # 403, said once
        assert await page.locator("#token-dialog").is_hidden()
        assert not live.has("decision", policy="operator:web")
    finally:
        await ctx.close()


async def test_the_report_opens_from_a_file_and_draws_its_charts(live: Live, browser: Any, tmp_path: Path) -> None:
    from enmei.box import verify
    from enmei.report import build_report, write_report

    mark = live.last_seq()
    os.kill(live.pid(), signal.SIGKILL)
    assert await until(lambda: live.has("remedy.outcome", mark, action="restart", state="succeeded"), 10), \
        live.records[-10:]
    await live.engine.journal.aflush(timeout_s=5)
    path = tmp_path / "report.html"
    write_report(path, build_report(live.engine.journal.path, time.time() - 600,
                                    check=verify(live.engine.journal.path)))
    ctx = await browser.new_context(viewport={"width": 1300, "height": 1000}, offline=True)
    try:
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(path.as_uri())
        charts = page.locator("div.chart[data-fig]")
        n = await charts.count()
        assert n >= 4
        await page.wait_for_function(f"document.querySelectorAll('div.chart .main-svg').length >= {n}",
                                     timeout=T(15))
        text = await page.locator("#incidents").inner_text()
        assert "exited: killed by SIGKILL" in text and "restart" in text
        SHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        assert errors == []
    finally:
        await ctx.close()
