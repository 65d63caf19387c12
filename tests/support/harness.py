"""The one engine rig: a real Engine over the fake process backend and a fake clock, no real sleeping.

Time moves only when a test says so, and then it *jumps*: ``advance(s)`` moves the fake clock straight to
the next sleeper's deadline, lets the loop run until it is idle (nothing ready, no worker thread busy —
see ``support.wait.idle``), and repeats until ``s`` fake seconds have passed. Fifteen fake minutes of a
crash loop cost well under a second of real time, and the same on a loaded machine as on an idle one.

The engine's policy is the one users get when they name none (the shipped Starlark library); pass
``policy=`` to test another.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.box import Journal
from enmei.clock import FakeClock
from enmei.config.load import load_text
from enmei.engine import Engine
from enmei.policy.base import Policy
from enmei.visor.fake import FakeBackend
from support.wait import counting_executor, idle, scaled

__all__ = ["Rig", "start_rig"]

Pred = Callable[[], Any]


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

    # -- moving time -------------------------------------------------------------------------------

    async def settle(self, rounds: int = 0) -> None:
        """Let the loop run until it is idle; the fake clock stands still. (``rounds``: ignored, kept for
        old callers.)"""
        del rounds
        await idle()

    async def advance(self, seconds: float, step: float | None = None) -> None:
        """Let ``seconds`` of fake time pass, jumping from one deadline to the next, idle in between.

        ``step`` is accepted for old callers and ignored: time stops at every deadline, which is finer
        than any step. The journal has caught up when this returns.
        """
        del step
        await self._run_until(lambda: False, seconds)
        await self.quiesce()

    async def advance_until(self, pred: Pred, max_s: float, step: float | None = None) -> bool:
        """Let fake time pass until ``pred()`` holds, for at most ``max_s`` fake seconds; say if it held."""
        del step
        held = await self._run_until(pred, max_s)
        await self.quiesce()
        return held or bool(pred())

    async def _run_until(self, pred: Pred, seconds: float) -> bool:
        await idle()
        end = self.clock.monotonic() + seconds
        while not pred():
            if self.clock.monotonic() >= end:
                return False
            self.clock.jump(end)
            await idle()
        return True

    async def until(self, pred: Pred, real_s: float = 10.0) -> bool:
        """Let the loop run (fake time stands still) until ``pred()`` holds; say if it did.

        Event-driven: when the loop is idle and ``pred()`` still fails, only another thread (the
        journal's writer) can change anything, so this polls it for at most ``scaled(real_s)``.
        """
        await idle()
        if pred():
            return True
        loop = asyncio.get_running_loop()
        end = loop.time() + scaled(real_s)
        delay = 0.001
        while not pred():
            if loop.time() > end:
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.05)
            await idle()
        return True

    async def quiesce(self) -> None:
        """Idle, with everything the journal was given durable (unless its disk is failing)."""
        await idle()
        if self.journal.durable_seq < self.journal.last_seq and self.journal.status == "ok":
            await asyncio.to_thread(self.journal.flush, scaled(10.0))
            await idle()

    # -- reading what happened ---------------------------------------------------------------------

    def kinds(self, unit: str | None = None) -> list[str]:
        return [k for _, k, u, _ in self.records if unit is None or u == unit]

    def bodies(self, kind: str, unit: str | None = None) -> list[dict[str, Any]]:
        return [b for _, k, u, b in self.records if k == kind and (unit is None or u == unit)]

    def states(self, unit: str) -> list[str]:
        """The unit's states in the order the engine entered them (from its ``unit.state`` records)."""
        return [b["to"] for b in self.bodies("unit.state", unit)]

    async def close(self, *, leave_running: bool = False) -> None:
        """Stop the engine (its units stop on fake time, unless ``leave_running``) and close the journal."""
        self.engine.stop(leave_running=leave_running)
        await self._run_until(self.task.done, 600.0)
        if not self.task.done():
            self.task.cancel()
        try:
            await self.task
        finally:
            self.journal.close()


async def start_rig(tmp_path: Path, config: str, *, policy: Policy | None = None,
                    prepare: Mapping[str, Any] | None = None,
                    backend_cls: type[FakeBackend] = FakeBackend, clock: FakeClock | None = None,
                    before_run: Callable[[Engine], None] | None = None) -> Rig:
    """Start an engine over ``config`` and return once its first starts are done (fake time stands still).

    ``prepare`` sets attributes of the fake backend (its fault hooks); ``before_run`` sees the engine
    before it runs (to put a web app in front of it, say).
    """
    counting_executor()  # before the engine's first to_thread, so that idle() sees every worker job
    loaded = load_text(config, tmp_path / "enmei.toml")
    loaded.state_dir.mkdir(parents=True, exist_ok=True)
    journal = Journal(loaded.journal_path).open()
    clock = clock or FakeClock()

    def fake(engine: Engine) -> FakeBackend:
        b = backend_cls(clock=engine.clock, state_dir=engine.state_dir, emit=engine.emit)
        for k, v in (prepare or {}).items():
            setattr(b, k, v)
        return b

    engine = Engine(loaded, journal=journal, clock=clock, policy=policy, backends={"process": fake})
    if before_run is not None:
        before_run(engine)
    rig = Rig(engine, clock, journal, asyncio.create_task(engine.run()))
    engine.subscribe(lambda seq, kind, unit, body: rig.records.append((seq, kind, unit, dict(body))))
    await rig.until(lambda: engine.started.is_set() and all(u.remedy is None or u.remedy.state != "pending"
                                                            for u in engine.units.values()))
    return rig
