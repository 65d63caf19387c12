"""One unit under a real engine, over each backend, driven the same way by the contract tests.

* ``FakeDriver``: the fake process backend and a fake clock (``support.harness``): no processes, no
  real waiting.
* ``ProcessDriver``: the real process backend, a real ``sleep`` process, the real clock.
* ``QemuDriver``: the real QEMU backend under TCG with the demo guest image (built once, cached).

Each driver reaps what it started — units left running for adoption, QEMU processes — also when a test
fails, by pid (checked against the process's start time) or by its state directory on the command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil

from enmei.box import Journal
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.demo.ports import free_ports
from enmei.engine import Engine, journal_for
from enmei.model import UnitState
from support.harness import Rig, start_rig
from support.qemu import our_qemus
from support.wait import auntil, scaled

UNIT = "u"


class Driver:
    """A supervisor of one unit ``u``; a test may restart the supervisor (``restart_engine``)."""

    name = "?"
    #: how long (seconds of the driver's clock, before ``scaled``) one lifecycle step may take
    step_s = 30.0

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        #: the unit's states in the order each engine entered them, one list per engine run
        self.runs: list[list[str]] = []

    # -- what every driver provides ----------------------------------------------------------------

    def config(self) -> str:
        raise NotImplementedError

    async def start_engine(self) -> None:
        raise NotImplementedError

    async def stop_engine(self, *, leave_running: bool = False) -> None:
        raise NotImplementedError

    async def wait(self, what: str, pred: Any) -> None:
        raise NotImplementedError

    def kill_unit(self) -> None:
        """SIGKILL the unit from outside the supervisor."""
        raise NotImplementedError

    async def close(self) -> None:
        """Stop the engine if it runs and end everything the driver started."""
        raise NotImplementedError

    @property
    def engine(self) -> Engine:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------

    def _subscribe(self, engine: Engine) -> None:
        states: list[str] = []
        self.runs.append(states)
        engine.subscribe(lambda _s, kind, unit, body: states.append(body["to"])
                         if kind == "unit.state" and unit == UNIT else None)

    @property
    def states(self) -> list[str]:
        """The states the current engine run entered."""
        return self.runs[-1]

    def pid(self) -> int:
        ident = self.engine.units[UNIT].backend.identity(UNIT)
        assert ident is not None, f"{self.name}: unit has no identity"
        return int(ident.pid)

    async def settled(self, state: UnitState) -> None:
        """Wait until the unit is in ``state`` with no remedy under way."""
        unit = self.engine.units[UNIT]
        await self.wait(f"unit {state}", lambda: unit.state is state and unit.remedy is None)

    def command(self, action: str) -> None:
        self.engine.submit(action, UNIT, {})


class FakeDriver(Driver):
    name = "fake"
    step_s = 300.0  # fake seconds: costs no real time

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self.rig: Rig | None = None

    def config(self) -> str:
        return f"""
[units.{UNIT}]
command = ["/bin/sleep", "3600"]
start_s = 0.5
stop_timeout_s = 2
[units.{UNIT}.restart]
reset_after_s = 1  # the exit scenario waits this long: a unit that proved itself is restarted at once
"""

    @property
    def engine(self) -> Engine:
        assert self.rig is not None
        return self.rig.engine

    async def start_engine(self) -> None:
        self.rig = await start_rig(self.tmp_path, self.config())
        self._subscribe(self.rig.engine)
        # what start_rig saw before we subscribed: replay it from its own record list
        self.states[:0] = [b["to"] for _, k, u, b in self.rig.records if k == "unit.state" and u == UNIT]

    async def stop_engine(self, *, leave_running: bool = False) -> None:
        assert self.rig is not None
        rig, self.rig = self.rig, None
        await rig.close(leave_running=leave_running)

    async def wait(self, what: str, pred: Any) -> None:
        assert self.rig is not None
        assert await self.rig.advance_until(pred, self.step_s), f"fake: no {what} within {self.step_s} fake s"

    def kill_unit(self) -> None:
        assert self.rig is not None
        self.rig.backend.crash(UNIT, sig=signal.SIGKILL)

    async def close(self) -> None:
        if self.rig is not None:
            await self.stop_engine()


class RealDriver(Driver):
    """A real engine on the real clock; subclasses name the unit and how its processes are found."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(tmp_path)
        self._engine: Engine | None = None
        self._task: asyncio.Task[None] | None = None
        self._journal: Journal | None = None
        self._pids: set[tuple[int, float]] = set()
        self._children: list[subprocess.Popen[bytes]] = []

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    async def start_engine(self) -> None:
        loaded = load_text(self.config(), self.tmp_path / "enmei.toml")
        self._journal = journal_for(loaded).open()
        self._engine = Engine(loaded, journal=self._journal)
        self._subscribe(self._engine)
        self._task = asyncio.create_task(self._engine.run())
        await self.wait("the engine started", lambda: self.engine.started.is_set() or self._task_done())
        assert not self._task_done(), "the engine ended at start"
        self._remember()

    def _task_done(self) -> bool:
        return self._task is not None and self._task.done()

    def _remember(self) -> None:
        with contextlib.suppress(Exception):
            pid = self.pid()
            self._pids.add((pid, psutil.Process(pid).create_time()))

    async def stop_engine(self, *, leave_running: bool = False) -> None:
        assert self._engine is not None and self._task is not None and self._journal is not None
        self._remember()
        if leave_running:
            # Our process stays the parent of a unit left running: keep its Popen to reap it at the end
            # (a Popen collected while its child runs is a ResourceWarning). The backend's table is private.
            for unit in self._engine.units.values():
                self._children += [r.popen for r in getattr(unit.backend, "_units", {}).values()
                                   if getattr(r, "popen", None) is not None]
        self._engine.stop(leave_running=leave_running)
        try:
            await wait_for(self._task, scaled(max(60.0, 2 * self.step_s)))
        finally:
            self._journal.close()
            self._engine = self._task = self._journal = None

    async def wait(self, what: str, pred: Any) -> None:
        def check() -> bool:
            if self._task is not None and self._task.done() and self._task.exception() is not None:
                raise AssertionError(f"{self.name}: the engine died: {self._task.exception()!r}")
            return bool(pred())

        await auntil(check, self.step_s, f"{self.name}: {what} (states so far: {self.runs})")
        self._remember()

    def kill_unit(self) -> None:
        self._remember()
        os.kill(self.pid(), signal.SIGKILL)

    def strays(self) -> list[psutil.Process]:
        """Processes this driver started that still run."""
        out = []
        for pid, created in self._pids:
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    async def close(self) -> None:
        try:
            if self._engine is not None:
                await self.stop_engine()
        finally:
            for p in self.strays():
                with contextlib.suppress(psutil.Error, ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGKILL)
            for child in self._children:
                with contextlib.suppress(ChildProcessError, subprocess.TimeoutExpired):
                    child.wait(timeout=scaled(10.0))


class ProcessDriver(RealDriver):
    name = "process"
    step_s = 30.0

    def config(self) -> str:
        return f"""
[units.{UNIT}]
command = ["{sys.executable}", "-c", "import time; time.sleep(3600)"]
start_s = 0.5
stop_timeout_s = 5
[units.{UNIT}.restart]
reset_after_s = 1  # the exit scenario waits this long: a unit that proved itself is restarted at once
"""


class QemuDriver(RealDriver):
    name = "qemu"
    step_s = 120.0  # a boot under TCG on a loaded machine

    def __init__(self, tmp_path: Path, image: str) -> None:
        super().__init__(tmp_path)
        self.image = image
        (self.port,) = free_ports(1)

    def config(self) -> str:
        return f"""
[supervisor]
state_dir = "state"

[units.{UNIT}]
backend = "qemu"
image = "{self.image}"
accel = "tcg"
forward = ["{self.port}:80"]
ready_timeout_s = {scaled(60.0):.0f}
start_s = 0.5
stop_timeout_s = 10
phase_standby = false
[units.{UNIT}.restart]
reset_after_s = 1  # the exit scenario waits this long: a unit that proved itself is restarted at once
"""

    def strays(self) -> list[psutil.Process]:
        """Also every QEMU whose command line names this test's directory."""
        found = {p.pid: p for p in super().strays()}
        found.update((p.pid, p) for p in our_qemus(str(self.tmp_path)))
        return list(found.values())

