"""The web server in the supervisor's loop, over real units: HTTP, server-sent events, /metrics with the
demo's config, shutdown, refused addresses — and a slow or failing web layer that never delays
supervision."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.demo.scenario import demo_config
from enmei.engine import Engine, journal_for
from enmei.model import UnitState
from enmei.web import WebError, bind_listen, serve
from enmei.web.events import Broadcaster

from ..conftest import PY

pytestmark = pytest.mark.integration


def web_config(port: int) -> str:
    return f"""
[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
stop_timeout_s = 1.5
start_s = 0.3

[[units.web.probes]]
kind = "http"
url = "http://127.0.0.1:{port}/health"
interval_s = 0.2
timeout_s = 0.3
"""


@dataclass
class Served:
    engine: Engine
    url: str
    token: str
    said: list[str]
    token_path: Path
    records: list[tuple[float, int, str, str, dict[str, Any]]] = field(default_factory=list)

    def first(self, kind: str, after: float, **match: Any) -> float | None:
        for t, _, k, _, b in self.records:
            if k == kind and t >= after and all(b.get(key) == v for key, v in match.items()):
                return t
        return None

    def pid(self, unit: str = "web") -> int:
        ident = self.engine.units[unit].backend.identity(unit)
        assert ident is not None
        return int(ident.pid)


async def until(pred: Callable[[], Any], timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.02)
    return bool(pred())


@contextlib.asynccontextmanager
async def served(tmp_path: Path, config: str, *, units_up: tuple[str, ...] = ("web",),
                 **serve_kw: Any) -> AsyncIterator[Served]:
    loaded = load_text(config, tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    (wport,) = free_ports(1)
    said: list[str] = []
    s = Served(engine, f"http://127.0.0.1:{wport}", "", said, loaded.state_dir / "web.token")
    engine.subscribe(lambda q, k, u, b: s.records.append((time.monotonic(), q, k, u, dict(b))))
    run = asyncio.create_task(engine.run())
    web = asyncio.create_task(serve(engine, f"127.0.0.1:{wport}", s.token_path, say=said.append, **serve_kw))
    try:
        assert await until(lambda: all(n in engine.units and engine.units[n].state is UnitState.RUNNING
                                       for n in units_up), 15), "units did not start"
        async with httpx.AsyncClient() as c:
            async def up() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return (await c.get(s.url + "/api/journal")).status_code == 200
                return False
            for _ in range(200):
                if await up():
                    break
                await asyncio.sleep(0.05)
        s.token = s.token_path.read_text().strip()
        yield s
    finally:
        web.cancel()
        await asyncio.gather(web, return_exceptions=True)
        engine.stop()
        await wait_for(run, 30)
        journal.close()


def sse_events(lines: list[str]) -> list[tuple[str, dict[str, Any]]]:
    out, event = [], None
    for line in lines:
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event:
            out.append((event, json.loads(line[6:])))
            event = None
    return out


async def test_pages_api_and_live_events_over_real_http(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    async with served(tmp_path, web_config(port)) as s, httpx.AsyncClient(base_url=s.url, timeout=10) as c:
        assert any("new API token" in line and s.token in line for line in s.said)  # printed, this once
        for path in ("/", "/units/web", "/timeline", "/journal", "/policy", "/api", "/openapi.json"):
            assert (await c.get(path)).status_code == 200, path
        lines: list[str] = []

        async def listen() -> None:
            async with c.stream("GET", "/api/events", params={"unit": "web"}) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                async for line in r.aiter_lines():
                    lines.append(line)

        reader = asyncio.create_task(listen())
        assert await until(lambda: any(line.startswith("event: hello") for line in lines), 5)
        r = await c.post("/api/units/web/actions/restart", headers={"Authorization": f"Bearer {s.token}"})
        assert r.status_code == 202
        after = r.json()["after_seq"]

        def seen(kind: str) -> bool:
            return any(e == "record" and d["kind"] == kind and d["seq"] > after for e, d in sse_events(lines))
        assert await until(lambda: seen("remedy.outcome"), 10), lines[-10:]
        events = [d for e, d in sse_events(lines) if e == "record" and d["seq"] > after]
        kinds = [d["kind"] for d in events]
        assert kinds.index("decision") < kinds.index("remedy.start") < kinds.index("remedy.outcome")
        assert events[kinds.index("decision")]["body"]["policy"] == "operator:web"
        assert all(d["unit"] == "web" for d in events)
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        r = await c.get("/fragments/incidents", params={"after": events[-1]["seq"]})
        assert "operator:web" in r.text


async def test_the_demo_config_serves_units_and_remedies_on_metrics(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    async with served(tmp_path, demo_config(port)) as s, httpx.AsyncClient(base_url=s.url) as c:
        assert await until(lambda: s.first("remedy.outcome", 0, action="restart") is not None, 15)  # flaky
        os.kill(s.pid(), signal.SIGKILL)
        assert await until(lambda: len([r for r in s.records if r[2] == "remedy.outcome" and r[3] == "web"]) >= 2, 10)
        text = (await c.get("/metrics")).text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        units = {smp.labels["unit"] for smp in fams["enmei_unit_state"].samples}
        assert units == {"web", "flaky"}
        remedies = {(x.labels["unit"], x.labels["action"]) for x in fams["enmei_remedies"].samples}
        assert ("web", "restart") in remedies and ("web", "start") in remedies
        assert any(u == "flaky" for u, _ in remedies)
        assert any(x.labels == {"unit": "web", "probe": "http"} for x in fams["enmei_probe_latency_seconds"].samples)


async def test_a_slow_or_failing_web_layer_never_delays_supervision(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import enmei.web.api as api

    def broken(*_: Any) -> Any:
        raise RuntimeError("the log reader is broken")

    def slow(*_: Any, **__: Any) -> Any:
        time.sleep(3.0)  # in the web pool: the supervisor's loop goes on
        return {}

    monkeypatch.setattr(api, "log_tail", broken)
    monkeypatch.setattr(api, "unit_figures", slow)
    (port,) = free_ports(1)
    async with served(tmp_path, web_config(port)) as s:
        host, wport = "127.0.0.1", int(s.url.rsplit(":", 1)[1])
        stuck: list[socket.socket] = []
        try:
            for _ in range(3):  # clients that open the event stream and never read it
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.connect((host, wport))
                sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                stuck.append(sock)
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as c:
                failing = [asyncio.create_task(c.get("/api/units/web/logs")) for _ in range(5)]
                slowed = [asyncio.create_task(c.get("/api/units/web/charts")) for _ in range(4)]
                await asyncio.sleep(0.3)
                for i in range(1000):  # 16 MB: more than the stuck clients' sockets and buffers hold
                    s.engine.record("alert", "web", {"severity": "info", "message": "x" * 16_000, "i": i})
                    if i % 50 == 0:
                        await asyncio.sleep(0)
                old = s.pid()
                t0 = time.monotonic()
                os.kill(old, signal.SIGKILL)
                assert await until(lambda: s.first("unit.event", t0, event="started") is not None, 3)
                exited, started = s.first("unit.event", t0, event="exited"), s.first("unit.event", t0, event="started")
                assert exited is not None and started is not None
                assert exited - t0 < 1.0 and started - t0 < 1.0
                assert await until(lambda: s.engine.units["web"].state is UnitState.RUNNING, 3)
                assert s.pid() != old
                assert {(await t).status_code for t in failing} == {500}
                assert {(await t).status_code for t in slowed} == {200}
            b = next(fn for fn in s.engine.subscribers if isinstance(fn, Broadcaster))
            assert sum(cl.dropped for cl in b.clients) > 0 or any(len(cl.buffer) == cl.size for cl in b.clients)
        finally:
            for sock in stuck:
                sock.close()


async def test_shutdown_ends_open_streams_and_frees_the_port(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    async with served(tmp_path, web_config(port)) as s:
        wport = int(s.url.rsplit(":", 1)[1])
        c = httpx.AsyncClient(base_url=s.url)
        got: list[str] = []

        async def listen() -> None:
            with contextlib.suppress(httpx.HTTPError):
                async with c.stream("GET", "/api/events") as r:
                    async for line in r.aiter_lines():
                        got.append(line)

        task = asyncio.create_task(listen())
        assert await until(lambda: bool(got), 5)
        web = next(t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "serve")  # type: ignore[union-attr]
        t0 = time.monotonic()
        web.cancel()
        await asyncio.gather(web, return_exceptions=True)
        assert time.monotonic() - t0 < 5.0
        await wait_for(task, 5)
        await c.aclose()
        probe = socket.socket()
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", wport))
        finally:
            probe.close()


async def test_refused_addresses_and_ports_in_use_are_clear_and_journaled(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    async with served(tmp_path, web_config(port)) as s:
        token_path = tmp_path / "web.token"
        with pytest.raises(WebError, match=r"0\.0\.0\.0 is not a loopback address"):
            await serve(s.engine, "0.0.0.0:8470", token_path)
        busy = s.url.rsplit(":", 1)[1]
        with pytest.raises(WebError, match=f"cannot listen on 127.0.0.1:{busy}: Address already in use"):
            await serve(s.engine, f"127.0.0.1:{busy}", token_path)
        alerts = [b["message"] for _, _, k, _, b in s.records if k == "alert"]
        assert any("web server not started" in a and "0.0.0.0" in a for a in alerts)
        with pytest.raises(WebError, match=f"cannot listen on 127.0.0.1:{busy}"):
            bind_listen(f"127.0.0.1:{busy}")  # what `enmei up` can check before supervising
        sock = bind_listen("127.0.0.1:0")
        bound = sock.getsockname()[1]
        said: list[str] = []
        task = asyncio.create_task(serve(s.engine, "127.0.0.1:0", s.token_path, say=said.append, sock=sock))
        assert await until(lambda: bool(said), 5)
        async with httpx.AsyncClient() as c:
            r = await c.get(f"http://127.0.0.1:{bound}/api/units")
            assert r.status_code == 200
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert sock.fileno() == -1  # closed with the server
        assert f"http://127.0.0.1:{bound}/" in said[0]
        assert "new API token" not in said[0] and "API token in" in said[0]  # made once, printed once


async def test_policy_dry_run_replay_over_real_http(tmp_path: Path) -> None:
    from enmei.web.policy import replay_status

    (port,) = free_ports(1)
    async with served(tmp_path, web_config(port)) as s, httpx.AsyncClient(base_url=s.url, timeout=60) as c:
        os.kill(s.pid(), signal.SIGKILL)
        assert await until(lambda: s.first("remedy.outcome", 0, action="restart") is not None, 10)
        await s.engine.journal.aflush(timeout_s=5)
        r = await c.post("/api/policy/replay", headers={"Authorization": f"Bearer {s.token}"})
        if replay_status()["available"]:
            assert r.status_code == 200, r.text
            summary = r.json()["summary"]
            assert summary["evaluations"] >= 1 and summary["decisions_original"] >= 1
        else:  # this enmei has no enmei.policy.replay: the endpoint says so
            assert r.status_code == 501 and "no replay" in r.json()["detail"]
