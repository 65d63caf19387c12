"""Active observation and degraded modes against the real demo service."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine, journal_for
from enmei.model import Observation, UnitState
from enmei.monitor.http import http_get
from support.wait import answers, auntil, scaled

from .conftest import PY

pytestmark = pytest.mark.integration


def config(port: int) -> str:
    return f"""
[units.web]
command = ["{PY}", "-m", "enmei.demo.service", "--port", "{port}"]
listen = ["127.0.0.1:{port}"]
start_s = 0.3
stop_timeout_s = 2

[units.web.degrade.nosearch]
url = "http://127.0.0.1:{port}/admin/degrade?on=1"

[units.web.degrade.broken]
command = ["/bin/sh", "-c", "echo cannot degrade; exit 3"]

[[units.web.injectors]]
kind = "http"
name = "search"
url = "http://127.0.0.1:{port}/api/search?q=item-1"
expect_body = "hits"
"""


async def test_injection_and_degrade_through_decisions(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    loaded = load_text(config(port), tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    records: list[tuple[str, str, dict]] = []  # type: ignore[type-arg]
    engine.subscribe(lambda s, k, u, b: records.append((k, u, dict(b))))
    task = asyncio.create_task(engine.run())

    async def until(pred, timeout: float = 60.0) -> bool:  # type: ignore[no-untyped-def]
        return bool(await auntil(pred, timeout, "the engine"))

    try:
        assert await until(lambda: "web" in engine.units and engine.units["web"].state is UnitState.RUNNING)
        # RUNNING means it held for start_s (0.3 s): on a loaded machine it may not listen yet
        assert await answers(port), "the service never answered"
        # A synthetic search works: no verdict. Wait for both injections to be observed *and* handled
        # (the consumer takes an observation off the queue and judges it in one step): no sleep, no race.
        injector = engine.injectors["web"]["search"]
        seen: list[Observation] = []
        real_observe = injector.observe

        async def observe() -> Observation:
            obs = await real_observe()
            seen.append(obs)
            return obs

        injector.observe = observe  # type: ignore[method-assign]
        engine.submit("inject", "web", {"injector": "search", "count": 2, "every_s": 0.2})
        assert await until(lambda: len(seen) == 2 and engine.queue.empty())
        assert all(o.ok for o in seen), seen
        assert not [b for k, _, b in records if k == "verdict"]
        # Degrade: search is switched off; the next injection sees it and a verdict names the injector.
        engine.submit("degrade", "web", {"mode": "nosearch"})
        assert await until(lambda: any(k == "remedy.outcome" and b["action"] == "degrade" for k, _, b in records))
        outcome = next(b for k, _, b in records if k == "remedy.outcome" and b["action"] == "degrade")
        assert outcome["state"] == "succeeded"
        status, _ = await http_get("127.0.0.1", port, "/api/search", timeout_s=2)
        assert status == 503
        engine.submit("inject", "web", {"injector": "search"})
        assert await until(lambda: any(k == "verdict" for k, _, _ in records))
        verdict = next(b for k, _, b in records if k == "verdict")
        assert verdict["detector"] == "probe-failures:search" and "status 503" in verdict["summary"]
        # A degrade mode whose command fails is a failed remedy with its output, not a crash.
        assert await until(lambda: engine.units["web"].remedy is None
                           and engine.units["web"].state is UnitState.RUNNING)
        engine.submit("degrade", "web", {"mode": "broken"})
        assert await until(lambda: any(k == "remedy.outcome" and "cannot degrade" in str(b.get("detail"))
                                       for k, _, b in records))
    finally:
        engine.stop()
        await wait_for(task, scaled(60))
        journal.close()


async def test_tcp_probe_sees_a_listener_and_its_absence() -> None:
    from enmei.clock import SystemClock
    from enmei.monitor.tcp import TcpProbe

    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    probe = TcpProbe("u", "tcp", 1.0, SystemClock(), host="127.0.0.1", port=port, timeout_s=1.0)
    obs = await probe.observe()
    assert obs.ok and obs.values["connect_s"] >= 0
    server.close()
    await server.wait_closed()
    obs = await probe.observe()
    assert not obs.ok and obs.error
