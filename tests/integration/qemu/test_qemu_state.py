"""Whole-state save and restore into a fresh QEMU, and clones (two guests at most at a time)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.errors import VisorError
from enmei.model import UnitEventKind

from .conftest import VmHarness, free_port, http_get, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


async def test_state_save_restore_and_clone(vmh: VmHarness, tmp_path: Path) -> None:
    b = vmh.backend()
    spec = vmh.spec()
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert await http_get(port, "/cgi-bin/data?put=saved") == (200, "stored\n")
    assert await http_get(port, "/cgi-bin/fault?latency=1") == (200, "ok latency\n")

    state = tmp_path / "saved" / "vm.state"
    await b.state_save("vm", state)
    assert state.stat().st_size > 1 << 20
    assert all(state.with_name(state.name + s).exists() for s in (".sys.qcow2", ".data.img", ".json"))
    assert b.alive("vm")
    assert (await until_answer(port)).startswith("enmei-demo")  # the guest runs on after the save
    assert await http_get(port, "/cgi-bin/data?put=after-save") == (200, "stored\n")

    # restore into a fresh QEMU: RAM, devices and both disks as saved (consistent with each other)
    await b.state_restore("vm", state)
    ident = b.identity("vm")
    assert ident is not None and ident.pid != first.pid
    assert vmh.kinds("vm") == [UnitEventKind.STARTED, UnitEventKind.STARTED]
    assert vmh.events[-1].detail["via"] == "state-restore"
    assert (await until_answer(port)).startswith("enmei-demo")
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "saved\n"
    assert "enmei-phase-service-ready" in await b.snapshot_list("vm")
    await b.phase_reboot("vm", wait_data=True)  # the phase snapshot came along with the sys disk
    assert (await until_answer(port)).startswith("enmei-demo")

    # a clone: its own QEMU, its own copies of the disks, its own forwarded port
    clone_port = free_port()
    await b.clone("vm", "vm2", spec=spec.model_copy(update={"forward": [f"{clone_port}:80"]}))
    assert b.alive("vm") and b.alive("vm2")
    assert vmh.events[-1].unit == "vm2" and vmh.events[-1].detail["clone_of"] == "vm"
    assert (await until_answer(clone_port)).startswith("enmei-demo")
    assert await http_get(clone_port, "/cgi-bin/data?put=clone-only") == (200, "stored\n")
    assert (await http_get(clone_port, "/cgi-bin/data?get"))[1] == "saved\nclone-only\n"
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "saved\n"
    with pytest.raises(VisorError, match="running"):
        await b.clone("vm", "vm2")
    await b.stop("vm2", timeout_s=10)
    await b.stop("vm", timeout_s=10)
    assert [e.kind for e in vmh.events[-2:]] == [UnitEventKind.STOPPED, UnitEventKind.STOPPED]


async def test_restore_from_missing_files_is_a_typed_error(vmh: VmHarness, tmp_path: Path) -> None:
    b = vmh.backend()
    with pytest.raises(VisorError, match="unreadable"):
        await b.state_restore("vm", tmp_path / "nothing.state")
    assert not b.alive("vm")
