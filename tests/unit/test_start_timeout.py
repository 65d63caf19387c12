"""A start that does not complete is a failed start (issue 14): whether the start remedy's deadline (or an
operator) cancels it inside the backend's start or during the hold after it, the instance is ended, the
failure is journaled (``start_failed``), the unit is EXITED, and the policy's restart with backoff
follows. Before, the unit was left STARTING with its instance running and nothing to finish or repair
it (the shipped policy does nothing on a failed repair of a unit that is alive).

A real engine over the fake process backend (a start made slow at its edge) and a fake clock; and the
real ``QemuBackend`` over fake QEMUs, whose start is cancelled while the guest boots.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from enmei.config.qemu import QemuUnit
from enmei.model import UnitEventKind, UnitState
from enmei.visor.base import Identity
from enmei.visor.fake import FakeBackend
from enmei.visor.qemu.fake import FakeWorld
from support.harness import Rig, start_rig
from unit.qemu.fakevm import SPEC, Supervisor, until

# start_s + restart.deadline_s = 2 s: the start remedy's deadline
CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[units.a.restart]
deadline_s = 1.0
backoff_first_s = 1.0
budget = 50
window_s = 3600
[units.a.escalate]
breaker_failures = 20
"""


class SlowStart(FakeBackend):
    """The fake backend whose starts take ``start_delay_s`` (a slow exec, a slow file system) before the
    process exists."""

    start_delay_s = 0.0

    async def start(self, name: str, spec: Any) -> Identity:
        await self.clock.sleep(self.start_delay_s)
        return await super().start(name, spec)


def _live(rig: Rig) -> list[int]:
    return [pid for pid in rig.backend.spawned if rig.backend.world[pid].alive]


async def _first_timeout(rig: Rig) -> dict[str, Any]:
    assert await rig.advance_until(lambda: any(b["action"] == "start" for b in rig.bodies("remedy.outcome", "a")), 10)
    (outcome,) = [b for b in rig.bodies("remedy.outcome", "a") if b["action"] == "start"]
    return outcome


async def test_a_start_whose_deadline_ends_its_hold_ends_the_instance_and_is_retried(tmp_path: Path) -> None:
    # the backend's start returns after 1.5 s, the hold (start_s = 1) would end at 2.5 s: past the deadline
    rig = await start_rig(tmp_path, CONFIG, backend_cls=SlowStart, prepare={"start_delay_s": 1.5})
    unit = rig.engine.units["a"]
    try:
        outcome = await _first_timeout(rig)
        first = rig.backend.spawned[0]
        assert outcome["state"] == "timed_out"
        # the old code: STARTING for good, its process alive, and no decision about it
        assert rig.states("a")[:3] == ["starting", "stopping", "exited"], rig.states("a")
        assert not rig.backend.world[first].alive
        failed = [b for b in rig.bodies("unit.event", "a") if b.get("event") == "start_failed"]
        assert failed and "cancelled before it held" in failed[0]["cause"]
        # the policy retries it as a failed start (a retry in the backoff streak; the restart's deadline has
        # room for the stop it may need, so this one holds), and no two instances ever ran at once
        assert await rig.advance_until(lambda: unit.state is UnitState.RUNNING, 30)
        restarts = [b for b in rig.bodies("decision", "a") if b["action"] == "restart"]
        assert restarts and restarts[0]["rule"] == "retry-after-failure"
        assert unit.crash_retries == 1
        assert len(rig.backend.spawned) == 2 and _live(rig) == [rig.backend.spawned[1]]
    finally:
        await rig.close()


async def test_a_start_whose_deadline_comes_inside_the_backend_is_a_failed_start(tmp_path: Path) -> None:
    # the backend's start takes 5 s: the deadline (2 s) cancels it before the process exists
    rig = await start_rig(tmp_path, CONFIG, backend_cls=SlowStart, prepare={"start_delay_s": 5.0})
    try:
        outcome = await _first_timeout(rig)
        assert outcome["state"] == "timed_out"
        assert rig.backend.spawned == []
        assert rig.states("a")[:2] == ["starting", "exited"], rig.states("a")  # (then the retry's)
        failed = [b for b in rig.bodies("unit.event", "a") if b.get("event") == "start_failed"]
        assert failed and "while the backend was starting it" in failed[0]["cause"]
        assert await rig.advance_until(
            lambda: any(b["action"] == "restart" for b in rig.bodies("decision", "a")), 30)
    finally:
        await rig.close()


def test_a_vm_start_is_bounded_beyond_its_ready_timeout() -> None:
    # the remedy's deadline must not end a boot the backend still waits for (ready_timeout_s): the
    # backend's own timeout names how far the guest got, and kills its QEMU
    for ready in (5.0, 60.0, 600.0):
        spec = QemuUnit.model_validate({"backend": "qemu", "ready_timeout_s": ready})
        assert spec.start_bound_s() > ready + spec.start_s


async def test_a_vm_start_cancelled_while_the_guest_boots_kills_its_qemu(tmp_path: Path) -> None:
    world = FakeWorld(tmp_path)
    world.boot_stops_at = "network"  # the guest is slow: it does not get ready while enmei waits
    sup = Supervisor(world, tmp_path / "state")
    try:
        task = asyncio.create_task(sup.backend.start("vm", SPEC))
        await until("the guest booting", lambda: any(q.phase == "network" for q in world.live()))
        (qemu,) = world.live()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()
        assert world.live() == [] and not qemu.alive  # killed by pid, not left to get ready later
        assert not sup.backend.alive("vm")
        assert sup.kinds() == [UnitEventKind.START_FAILED]
        assert "cancelled" in sup.events[-1].detail["cause"]
        # nothing of it stands in the way of the next start
        world.boot_stops_at = None
        ident = await sup.backend.start("vm", SPEC)
        standby = sup.standby_qemu()
        assert ident.pid != qemu.pid and sup.qemu().pid == ident.pid
        assert [q.pid for q in world.live() if standby is None or q is not standby] == [ident.pid]
    finally:
        await sup.close()
        await world.close()
