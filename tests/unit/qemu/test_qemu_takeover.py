"""A supervisor killed at each step of a warm-standby takeover (and of the work right after it): the
next supervisor, given the identity the engine had saved, ends with exactly one QEMU running the unit's
guest (adopted or started afresh, said by its first event), no other QEMU but its own standby, and at
most one guest that has the data disk mounted — the unit's own, once it is repaired."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from enmei.model import UnitEventKind, VerdictKind
from enmei.visor.qemu.fake import FakeHost, FakeQemu, FakeWorld, SupervisorDied

from .fakevm import SPEC, Supervisor, until

# The takeover's operations on the host, in order, for a panicked guest (a hung one also gets a
# ``stop`` before its kill). Steps past them fall in the work after it: the gate, the next standby.
# The old QEMU lets the unit's port go (hostfwd_remove), the new one takes it and resumes, and only then
# is the old QEMU paused and killed: its exit is off the interruption.
TAKEOVER_PANICKED = [("qmp", "new", "query-status"), ("qmp", "old", "human-monitor-command"),
                     ("qmp", "new", "human-monitor-command"), ("qmp", "new", "cont"), ("kill", "old", ""),
                     ("qmp", "new", "chardev-change")]
TAKEOVER_HUNG = [*TAKEOVER_PANICKED[:4], ("qmp", "old", "stop"), *TAKEOVER_PANICKED[4:]]
STEPS = range(len(TAKEOVER_HUNG) + 9)


def expected_outcome(fault: str, step: int) -> str:
    """Killed before the new QEMU holds the unit's port: the old QEMU is adopted (its port given back
    if it had let it go). From then on, before ``STARTED`` named the standby (it comes right after the
    last step): the standby is adopted through the takeover record (``recover``, which ends the old QEMU
    if it still runs; the code before it started the unit afresh, killing the standby). Later: the
    standby that took over is adopted by its saved identity."""
    ops = TAKEOVER_PANICKED if fault == "panic" else TAKEOVER_HUNG
    if step <= ops.index(("qmp", "new", "human-monitor-command")):
        return "old adopted"
    return "standby recovered" if step < len(ops) else "standby adopted"


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[FakeWorld]:
    loop = asyncio.get_running_loop()

    def quiet_deaths(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # a background task of the killed supervisor ended by its death: not an error of the code
        if not isinstance(context.get("exception"), SupervisorDied):
            loop.default_exception_handler(context)

    loop.set_exception_handler(quiet_deaths)
    w = FakeWorld(tmp_path)
    try:
        yield w
    finally:
        await w.close()
        loop.set_exception_handler(None)


async def _ready(world: FakeWorld, state: Path) -> tuple[Supervisor, FakeQemu, FakeQemu]:
    first = Supervisor(world, state)
    await first.backend.start("vm", SPEC)
    assert await first.backend.wait_standby("vm", 10.0)
    standby = first.standby_qemu()
    assert standby is not None
    return first, first.qemu(), standby


def _record(first: Supervisor, old: FakeQemu, new: FakeQemu, die_at: int | None,
            ops: list[tuple[str, str, str]]) -> None:
    def name(q: FakeQemu | None) -> str:
        return "old" if q is old else "new" if q is new else "other" if q is not None else "-"

    def before(host: FakeHost, op: str, qemu: FakeQemu | None, detail: str) -> None:
        if host is not first.host:
            return
        ops.append((op, name(qemu), detail))
        if die_at is not None and len(ops) > die_at:
            host.die()
            raise SupervisorDied(op)

    first.world.before = before


async def test_the_takeover_steps_are_these(world: FakeWorld, tmp_path: Path) -> None:
    first, old, new = await _ready(world, tmp_path / "state")
    ops: list[tuple[str, str, str]] = []
    old.panic()
    _record(first, old, new, None, ops)
    await first.backend.phase_reboot("vm")
    assert ops[:len(TAKEOVER_PANICKED)] == TAKEOVER_PANICKED
    await until("the gate", lambda: new.mounted)
    assert ("knock", "new", "") in ops[len(TAKEOVER_PANICKED):]  # only after the old QEMU is gone
    await first.close()


@pytest.mark.parametrize("fault", ["panic", "hang"])
@pytest.mark.parametrize("step", STEPS)
async def test_a_supervisor_killed_during_a_takeover_leaves_a_state_the_next_one_repairs(
        world: FakeWorld, tmp_path: Path, fault: str, step: int) -> None:
    state = tmp_path / "state"
    first, old, new = await _ready(world, state)
    if fault == "panic":
        old.panic()  # (a hang: the guest runs on, its service does not answer; nothing to script)
    ops: list[tuple[str, str, str]] = []
    _record(first, old, new, step, ops)
    try:
        await first.backend.phase_reboot("vm")
        # it dies in the gate's or the next standby's work, or it gets through
        await until("the first supervisor's end", lambda: first.host.dead or (
            new.mounted and (first.backend.standby("vm") or {}).get("state") == "ready"))
    except SupervisorDied:
        pass
    assert first.host.dead == (step < len(ops)), ops  # (it died in a background task too, or never)
    world.before = None
    saved = first.identity
    assert saved is not None
    await first.forget()

    second = Supervisor(world, state)
    try:
        # as the engine does: the saved identity, else a takeover the first one died in, else a start
        adopted = await second.backend.adopt("vm", SPEC, saved)
        recovered = None if adopted else await second.backend.recover("vm", SPEC)
        if not adopted and recovered is None:
            await second.backend.start("vm", SPEC)
        # a clear outcome: the first event says which
        assert second.kinds()[0] is (UnitEventKind.ADOPTED if adopted or recovered else UnitEventKind.STARTED)
        unit = second.qemu()
        if adopted:
            assert unit.pid == saved.pid
        outcome = ("standby recovered" if recovered else "started afresh") if not adopted else \
            "old adopted" if unit is old else "standby adopted"
        assert outcome == expected_outcome(fault, step), ops
        if recovered is not None:  # the standby, resumed, behind the unit's port; the old QEMU is gone
            assert unit is new and recovered.pid == new.pid and not old.alive and unit.status == "running"
            assert second.events[0].detail.get("took_over") and 18080 in unit.hostfwds
        if unit is old:  # the supervisor died before the old QEMU was killed
            assert ("kill", "old", "") not in ops[:step]
            assert 18080 in unit.hostfwds  # given back if it had let it go
            if fault == "panic":  # the panic is reported again, and repaired as the policy decides
                assert [v.kind for v in second.verdicts] == [VerdictKind.PANIC]
                await second.backend.phase_reboot("vm")
            else:
                assert unit.status == "running"  # paused to drain its I/O, resumed when adopted
        await second.backend._vms["vm"].wait_phase("data-ready", since=0.0, timeout_s=10.0, what="test")
        unit = second.qemu()
        assert await second.backend.wait_standby("vm", 10.0)
        standby = second.standby_qemu()
        assert standby is not None and standby.status == "paused" and not standby.mounted
        # no duplicate, no orphan: the unit's QEMU and its standby, nothing else
        assert {q.pid for q in world.live()} == {unit.pid, standby.pid}
        assert world.disk_users() == [unit]
        assert len([q for q in world.live() if 18080 in q.hostfwds]) == 1
    finally:
        await second.close()
