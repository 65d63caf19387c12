"""Drive a real Engine over the fake process backend and a fake clock."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.box import Journal
from enmei.clock import FakeClock
from enmei.config.load import load_text
from enmei.engine import Engine
from enmei.policy.base import Policy
from enmei.visor.fake import FakeBackend


@dataclass
class Rig:
    engine: Engine
    clock: FakeClock
    journal: Journal
    task: asyncio.Task[None]
    records: list[tuple[int, str, str, dict[str, Any]]] = field(default_factory=list)

    @property
    def backend(self) -> FakeBackend:
        b = self.engine.backend("process")
        assert isinstance(b, FakeBackend)
        return b

    async def settle(self, rounds: int = 6) -> None:
        """Let the loop (and the journal's writer thread, for intents) catch up."""
        for _ in range(rounds):
            await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        for _ in range(rounds):
            await asyncio.sleep(0)

    async def until(self, pred: Any, real_s: float = 3.0) -> bool:
        """Settle until ``pred()`` holds (at most ``real_s`` real seconds); the fake clock stands still."""
        loop = asyncio.get_running_loop()
        end = loop.time() + real_s
        while not pred():
            if loop.time() > end:
                return False
            await self.settle(2)
        return True

    async def advance(self, seconds: float, step: float = 0.1) -> None:
        n = max(1, round(seconds / step))
        for _ in range(n):
            self.clock.advance(seconds / n)
            await self.quiesce()

    async def advance_until(self, pred: Any, max_s: float, step: float = 0.1) -> bool:
        """Advance the fake clock step by step until ``pred()`` holds (at most ``max_s`` of fake time)."""
        t = 0.0
        while not pred():
            if t >= max_s:
                return False
            await self.advance(step, step)
            t += step
        return True

    async def quiesce(self) -> None:
        """Wait for the journal to catch up (intents are flushed before a remedy acts), then settle."""
        for _ in range(2):
            await self.settle(2)
            if self.journal.durable_seq < self.journal.last_seq and self.journal.status == "ok":
                await self.until(lambda: self.journal.durable_seq >= self.journal.last_seq)

    def kinds(self, unit: str | None = None) -> list[str]:
        return [k for _, k, u, _ in self.records if unit is None or u == unit]

    def bodies(self, kind: str, unit: str | None = None) -> list[dict[str, Any]]:
        return [b for _, k, u, b in self.records if k == kind and (unit is None or u == unit)]

    def states(self, unit: str) -> list[str]:
        return [b["to"] for b in self.bodies("unit.state", unit)]

    async def close(self) -> None:
        self.engine.stop()
        for _ in range(400):
            if self.task.done():
                break
            self.clock.advance(0.5)
            await self.settle(2)
        await self.task
        self.journal.close()


async def start_rig(tmp_path: Path, config: str, *, policy: Policy | None = None,
                    prepare: Mapping[str, Any] | None = None) -> Rig:
    loaded = load_text(config, tmp_path / "enmei.toml")
    journal = Journal(loaded.journal_path).open()
    clock = FakeClock()

    def fake(engine: Engine) -> FakeBackend:
        b = FakeBackend(clock=engine.clock, state_dir=engine.state_dir, emit=engine.emit)
        for k, v in (prepare or {}).items():
            setattr(b, k, v)
        return b

    engine = Engine(loaded, journal=journal, clock=clock, policy=policy, backends={"process": fake})
    rig = Rig(engine, clock, journal, asyncio.create_task(engine.run()))
    engine.subscribe(lambda seq, kind, unit, body: rig.records.append((seq, kind, unit, dict(body))))
    await rig.until(lambda: engine.started.is_set() and all(u.remedy is None or u.remedy.state != "pending"
                                                            for u in engine.units.values()))
    return rig
