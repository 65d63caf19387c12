"""Bad input and failures: bounded waits, typed errors, and the backend keeps serving other units."""

from __future__ import annotations

import asyncio
import os
import signal
import socket

import pytest

from enmei.errors import StartError, VisorError
from enmei.model import UnitEventKind
from enmei.visor.qemu import QmpError
from support.wait import scaled

from .conftest import VmHarness, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


async def test_guest_that_never_reaches_service_ready(vmh: VmHarness) -> None:
    b = vmh.backend()
    # The bound must leave a loaded machine's guest time to reach its network phase (the message says how
    # far it got), and the wait must end at that bound, not run on.
    ready_s = scaled(15.0)
    spec = vmh.spec(kernel_args=["enmei.noservice=1"], ready_timeout_s=ready_s)
    loop = asyncio.get_running_loop()
    t = loop.time()
    with pytest.raises(StartError, match="service-ready") as info:
        await b.start("vm", spec)
    assert ready_s <= loop.time() - t < 2 * ready_s
    assert "phases seen:" in str(info.value)  # it says how far the guest got (how far depends on the load)
    assert vmh.kinds("vm") == [UnitEventKind.START_FAILED]
    assert not b.alive("vm") and vmh.our_qemus() == []


async def test_start_refusals_name_their_cause(vmh: VmHarness) -> None:
    with pytest.raises(StartError, match="enmei image build"):
        await vmh.backend().start("vm", vmh.spec(image="no-such-image"))
    with pytest.raises(StartError, match="apt-get install -y qemu-system-x86"):
        await vmh.backend(binary="qemu-system-nonexistent").start("vm", vmh.spec())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(StartError, match=f"127.0.0.1:{busy} is in use"):
            await vmh.backend().start("vm", vmh.spec(forward=[f"{busy}:80"]))
    with pytest.raises(StartError, match="not a qemu unit"):
        await vmh.backend().start("vm", object())
    assert vmh.kinds("vm") == [UnitEventKind.START_FAILED] * 3
    assert vmh.our_qemus() == []


async def test_dead_qmp_and_corrupt_snapshot_leave_other_units_served(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec_a = vmh.spec(qmp_timeout_s=2.0)
    spec_b = vmh.spec(qmp_timeout_s=2.0)
    port_b = int(spec_b.forward[0].split(":")[0])
    a = await b.start("a", spec_a)
    await b.start("b", spec_b)
    loop = asyncio.get_running_loop()

    # A hangs (SIGSTOP): its QMP calls fail after the bound, B answers meanwhile.
    os.kill(a.pid, signal.SIGSTOP)
    try:
        t = loop.time()
        with pytest.raises(QmpError, match=r"no answer within 2\.0 s"):
            await b.snapshot_list("a")
        assert loop.time() - t < 4
        assert await b.snapshot_list("b") == ["enmei-phase-service-ready"]
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert await b.snapshot_list("a") == ["enmei-phase-service-ready"]  # A works again

    # A's QMP socket dies (its file removed, the connection dropped): bounded QmpError, stats still
    # work (they read /proc), and stop escalates to SIGKILL through the pidfd.
    machine = b._vms["a"]
    machine.paths.qmp.unlink()
    await machine.qmp()._detach()  # the connection is gone; reconnecting finds no socket
    t = loop.time()
    with pytest.raises(QmpError, match="QMP connect"):
        await b.block_stats("a")
    assert loop.time() - t < 4
    assert (await b.stats("a"))["cpu_seconds"] > 0
    await b.stop("a", timeout_s=1.0)
    stopped = [e for e in vmh.events if e.unit == "a"][-1]
    assert stopped.kind == UnitEventKind.STOPPED and stopped.detail["reason"].startswith("killed")
    with pytest.raises(VisorError, match="not running"):
        await b.snapshot_list("a")

    # B: a corrupt snapshot fails to load with a typed error; the good phase snapshot still repairs
    await b.snapshot_save("b", "bad")
    sys_disk = vmh.state_dir / "qemu" / "b" / "sys.qcow2"
    data = bytearray(sys_disk.read_bytes())
    at = data.rfind(b"QEVM")  # the newest snapshot's machine state starts with this magic
    assert at > 0
    with open(sys_disk, "r+b") as f:
        f.seek(at)
        f.write(b"XXXX")
    t = loop.time()
    with pytest.raises(QmpError, match="snapshot-load"):
        await b.snapshot_load("b", "bad")
    assert loop.time() - t < 35
    await b.phase_reboot("b", wait_data=True)
    assert (await until_answer(port_b)).startswith("enmei-demo")
    with pytest.raises(VisorError, match="no snapshot 'never-saved'"):
        await b.snapshot_load("b", "never-saved")
    assert (await until_answer(port_b)).startswith("enmei-demo")

    # B dies by SIGKILL: EXITED with the reason, B's calls are typed errors, nothing else broke.
    b_pid = b.identity("b").pid  # type: ignore[union-attr]
    os.kill(b_pid, signal.SIGKILL)
    await vmh.wait_for("B exited", lambda: vmh.kinds("b")[-1] == UnitEventKind.EXITED)
    assert vmh.events[-1].detail["reason"] == "killed (no SHUTDOWN event)"
    with pytest.raises(VisorError, match="not running"):
        await b.phase_reboot("b")
