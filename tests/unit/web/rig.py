"""A real Engine over the fake process backend and a fake clock, with the web app in front of it.

No sockets, no subprocesses: requests go through httpx's ASGI transport into the app, on the test's
own event loop. The fake clock's wall time is aligned with the real one, so journal windows ("the last
hour") contain the samples the fake probes make.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from enmei.box import Journal
from enmei.clock import FakeClock
from enmei.engine import Engine
from enmei.visor.fake import FakeBackend
from enmei.web import create_app
from enmei.web.context import WebContext
from support.harness import Rig, start_rig

TOKEN = "test-token-0123456789abcdef"

CONFIG = """
[supervisor]
state_dir = "state"

[units.web]
command = ["/bin/true"]
start_s = 1.0
stop_timeout_s = 2.0

[[units.web.probes]]
kind = "process"
interval_s = 0.5

[units.batch]
command = ["/bin/true"]
start_s = 1.0
"""


@dataclass
class WebRig:
    """The engine rig (``support.harness.Rig``: fake clock that jumps, idle waits) plus the web app."""

    rig: Rig
    client: httpx.AsyncClient
    ctx: WebContext
    token_path: Path

    @property
    def engine(self) -> Engine:
        return self.rig.engine

    @property
    def clock(self) -> FakeClock:
        return self.rig.clock

    @property
    def journal(self) -> Journal:
        return self.rig.journal

    @property
    def task(self) -> asyncio.Task[None]:
        return self.rig.task

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    @property
    def backend(self) -> FakeBackend:
        return self.rig.backend

    async def settle(self) -> None:
        """Let the loop run until idle and the journal's writer catch up (no fake time passes)."""
        await self.rig.quiesce()

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Let ``seconds`` of fake time pass, jumping from one deadline to the next (``step``: ignored)."""
        await self.rig.advance(seconds, step)

    async def crash_and_recover(self, name: str, code: int = 3) -> None:
        """Crash unit ``name`` and advance until the engine has restarted it."""
        from enmei.model import UnitState

        unit = self.engine.units[name]
        self.backend.crash(name, code=code)
        assert await self.until(lambda: unit.remedy is not None or unit.state is not UnitState.RUNNING)
        assert await self.until(lambda: unit.state is UnitState.RUNNING and unit.remedy is None)

    async def until(self, pred: Any, fake_s: float = 30.0) -> bool:
        """Let fake time pass until ``pred()`` holds (at most ``fake_s`` fake seconds); say if it held."""
        return await self.rig.advance_until(pred, fake_s)


@asynccontextmanager
async def web_rig(tmp_path: Path, config: str = CONFIG,
                  backend_cls: type[FakeBackend] = FakeBackend) -> AsyncIterator[WebRig]:
    clock = FakeClock(start=1000.0, wall_offset=time.time() - 1000.0 - 300.0)  # 5 min behind: never ahead
    apps: list[Any] = []

    def front(engine: Engine) -> None:
        apps.append(create_app(engine, token=TOKEN, token_path=engine.state_dir / "web.token"))

    rig = await start_rig(tmp_path, config, backend_cls=backend_cls, clock=clock, before_run=front)
    app = apps[0]
    ctx: WebContext = app.state.ctx
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8470")
    web = WebRig(rig, client, ctx, rig.engine.state_dir / "web.token")
    try:
        assert await web.until(lambda: all(u.remedy is None for u in rig.engine.units.values()), 10)
        yield web
    finally:
        await client.aclose()
        ctx.close()
        await rig.close()
