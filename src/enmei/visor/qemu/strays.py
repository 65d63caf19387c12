"""Stray QEMUs of a unit: found by their slot's pid file, confirmed by their command line, killed.

Two QEMUs of one unit must never both use its data disk (``enmei.visor.qemu.disks``, rule 5). A QEMU
outlives the supervisor that started it (it daemonizes), so a supervisor that died can leave one
behind: a standby it was preparing, or the old QEMU of a takeover it did not finish. ``reap`` is the one
place that finds and kills them; ``start``, ``adopt`` and a standby's preparation all call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from enmei.errors import VisorError
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.host import ProcInfo, QemuHost

__all__ = ["SLOTS", "kill_process", "reap", "remove_files", "slot_qemu"]

log = logging.getLogger(__name__)

SLOTS = ("", "a", "b")


def slot_qemu(host: QemuHost, paths: MachinePaths) -> ProcInfo | None:
    """The QEMU that runs in ``paths``' slot (by its pid file, confirmed by its command line)."""
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    proc = host.process(pid)
    if proc is None or proc.zombie or str(paths.qmp) not in " ".join(proc.cmdline):
        return None
    return proc


async def kill_process(host: QemuHost, proc: ProcInfo, timeout_s: float = 5.0) -> bool:
    """SIGKILL ``proc`` through a pidfd (after re-checking its create time); True once it is gone."""
    try:
        pin = host.pin(proc.pid)
    except OSError:
        return True  # already gone
    try:
        now = host.process(proc.pid)  # checked after the pidfd is held: the pid cannot change under it
        if now is None or now.create_time != proc.create_time:
            return True  # the pid was recycled: not ours to kill
        pin.kill()
        return await pin.wait_exit(timeout_s)
    finally:
        pin.close()


def remove_files(files: list[Path]) -> None:
    """Remove these files; those already gone are no error."""
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


async def reap(host: QemuHost, name: str, base: MachinePaths, *, keep_pid: int | None = None,
               keep_slot: str | None = None, clear: bool = False) -> None:
    """Kill every QEMU of unit ``name`` found in a slot, except process ``keep_pid`` and slot
    ``keep_slot``; with ``clear`` also remove those slots' files. Raises ``VisorError`` if one
    survives SIGKILL (the caller must then not let another QEMU use the data disk)."""
    for slot in SLOTS:
        if slot == keep_slot:
            continue
        paths = base.with_slot(slot)
        stray = slot_qemu(host, paths)
        if stray is not None and stray.pid != keep_pid:
            log.warning("unit %s: killing a QEMU of this unit left running (pid %d, slot %r)",
                        name, stray.pid, slot)
            if not await kill_process(host, stray):
                raise VisorError(name, "start", f"QEMU pid {stray.pid} survived SIGKILL")
        if clear:
            await asyncio.to_thread(remove_files, paths.slot_files())
