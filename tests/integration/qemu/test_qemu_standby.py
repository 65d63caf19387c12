"""The warm standby: it takes over a panicked guest in milliseconds, the data disk stays one consistent
disk used by one guest at a time, a standby that cannot serve is not used, and no standby outlives its
supervisor's successor."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from enmei.clock import wait_for
from enmei.model import UnitEventKind, VerdictKind
from enmei.visor.base import Identity
from enmei.visor.qemu import image as images

from .conftest import VmHarness, http_get, until_answer

pytestmark = [pytest.mark.integration, pytest.mark.qemu]


async def _panic(vmh: VmHarness, port: int) -> None:
    n = len(vmh.verdicts)
    with pytest.raises((OSError, TimeoutError)):
        await http_get(port, "/cgi-bin/fault?panic=1", 1.0)
    await vmh.wait_for("a panic verdict", lambda: len(vmh.verdicts) > n)
    assert vmh.verdicts[-1].kind == VerdictKind.PANIC


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _fsck(data_disk: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["e2fsck", "-fn", str(data_disk)], capture_output=True, text=True, timeout=60,
                          check=False)


async def test_the_standby_takes_over_keeps_the_data_and_the_disk_stays_clean(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec = vmh.spec(phase_standby=True)
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert await http_get(port, "/cgi-bin/data?put=before") == (200, "stored\n")
    assert await b.wait_standby("vm", 60)
    st = b.standby("vm")
    assert st is not None and st["slot"] == "a" and st["warm_requests"] > 0 and st["rss_bytes"] > 0
    standby_pid = st["pid"]
    assert psutil.Process(standby_pid).status() != psutil.STATUS_ZOMBIE
    assert len(vmh.our_qemus()) == 2
    # set after the phase snapshot: the standby's RAM does not have it
    assert await http_get(port, "/cgi-bin/fault?latency=600") == (200, "ok latency\n")

    await _panic(vmh, port)
    loop = asyncio.get_running_loop()
    t = loop.time()
    took = await b.phase_reboot("vm")
    assert (await until_answer(port, "/version")).startswith("enmei-demo")
    assert took < 1.0 and loop.time() - t < 2.0
    report = b.reboot_report("vm")
    assert report is not None and report["via"] == "standby"
    assert (report["replaced_pid"], report["pid"]) == (first.pid, standby_pid)
    assert _gone(first.pid)  # the failed QEMU was killed and waited for before the gate opened
    ident = b.identity("vm")
    assert ident is not None and ident.pid == standby_pid
    assert ident.extra["slot"] == "a" and ident.extra["promoted"] and ident.extra["data_disk"] == "raw-shared"
    started = vmh.events[-1]
    assert started.kind == UnitEventKind.STARTED
    assert started.detail["via"] == "phase-standby" and started.detail["replaced_pid"] == first.pid
    t = loop.time()
    assert (await until_answer(port)).startswith("enmei-demo")
    assert loop.time() - t < 0.5  # RAM went back: no latency knob
    # the gate opened once the old QEMU was gone: the disk is mounted as it is now
    await vmh.wait_for("data-ready", lambda: "data-ready" in b.phases("vm"))
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before\n"
    assert await http_get(port, "/cgi-bin/data?put=after-standby") == (200, "stored\n")
    console = b.log_path("vm", "console")
    assert console is not None  # the new QEMU writes the unit's console log: a second data-ready there
    assert console.read_text().count("enmei-phase: data-ready") == 2
    stats = await b.stats("vm")
    assert stats["panics"] == 1 and stats["panicked"] == 0
    assert any(e[1] == "GUEST_PANICKED" for e in b.events("vm"))  # the unit's history carries over

    # the next standby comes up in the other slot; data written since is seen after the next takeover
    assert await b.wait_standby("vm", 60)
    st = b.standby("vm")
    assert st is not None and st["slot"] == "b" and st["pid"] != standby_pid
    assert await http_get(port, "/cgi-bin/data?put=while-b-waits") == (200, "stored\n")
    await _panic(vmh, port)
    await b.phase_reboot("vm", wait_data=True)
    assert (b.reboot_report("vm") or {})["via"] == "standby"
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before\nafter-standby\nwhile-b-waits\n"
    assert await http_get(port, "/cgi-bin/data?put=after-second") == (200, "stored\n")

    # without the standby (or none ready) the snapshot is loaded in place; same data
    await _panic(vmh, port)
    pid = b.identity("vm").pid  # type: ignore[union-attr]
    await b.phase_reboot("vm", wait_data=True, standby=False)
    assert (b.reboot_report("vm") or {})["via"] == "in-place" and b.identity("vm").pid == pid  # type: ignore[union-attr]
    assert (await http_get(port, "/cgi-bin/data?get"))[1] == "before\nafter-standby\nwhile-b-waits\nafter-second\n"
    assert len(vmh.our_qemus()) == 2  # the unit's QEMU and one standby, never more

    await b.stop("vm", timeout_s=20)
    assert vmh.our_qemus() == []
    assert b.standby("vm") is None
    data = b.state_dir / "qemu" / "vm" / "data.img"
    check = _fsck(data)
    assert check.returncode == 0, check.stdout + check.stderr


async def test_an_unusable_standby_is_not_used_and_is_made_again(vmh: VmHarness) -> None:
    b = vmh.backend()
    spec = vmh.spec(phase_standby=True, qmp_timeout_s=3.0)
    port = int(spec.forward[0].split(":")[0])
    first = await b.start("vm", spec)
    assert await b.wait_standby("vm", 60)
    dead = b.standby("vm")["pid"]  # type: ignore[index]

    # its QEMU died: noticed at once, the phase reboot loads in place, a new standby comes
    os.kill(dead, signal.SIGKILL)
    await vmh.wait_for("the standby seen gone", lambda: (b.standby("vm") or {}).get("state") == "failed")
    await _panic(vmh, port)
    await b.phase_reboot("vm")
    assert b.reboot_report("vm") == {"via": "in-place", "standby": "failed",
                                     "took_s": (b.reboot_report("vm") or {})["took_s"]}
    assert (await until_answer(port, "/version")).startswith("enmei-demo")
    assert b.identity("vm").pid == first.pid  # type: ignore[union-attr]
    assert await b.wait_standby("vm", 60)
    hung = b.standby("vm")["pid"]  # type: ignore[index]
    assert hung != dead

    # its QEMU hangs (QMP does not answer): checked before the unit's QEMU is touched, so the reboot
    # loads in place; the hung one is killed and replaced
    os.kill(hung, signal.SIGSTOP)
    try:
        await _panic(vmh, port)
        await b.phase_reboot("vm")
        report = b.reboot_report("vm") or {}
        assert report["via"] == "in-place" and "QMP" in report["standby_unusable"]
        assert (await until_answer(port, "/version")).startswith("enmei-demo")
        assert b.identity("vm").pid == first.pid  # type: ignore[union-attr]
        await vmh.wait_for("the hung standby killed", lambda: _gone(hung))
    finally:
        if not _gone(hung):
            os.kill(hung, signal.SIGCONT)
    assert await b.wait_standby("vm", 60)

    # a phase reboot cancelled (an operator's stop...) is never left half-done: the takeover finishes
    ready = b.standby("vm")["pid"]  # type: ignore[index]
    await _panic(vmh, port)
    task = asyncio.create_task(b.phase_reboot("vm"))
    await asyncio.sleep(0.002)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert b.identity("vm").pid == ready and _gone(first.pid)  # type: ignore[union-attr]
    assert (await until_answer(port, "/version")).startswith("enmei-demo")
    assert len(vmh.our_qemus()) <= 2
    await b.stop("vm", timeout_s=20)
    assert vmh.our_qemus() == []


_SUPERVISOR = """
import asyncio, json, os, sys
from pathlib import Path
from enmei.clock import SystemClock
from enmei.config.qemu import QemuUnit
from enmei.visor.qemu import QemuBackend

async def main():
    b = QemuBackend(clock=SystemClock(), state_dir=Path(sys.argv[1]), emit=lambda e: None)
    ident = await b.start("vm", QemuUnit.model_validate_json(sys.argv[2]))
    assert await b.wait_standby("vm", 60), b.standby("vm")
    print(json.dumps({"identity": ident.to_json(), "standby": b.standby("vm")["pid"]}), flush=True)
    os._exit(0)  # the supervisor dies without stopping or closing anything

asyncio.run(main())
"""


async def test_no_standby_or_stray_qemu_outlives_a_dead_supervisor(vmh: VmHarness, tmp_path: Path) -> None:
    spec = vmh.spec(phase_standby=True)
    port = int(spec.forward[0].split(":")[0])
    script = tmp_path / "supervisor.py"
    script.write_text(_SUPERVISOR)
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), str(vmh.state_dir),
                                                spec.model_dump_json(), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()[-2000:]
    left = json.loads(out.decode().strip().splitlines()[-1])
    identity = Identity.from_json(left["identity"])
    orphan = int(left["standby"])
    assert len(vmh.our_qemus()) == 2  # the unit's QEMU and its standby, both outlived the supervisor

    # adoption takes the unit's QEMU and kills the orphaned standby (it is never adopted), then makes one
    b = vmh.backend()
    assert await b.adopt("vm", spec, identity)
    assert _gone(orphan)
    assert await b.wait_standby("vm", 60)
    assert b.standby("vm")["pid"] not in (orphan, identity.pid)  # type: ignore[index]
    await _panic(vmh, port)
    await b.phase_reboot("vm")
    assert (b.reboot_report("vm") or {})["via"] == "standby"
    assert (await until_answer(port, "/version")).startswith("enmei-demo")

    # a supervisor closing leaves the unit's QEMU running but not its standby
    promoted = b.identity("vm")
    assert promoted is not None and promoted.pid != identity.pid
    await b.close()
    assert [p.pid for p in vmh.our_qemus()] == [promoted.pid]

    # a start that finds a QEMU of the unit still running (its identity lost) ends it first: two QEMUs
    # of one unit must never both use the data disk
    b2 = vmh.backend()
    fresh = await b2.start("vm", spec.model_copy(update={"phase_standby": False}))
    assert _gone(promoted.pid) and fresh.pid != promoted.pid
    assert [p.pid for p in vmh.our_qemus()] == [fresh.pid]
    assert (await until_answer(port, "/version")).startswith("enmei-demo")


def test_a_qcow2_data_disk_of_an_earlier_enmei_becomes_raw(tmp_path: Path) -> None:
    raw = tmp_path / "made.img"
    images.data_disk(raw, 8, unit="vm")
    legacy = tmp_path / "data.qcow2"
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(legacy)], check=True,
                   timeout=60)
    target = tmp_path / "data.img"
    images.data_disk(target, 8, unit="vm", legacy=legacy)
    assert not legacy.exists() and target.read_bytes() == raw.read_bytes()
    assert _fsck(target).returncode == 0
