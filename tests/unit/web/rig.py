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
from enmei.config.load import load_text
from enmei.engine import Engine
from enmei.visor.fake import FakeBackend
from enmei.web import create_app
from enmei.web.context import WebContext
from support.wait import counting_executor, idle, scaled

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
    engine: Engine
    clock: FakeClock
    journal: Journal
    task: asyncio.Task[None]
    client: httpx.AsyncClient
    ctx: WebContext
    token_path: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    @property
    def backend(self) -> FakeBackend:
        b = self.engine.backend("process")
        assert isinstance(b, FakeBackend)
        return b

    async def settle(self) -> None:
        """Let the loop run until idle and the journal's writer catch up (no fake time passes)."""
        await idle()
        if self.journal.durable_seq < self.journal.last_seq and self.journal.status == "ok":
            await asyncio.to_thread(self.journal.flush, scaled(10.0))
            await idle()

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Let ``seconds`` of fake time pass, jumping from one deadline to the next (``step``: ignored)."""
        del step
        await self._run_until(lambda: False, seconds)
        await self.settle()

    async def _run_until(self, pred: Any, seconds: float) -> bool:
        await idle()
        end = self.clock.monotonic() + seconds
        while not pred():
            if self.clock.monotonic() >= end:
                return False
            self.clock.jump(end)
            await idle()
        return True

    async def crash_and_recover(self, name: str, code: int = 3) -> None:
        """Crash unit ``name`` and advance until the engine has restarted it."""
        from enmei.model import UnitState

        unit = self.engine.units[name]
        self.backend.crash(name, code=code)
        assert await self.until(lambda: unit.remedy is not None or unit.state is not UnitState.RUNNING)
        assert await self.until(lambda: unit.state is UnitState.RUNNING and unit.remedy is None)

    async def until(self, pred: Any, fake_s: float = 30.0) -> bool:
        """Let fake time pass until ``pred()`` holds (at most ``fake_s`` fake seconds); say if it held."""
        held = await self._run_until(pred, fake_s)
        await self.settle()
        return held or bool(pred())


@asynccontextmanager
async def web_rig(tmp_path: Path, config: str = CONFIG,
                  backend_cls: type[FakeBackend] = FakeBackend) -> AsyncIterator[WebRig]:
    loaded = load_text(config, tmp_path / "enmei.toml")
    loaded.state_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(loaded.journal_path).open()
    clock = FakeClock(start=1000.0, wall_offset=time.time() - 1000.0 - 300.0)  # 5 min behind: never ahead

    def fake(engine: Engine) -> FakeBackend:
        return backend_cls(clock=engine.clock, state_dir=engine.state_dir, emit=engine.emit)

    engine = Engine(loaded, journal=journal, clock=clock, backends={"process": fake})
    token_path = loaded.state_dir / "web.token"
    app = create_app(engine, token=TOKEN, token_path=token_path)
    ctx: WebContext = app.state.ctx
    counting_executor()  # before the engine's first to_thread, so that idle() sees every worker job
    task = asyncio.create_task(engine.run())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1:8470")
    rig = WebRig(engine, clock, journal, task, client, ctx, token_path)
    try:
        await rig.settle()
        assert await rig.until(lambda: all(u.remedy is None for u in engine.units.values()), 10)
        yield rig
    finally:
        await client.aclose()
        ctx.close()
        engine.stop()
        await rig._run_until(task.done, 600.0)
        if not task.done():
            task.cancel()
        await task
        journal.close()
