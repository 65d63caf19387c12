"""Guest panics seen through QMP, phase-based and cold reboot, and what happens to the data disk."""

from __future__ import annotations

import asyncio

import pytest

from enmei.model import Severity, UnitEventKind, VerdictKind

from .conftest import VmHarness, http_get, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


async def _panic(port: int) -> None:
    with pytest.raises((OSError, TimeoutError)):
        await http_get(port, "/cgi-bin/fault?panic=1", 1.0)


async def test_panic_verdict_phase_reboot_keeps_data_cold_reboot_too(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec = vmh.spec()
    port = int(spec.forward[0].split(":")[0])
    await b.start("vm", spec)
    assert await http_get(port, "/cgi-bin/data?put=before-fault") == (200, "stored\n")
    assert await http_get(port, "/cgi-bin/fault?latency=600") == (200, "ok latency\n")

    # kernel panic (sysrq c) -> pvpanic -> QMP GUEST_PANICKED -> a PANIC verdict; QEMU stays up
    await _panic(port)
    await vmh.wait_for("a panic verdict", lambda: vmh.verdicts)
    v = vmh.verdicts[0]
    assert (v.unit, v.kind, v.severity, v.detector) == ("vm", VerdictKind.PANIC, Severity.CRITICAL,
                                                         "qemu.pvpanic")
    assert v.evidence["action"] == "pause" and v.evidence["phase_snapshot"] == "enmei-phase-service-ready"
    assert "Kernel panic - not syncing" in v.evidence["panic_message"]
    assert len(v.evidence["console_tail"]) == 15
    assert b.alive("vm") and vmh.kinds("vm") == [UnitEventKind.STARTED]  # not a unit event
    assert (await b.stats("vm"))["panicked"] == 1
    assert any(e[1] == "GUEST_PANICKED" for e in b.events("vm"))
    with pytest.raises((OSError, TimeoutError)):
        await http_get(port, "/cgi-bin/app", 0.5)

    # phase-based reboot: the guest is back at service-ready of its first boot, in well under a second
    took = await b.phase_reboot("vm", wait_data=True)
    assert took < 10
    loop = asyncio.get_running_loop()
    t = loop.time()
    assert (await until_answer(port)).startswith("enmei-demo")
    assert loop.time() - t < 0.6  # the latency knob was set after the snapshot: RAM went back
    # The data disk is not in the snapshot: what the service synced before the fault is still there.
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before-fault\n"
    assert await http_get(port, "/cgi-bin/data?put=after-phase-reboot") == (200, "stored\n")
    assert (await b.stats("vm"))["panicked"] == 0

    # a second panic, repaired by a cold reboot: the guest boots again, data kept as well
    await _panic(port)
    await vmh.wait_for("a second verdict", lambda: len(vmh.verdicts) == 2)
    took = await b.cold_reboot("vm")
    assert took > 0
    assert next(iter(b.phases("vm"))) == "kernel"
    assert (await until_answer(port)).startswith("enmei-demo")
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before-fault\nafter-phase-reboot\n"
    stats = await b.stats("vm")
    assert stats["panics"] == 2 and stats["resets"] >= 1

    # the phase snapshot taken at the first boot still serves after a cold reboot
    await b.phase_reboot("vm", wait_data=True)
    assert (await until_answer(port)).startswith("enmei-demo")
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before-fault\nafter-phase-reboot\n"
    assert vmh.kinds("vm") == [UnitEventKind.STARTED]

    # a panicked guest cannot act on the power button: stop goes straight to quit
    await _panic(port)
    await vmh.wait_for("a third verdict", lambda: len(vmh.verdicts) == 3)
    t = loop.time()
    await b.stop("vm", timeout_s=30)
    assert loop.time() - t < 5
    assert vmh.kinds("vm") == [UnitEventKind.STARTED, UnitEventKind.STOPPED]
    assert vmh.events[-1].detail["reason"] == "host-qmp-quit"


async def test_panic_that_ends_qemu_is_an_exit_with_its_reason(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec = vmh.spec(panic_action="exit", phase_snapshot=None)
    port = int(spec.forward[0].split(":")[0])
    await b.start("vm", spec)
    assert vmh.events[0].detail["phase_snapshot"] is None
    await _panic(port)
    await vmh.wait_for("EXITED", lambda: UnitEventKind.EXITED in vmh.kinds("vm"))
    exited = vmh.events[-1]
    assert exited.detail["reason"] == "guest-panicked"
    assert "Kernel panic - not syncing" in exited.detail["panic_message"]
    assert vmh.verdicts == []  # QEMU did not stay up: the exit is the fact
    assert not b.alive("vm")
