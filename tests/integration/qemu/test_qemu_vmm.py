"""Issue 15 item 1: ``rejuvenate_vmm`` replaces a VM unit's QEMU process under its live guest (RAM shared,
not copied): the guest keeps its boot, RAM and page cache; everything enmei tracks follows the new
process (identity and adoption, console, forwards, net counters, the standby); a failure before the
switch leaves the old QEMU running; shared RAM files go with the unit."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import psutil
import pytest

from enmei.config.qemu import QemuUnit
from enmei.errors import VisorError
from enmei.model import UnitEventKind, VerdictKind
from enmei.visor.base import Identity
from enmei.visor.qemu.backend import QemuBackend
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.machine import Machine

from .conftest import VmHarness, http_get, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _state(port: int) -> dict[str, str]:
    status, body = await http_get(port, "/cgi-bin/state")
    assert status == 200, body
    return dict(item.split("=", 1) for item in body.split())


async def _noted_guest(vmh: VmHarness) -> tuple[QemuBackend, QemuUnit, int, Identity, str]:
    """A started guest that answers, with ``note=old`` written into its RAM: (backend, spec, forwarded
    port, identity of its QEMU, its boot id)."""
    b = vmh.backend()
    spec = vmh.spec()
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    await until_answer(port, "/cgi-bin/state")
    assert await http_get(port, "/cgi-bin/state?note=old") == (200, "ok note\n")
    return b, spec, port, first, (await _state(port))["boot_id"]


async def test_a_fresh_qemu_runs_the_same_guest_and_is_adopted_after_a_supervisor_restart(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec = vmh.spec()
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert first.extra["ram"] == "shared"
    paths = MachinePaths.for_unit(vmh.state_dir, "vm")
    assert paths.ram.stat().st_size == spec.memory_mib * 2**20
    await until_answer(port, "/cgi-bin/state")
    assert await http_get(port, "/cgi-bin/state?note=kept-in-ram") == (200, "ok note\n")
    assert await http_get(port, "/cgi-bin/data?put=before") == (200, "stored\n")
    assert await http_get(port, "/cgi-bin/state?cache=4", 60) == (200, "ok cache\n")  # 4 MiB, in the page cache
    before = await _state(port)
    net_before = await b.net_stats("vm")
    console = b.log_path("vm", "console")
    assert console is not None
    boots = console.read_text().count("enmei-phase: kernel")

    report = await b.rejuvenate_vmm("vm")

    assert report["switched"] and report["replaced_pid"] == first.pid and report["pid"] != first.pid
    assert report["ram"] == "shared" and report["transferred_bytes"] < 16 * 2**20  # device state, not RAM
    assert 0 < report["downtime_s"] < 5.0
    assert report["answered_s"] is not None
    assert _gone(first.pid)
    ident = b.identity("vm")
    assert ident is not None and ident.pid == report["pid"] and ident.extra["slot"] == report["slot"] != ""
    started = vmh.events[-1]
    assert started.kind == UnitEventKind.STARTED and started.detail["via"] == "vmm-rejuvenation"
    assert started.detail["replaced_pid"] == first.pid
    # the same guest: same boot, its RAM kept, no boot on the console, its data disk as it was
    after = await _state(port)
    assert after["boot_id"] == before["boot_id"] and after["note"] == "kept-in-ram"
    assert float(after["uptime_s"]) > float(before["uptime_s"])
    assert console.read_text().count("enmei-phase: kernel") == boots
    # its page cache too: reading the file adds nothing to it (a rebooted guest reads the 4 MiB again)
    status, body = await http_get(port, "/cgi-bin/state?read=1", 60)
    read = dict(item.split("=", 1) for item in body.split())
    assert status == 200 and int(read["bytes"]) == 4 * 2**20 and int(read["cache_grew_kib"]) < 1024, body
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before\n"
    assert await http_get(port, "/cgi-bin/data?put=after") == (200, "stored\n")
    net_after = await b.net_stats("vm")
    assert net_after["rx_packets"] > net_before["rx_packets"]  # counted on from the old QEMU's totals
    # the old slot's names are gone; the new slot maps the same RAM file
    assert not paths.ram.exists() and not paths.qmp.exists()
    new_paths = paths.with_slot(ident.extra["slot"])
    assert new_paths.ram.stat().st_size == spec.memory_mib * 2**20
    stats = await b.stats("vm")
    assert stats["qemu_age_s"] < 60 and stats["qemu_fds"] > 0 and stats["qemu_threads"] > 0
    assert b.phases("vm").get("data-ready") is not None

    # a supervisor restarted now adopts the new QEMU, and a second rejuvenation still works
    await b.close()
    b2 = vmh.backend()
    assert await b2.adopt("vm", spec, ident)
    assert "data-ready" in b2.phases("vm")
    assert (await _state(port))["boot_id"] == before["boot_id"]
    again = await b2.rejuvenate_vmm("vm")
    assert again["replaced_pid"] == ident.pid and _gone(ident.pid)
    assert (await _state(port))["note"] == "kept-in-ram"
    # and a phase reboot (in place) of the rejuvenated guest uses the phase snapshot still there
    with pytest.raises((OSError, TimeoutError)):
        await http_get(port, "/cgi-bin/fault?panic=1", 1.0)
    await vmh.wait_for("a panic verdict", lambda: vmh.verdicts)
    assert vmh.verdicts[-1].kind == VerdictKind.PANIC
    await b2.phase_reboot("vm", wait_data=True)
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before\nafter\n"
    status, body = await http_get(port, "/cgi-bin/state?read=1", 60)  # (the check above can tell: cold now)
    assert status == 200 and int(dict(i.split("=", 1) for i in body.split())["cache_grew_kib"]) >= 3 * 1024, body

    await b2.stop("vm", timeout_s=20)
    assert vmh.our_qemus() == []
    assert not paths.ram_dir.exists()  # the guest's memory file went with the unit


async def test_a_failed_rejuvenation_leaves_the_old_qemu_running(vmh: VmHarness, tmp_path: Path) -> None:
    b, _spec, port, first, boot = await _noted_guest(vmh)
    killed: list[int] = []
    at: list[str] = []

    async def kill_new(step: str, new: Machine) -> None:
        if step == at[-1]:
            killed.append(new.pid)
            os.kill(new.pid, signal.SIGKILL)
            await new.wait_gone(30)

    b.vmm.step_hook = kill_new
    for step in ("launched", "migrated"):  # the destination killed before and after the migration
        at.append(step)
        with pytest.raises(VisorError, match="runs on"):
            await b.rejuvenate_vmm("vm")
        report = b.vmm_report("vm")
        assert report is not None and report["fell_back"] and not report["switched"]
        assert "problems" not in report
        ident = b.identity("vm")
        assert ident is not None and ident.pid == first.pid and b.alive("vm")
        state = await _state(port)  # the old QEMU runs the guest on, with its forward back
        assert state["boot_id"] == boot and state["note"] == "old"
    assert len(killed) == 2 and all(_gone(p) for p in killed)
    b.vmm.step_hook = None

    # a new QEMU that does not start at all
    with pytest.raises(VisorError, match="runs on"):
        await b.rejuvenate_vmm("vm", binary="/bin/false")
    assert b.identity("vm").pid == first.pid  # type: ignore[union-attr]
    # the shared RAM file missing: refused before anything is done
    paths = MachinePaths.for_unit(vmh.state_dir, "vm")
    hidden = paths.ram.with_name("ram.hidden")
    os.link(paths.ram, hidden)
    paths.ram.unlink()
    with pytest.raises(VisorError, match=r"shared RAM file .* is missing"):
        await b.rejuvenate_vmm("vm")
    os.link(hidden, paths.ram)
    hidden.unlink()
    assert (await _state(port))["note"] == "old"
    assert [p.pid for p in vmh.our_qemus()] == [first.pid]  # no new QEMU left anywhere

    report = await b.rejuvenate_vmm("vm")  # and then it works
    assert report["switched"] and (await _state(port))["boot_id"] == boot
    assert [e.kind for e in vmh.events].count(UnitEventKind.STARTED) == 2
    await b.stop("vm", timeout_s=20)
    assert not paths.ram_dir.exists()


async def test_the_warm_standby_follows_the_new_qemu(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec = vmh.spec(phase_standby=True)
    port = int(spec.forward[0].split(":")[0])
    await b.start("vm", spec)
    assert await b.wait_standby("vm", 90)
    standby = b.standby("vm")
    assert standby is not None
    report = await b.rejuvenate_vmm("vm")
    assert report["slot"] not in ("", standby["slot"])
    kept = b.standby("vm")
    assert kept is not None and kept["state"] == "ready" and kept["pid"] == standby["pid"]
    # the standby takes over from the new QEMU after a panic
    with pytest.raises((OSError, TimeoutError)):
        await http_get(port, "/cgi-bin/fault?panic=1", 1.0)
    await vmh.wait_for("a panic verdict", lambda: vmh.verdicts)
    await b.phase_reboot("vm", wait_data=True)
    rb = b.reboot_report("vm")
    assert rb is not None and rb["via"] == "standby" and rb["replaced_pid"] == report["pid"]
    assert _gone(report["pid"])
    assert (await until_answer(port, "/version")).startswith("enmei-demo")
    assert await b.wait_standby("vm", 90)
    await asyncio.sleep(0)
    await b.stop("vm", timeout_s=20)
    assert vmh.our_qemus() == []


class _SupervisorDied(BaseException):
    """Stands for the supervisor's death at a step: nothing after it runs (no fallback, no switch)."""


async def test_a_supervisor_dead_after_the_migration_leaves_a_guest_its_successor_resumes(vmh: VmHarness) -> None:
    b, spec, port, first, boot = await _noted_guest(vmh)
    new_pids: list[int] = []

    async def die(step: str, new: Machine) -> None:
        if step == "migrated":
            new_pids.append(new.pid)
            await b.close()  # the supervisor's hold on its QEMUs goes with it
            raise _SupervisorDied

    b.vmm.step_hook = die
    with pytest.raises(_SupervisorDied):
        await b.rejuvenate_vmm("vm")
    assert len(vmh.our_qemus()) == 2  # the old QEMU (paused after the migration) and the new one (paused)
    b2 = vmh.backend()
    assert await b2.adopt("vm", spec, first)
    assert vmh.events[-1].kind == UnitEventKind.ADOPTED and vmh.events[-1].detail.get("resumed")
    await vmh.wait_for("the new QEMU reaped", lambda: _gone(new_pids[0]))
    state = await _state(port)
    assert state["boot_id"] == boot and state["note"] == "old"
    # the capability is off again: a snapshot holds the RAM (a phase reboot to it works, in place)
    await b2.snapshot_save("vm", "after-adoption")
    assert await http_get(port, "/cgi-bin/state?note=later") == (200, "ok note\n")
    await b2.snapshot_load("vm", "after-adoption")
    assert (await _state(port))["note"] == "old"
    await b2.stop("vm", timeout_s=20)
