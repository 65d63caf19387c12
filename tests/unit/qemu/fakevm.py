"""A supervisor over fake QEMUs for the unit tests: one ``QemuBackend`` on its own ``FakeHost``,
saving the running instance's identity as the engine does (``Engine._on_unit_event``)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from enmei.clock import SystemClock
from enmei.config.qemu import QemuUnit
from enmei.model import UnitEvent, UnitEventKind, Verdict
from enmei.visor.base import Identity
from enmei.visor.qemu.backend import QemuBackend
from enmei.visor.qemu.fake import FakeHost, FakeQemu, FakeWorld

SPEC = QemuUnit.model_validate({"backend": "qemu", "forward": ["18080:80"], "phase_settle_s": 0.0,
                                "phase_standby_warm_rounds": 2, "ready_timeout_s": 10.0, "qmp_timeout_s": 2.0})


#: A failed standby's retry delays under test: as many steps as ``standby.RETRY_S``, each a few loop turns.
RETRY_S_FAST = (0.01, 0.02, 0.05)


class Supervisor:
    """One supervisor: its backend, the events and verdicts it saw, the identity it would have saved."""

    def __init__(self, world: FakeWorld, state_dir: Path) -> None:
        self.world = world
        self.host = FakeHost(world)
        self.events: list[UnitEvent] = []
        self.verdicts: list[Verdict] = []
        self.identity: Identity | None = None
        self.backend = QemuBackend(clock=SystemClock(), state_dir=state_dir, emit=self._emit,
                                   verdict=self.verdicts.append, host=self.host)
        # The real retry delays of a failed standby (2 s, 10 s, 60 s) are part of what some tests see: the
        # same ladder, small, so that no test sleeps for real seconds to see a retry.
        self.backend.standbys.retry_s = RETRY_S_FAST

    def _emit(self, ev: UnitEvent) -> None:
        self.events.append(ev)
        if ev.kind is UnitEventKind.STARTED:
            self.identity = self.backend.identity(ev.unit)

    def kinds(self) -> list[UnitEventKind]:
        return [e.kind for e in self.events]

    def qemu(self, name: str = "vm") -> FakeQemu:
        """The fake QEMU of the unit's machine now."""
        return self.world.qemus[self.backend._vms[name].pid]

    def standby_qemu(self, name: str = "vm") -> FakeQemu | None:
        sb = self.backend.standbys.standbys.get(name)
        if sb is None or sb.machine is None:
            return None
        return self.world.qemus[sb.machine.pid]

    async def forget(self) -> None:
        """What a killed supervisor leaves: its tasks end, its connections close; the QEMUs run on."""
        self.host.die()
        b = self.backend
        tasks = [t for t in (*b._background, *b.standbys._background,
                             *(sb.task for sb in b.standbys.standbys.values())) if t is not None]
        machines = [*b._vms.values(), *(sb.machine for sb in b.standbys.standbys.values() if sb.machine)]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for m in machines:
            with contextlib.suppress(BaseException):
                await m.detach()

    async def close(self) -> None:
        with contextlib.suppress(BaseException):
            for name in list(self.backend._vms):
                await self.backend.stop(name, timeout_s=1.0)
            await self.backend.close()


async def until(what: str, cond: object, timeout_s: float = 10.0) -> None:
    """Wait (event loop turns, bounded) until ``cond()`` is true."""
    assert callable(cond)
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout_s
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)
