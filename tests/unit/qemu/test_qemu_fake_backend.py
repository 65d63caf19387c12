"""The QEMU backend's standby, takeover and adoption logic over scripted QEMUs (``visor.qemu.fake``):
the real backend, machine, standby manager and QMP client; only the host's I/O is fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from enmei.errors import StartError, VisorError
from enmei.model import UnitEventKind, VerdictKind
from enmei.visor.qemu.errors import BootError, QmpError
from enmei.visor.qemu.fake import FakeWorld
from enmei.visor.qemu.standby import RETRY_S, StandbyState

from .fakevm import SPEC, Supervisor, until


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[FakeWorld]:
    w = FakeWorld(tmp_path)
    try:
        yield w
    finally:
        await w.close()


@pytest.fixture
async def sup(world: FakeWorld, tmp_path: Path) -> AsyncIterator[Supervisor]:
    s = Supervisor(world, tmp_path / "state")
    try:
        yield s
    finally:
        await s.close()


async def test_start_takes_the_phase_snapshot_then_opens_the_gate_and_prepares_a_warm_standby(
        sup: Supervisor, world: FakeWorld) -> None:
    identity = await sup.backend.start("vm", SPEC)
    assert sup.kinds() == [UnitEventKind.STARTED]
    primary = sup.qemu()
    assert identity.pid == primary.pid and identity.extra["data_disk"] == "raw-shared"
    assert sup.events[0].detail["phase_snapshot"] == "enmei-phase-service-ready"
    assert "snapshot-save" in primary.commands
    assert await sup.backend.wait_standby("vm", 10.0)
    standby = sup.standby_qemu()
    assert standby is not None and standby.status == "paused" and standby.phase == "service-ready"
    status = sup.backend.standby("vm")
    assert status is not None and status["slot"] == "a" and status["warm_requests"] == 4
    # the standby was loaded from the phase image, and it never passed its gate
    assert standby.commands[:3] == ["query-cpus-fast", "query-status", "snapshot-load"]
    assert world.disk_users() == [primary]


async def test_a_phase_reboot_opens_the_standbys_gate_only_after_the_failed_qemu_is_gone(
        sup: Supervisor, world: FakeWorld) -> None:
    await sup.backend.start("vm", SPEC)
    assert await sup.backend.wait_standby("vm", 10.0)
    old, standby = sup.qemu(), sup.standby_qemu()
    assert standby is not None
    at_cont: list[tuple[bool, bool, bool]] = []
    gone_at_gate: list[bool] = []

    def before(host: object, op: str, qemu: object, detail: str) -> None:
        if qemu is standby and detail == "cont":
            at_cont.append((old.alive, old.status == "running", 18080 in old.hostfwds))
        if qemu is standby and op == "knock":
            gone_at_gate.append(not old.alive)

    world.before = before
    old.panic()
    await until("the panic verdict", lambda: sup.verdicts)
    assert sup.verdicts[0].kind is VerdictKind.PANIC and sup.verdicts[0].evidence["pid"] == old.pid
    await sup.backend.phase_reboot("vm", wait_data=True)
    # the standby resumes before the failed QEMU's end (its exit is off the interruption), the failed
    # (panicked) guest's port given up; the disk rule: the gate opens only once it is gone
    assert at_cont == [(True, False, False)]
    assert gone_at_gate and all(gone_at_gate)
    report = sup.backend.reboot_report("vm")
    assert report is not None and report["via"] == "standby" and report["replaced_pid"] == old.pid
    started = sup.events[-1]
    assert started.kind is UnitEventKind.STARTED and started.detail["via"] == "phase-standby"
    assert sup.qemu() is standby and standby.status == "running" and not old.alive
    assert world.disk_users() == [standby]
    assert standby.console == sup.backend.log_path("vm", "console")  # its console moved to the unit's
    assert sup.identity is not None and sup.identity.pid == standby.pid and sup.identity.extra["slot"] == "a"
    # no STOPPED/EXITED for the replaced QEMU; the next standby comes in the other slot
    assert UnitEventKind.EXITED not in sup.kinds()
    assert await sup.backend.wait_standby("vm", 10.0)
    assert (sup.backend.standby("vm") or {})["slot"] == "b"
    assert {q.pid for q in world.live()} == {standby.pid, sup.standby_qemu().pid}  # type: ignore[union-attr]


async def test_an_unusable_standby_is_left_alone_and_the_snapshot_is_loaded_in_place(
        sup: Supervisor, world: FakeWorld) -> None:
    await sup.backend.start("vm", SPEC)
    assert await sup.backend.wait_standby("vm", 10.0)
    old, standby = sup.qemu(), sup.standby_qemu()
    assert standby is not None
    standby.status = "running"  # not paused: something else ran it
    old.panic()
    await sup.backend.phase_reboot("vm", wait_data=True)
    report = sup.backend.reboot_report("vm") or {}
    assert report["via"] == "in-place" and "not paused" in report["standby_unusable"]
    assert sup.qemu() is old and old.status == "running" and not standby.alive
    assert world.disk_users() == [old]


async def test_a_standby_that_dies_is_made_again(sup: Supervisor, world: FakeWorld) -> None:
    # The phase reboot below must fall inside the retry delay: this test keeps the real first delay (2 s).
    sup.backend.standbys.retry_s = RETRY_S
    await sup.backend.start("vm", SPEC)
    assert await sup.backend.wait_standby("vm", 10.0)
    first = sup.standby_qemu()
    assert first is not None
    first.exit()
    await until("a failed standby", lambda: (sup.backend.standby("vm") or {}).get("state") == "failed")
    # retried after RETRY_S[0] = 2 s; meanwhile a phase reboot loads the snapshot in place
    sup.qemu().panic()
    await sup.backend.phase_reboot("vm")
    assert (sup.backend.reboot_report("vm") or {}).get("standby") == str(StandbyState.FAILED)
    assert await sup.backend.wait_standby("vm", 10.0)
    again = sup.standby_qemu()
    assert again is not None and again.alive and again is not first


async def test_adoption_takes_the_qemu_over_and_kills_the_standby_of_the_dead_supervisor(
        world: FakeWorld, tmp_path: Path) -> None:
    first = Supervisor(world, tmp_path / "state")
    await first.backend.start("vm", SPEC)
    assert await first.backend.wait_standby("vm", 10.0)
    primary, standby = first.qemu(), first.standby_qemu()
    assert standby is not None and first.identity is not None
    await first.forget()
    second = Supervisor(world, tmp_path / "state")
    try:
        assert await second.backend.adopt("vm", SPEC, first.identity)
        assert second.kinds() == [UnitEventKind.ADOPTED] and not standby.alive
        assert second.backend._vms["vm"].phase_snapshot == "enmei-phase-service-ready"
        assert await second.backend.wait_standby("vm", 10.0)  # its own standby
        assert {q.pid for q in world.live()} == {primary.pid, second.standby_qemu().pid}  # type: ignore[union-attr]
        assert world.disk_users() == [primary]
    finally:
        await second.close()


async def test_an_identity_whose_pid_is_another_process_is_not_adopted(
        world: FakeWorld, tmp_path: Path) -> None:
    first = Supervisor(world, tmp_path / "state")
    await first.backend.start("vm", SPEC)
    assert first.identity is not None
    await first.forget()
    first.qemu().exit()
    second = Supervisor(world, tmp_path / "state")
    try:
        assert not await second.backend.adopt("vm", SPEC, first.identity)  # gone
        await second.backend.start("vm", SPEC)  # and started afresh: any stray of the unit is reaped
        assert [q.pid for q in world.live() if q.status == "running"] == [second.qemu().pid]
    finally:
        await second.close()


async def test_a_guest_that_never_reaches_service_ready_is_a_typed_boot_error(
        sup: Supervisor, world: FakeWorld) -> None:
    world.boot_stops_at = "network"
    with pytest.raises(StartError, match="service-ready") as info:
        await sup.backend.start("vm", SPEC.model_copy(update={"ready_timeout_s": 0.5}))
    cause = info.value.__cause__
    assert isinstance(cause, BootError) and cause.phase == "service-ready" and not cause.exited
    assert "phases seen: kernel, userspace, network" in str(info.value)  # it says how far the guest got
    assert sup.kinds() == [UnitEventKind.START_FAILED]
    assert world.live() == [] and "vm" not in sup.backend._vms


async def test_qmp_failures_are_qmp_errors_with_qemus_own_words(sup: Supervisor, world: FakeWorld) -> None:
    await sup.backend.start("vm", SPEC)
    qmp = sup.backend._vms["vm"].qmp()
    with pytest.raises(QmpError, match="CommandNotFound: The command no-such has not been found"):
        await qmp.execute("no-such")
    sup.qemu().panic()
    with pytest.raises(QmpError, match="GenericError: Resetting the Virtual Machine is required"):
        await qmp.execute("cont")
    await sup.backend.cold_reboot("vm")  # reset, boot again, data disk mounted again
    assert sup.qemu().status == "running" and world.disk_users() == [sup.qemu()]
    sup.qemu().exit()
    await until("the exit", lambda: UnitEventKind.EXITED in sup.kinds())
    with pytest.raises(QmpError):
        await qmp.execute("query-status")
    assert sup.events[-1].detail["reason"] == "killed (no SHUTDOWN event)"


async def test_a_whole_state_restore_replaces_the_qemu_and_a_clone_runs_beside_it(
        sup: Supervisor, world: FakeWorld, tmp_path: Path) -> None:
    await sup.backend.start("vm", SPEC)
    assert await sup.backend.wait_standby("vm", 10.0)
    first = sup.qemu()
    saved = tmp_path / "saves" / "vm.state"
    await sup.backend.state_save("vm", saved)
    assert first.status == "running"  # paused for the end of the migration, then run on
    assert all(p.exists() for p in (saved, saved.with_name("vm.state.sys.qcow2"),
                                    saved.with_name("vm.state.data.img"), saved.with_name("vm.state.json")))
    await sup.backend.state_restore("vm", saved)
    restored = sup.qemu()
    assert restored is not first and not first.alive and restored.status == "running"
    assert sup.events[-1].kind is UnitEventKind.STARTED and sup.events[-1].detail["via"] == "state-restore"
    assert UnitEventKind.STOPPED not in sup.kinds()  # the replaced QEMU is quit quietly
    assert sup.backend._vms["vm"].phase_snapshot == "enmei-phase-service-ready"  # its snapshot disk came along
    identity = await sup.backend.clone("vm", "copy")
    copy = world.qemus[identity.pid]
    assert sup.events[-1].detail == {"pid": copy.pid, "accel": "tcg", "via": "clone", "clone_of": "vm"}
    assert copy.hostfwds == set() and restored.hostfwds == {18080}  # a clone forwards no port
    assert copy.alive and restored.alive and copy.mounted  # its RAM holds its own mounted copy of the disk
    with pytest.raises(VisorError, match="unreadable"):
        await sup.backend.state_restore("vm", tmp_path / "no-such.state")


async def test_a_takeover_that_fails_after_the_old_qemu_is_gone_says_the_unit_exited(
        sup: Supervisor, world: FakeWorld) -> None:
    await sup.backend.start("vm", SPEC)
    assert await sup.backend.wait_standby("vm", 10.0)
    old, standby = sup.qemu(), sup.standby_qemu()
    assert standby is not None

    def before(host: object, op: str, qemu: object, detail: str) -> None:
        if qemu is standby and detail == "cont":
            raise ConnectionResetError("the standby's QMP connection broke")

    world.before = before
    old.panic()
    with pytest.raises(VisorError, match="the standby could not take over"):
        await sup.backend.phase_reboot("vm")
    exited = sup.events[-1]
    assert exited.kind is UnitEventKind.EXITED and exited.detail["pid"] == old.pid
    assert "through the standby failed" in exited.detail["reason"]
    assert world.live() == [] and not sup.backend.alive("vm")  # nothing left half-running


async def test_a_cancelled_phase_reboot_still_finishes_its_takeover(sup: Supervisor, world: FakeWorld) -> None:
    await sup.backend.start("vm", SPEC)
    assert await sup.backend.wait_standby("vm", 10.0)
    old, standby = sup.qemu(), sup.standby_qemu()
    assert standby is not None
    reboot = asyncio.ensure_future(sup.backend.phase_reboot("vm"))

    def before(host: object, op: str, qemu: object, detail: str) -> None:
        if op == "kill" and qemu is old:
            reboot.cancel()  # (the remedy's deadline, the engine stopping...) right at the old QEMU's kill

    world.before = before
    old.panic()
    with pytest.raises(asyncio.CancelledError):
        await reboot
    world.before = None
    # not left half-done: the standby runs as the unit's machine, its gate is opened
    assert not old.alive and sup.qemu() is standby and standby.status == "running"
    await until("the data disk", lambda: world.disk_users() == [standby])


async def test_a_standby_whose_service_does_not_answer_is_retried(sup: Supervisor, world: FakeWorld) -> None:
    def before(host: object, op: str, qemu: object, detail: str) -> None:
        if op == "http":
            raise ConnectionRefusedError("nothing answers")

    world.before = before
    # What is asserted between the failure and the retry needs the retry to wait: the real delay (2 s).
    sup.backend.standbys.retry_s = RETRY_S
    await sup.backend.start("vm", SPEC)
    await until("a failed standby", lambda: (sup.backend.standby("vm") or {}).get("state") == "failed")
    status = sup.backend.standby("vm") or {}
    assert "did not answer" in status["error"] and status["attempts"] == 1
    assert [q.pid for q in world.live()] == [sup.qemu().pid]  # the failed standby's QEMU is gone
    world.before = None
    assert await sup.backend.wait_standby("vm", 10.0)  # retried after retry_s[0]
    assert (sup.backend.standby("vm") or {})["attempts"] == 1
