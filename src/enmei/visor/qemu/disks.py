"""The disks of a VM unit and the rules that keep its data disk consistent (written here once).

A unit has a *snapshot disk* per QEMU slot (``sys.qcow2``: a qcow2 node the guest never sees, holding
the internal snapshots and their machine state) and one *data disk* (``data.img``: raw ext4, the
guest's persistent data). The guest's root file system is its initramfs, in RAM, so it belongs to
every snapshot.

The data disk is never part of an internal snapshot, and the guest mounts it only after the host
opens a gate on ttyS1 (``guest/gate.sh``), which the host does only after the phase snapshot is taken.
No snapshot therefore holds any state of the mounted file system; the one thing the guest read from
the disk before the snapshot is its first blocks (the kernel's partition scan at boot), and the gate
script drops every cached block of the disk (``blockdev --flushbufs``: the device's page cache) before it
mounts. After a phase reboot the guest comes back before the gate, the host opens it again, and the
guest mounts the disk as it is now (ext4's journal repairs what the failure interrupted). Data the
service synced before the failure survives a phase reboot exactly as it survives a cold reboot.

With a warm standby two QEMUs have the data disk open. The rules:

1. the disk is *raw*, so a QEMU holds no image metadata (no qcow2 L2 or refcount cache) that another
   could make stale, and QEMU's image lock is shared (``share-rw``) by the unit's QEMUs
   (``SHARED``, recorded in the unit's identity);
2. a standby's guest never passes its gate while it is a standby, so it never reads or writes the disk;
3. the failed QEMU is paused (its I/O drained), then killed and *waited for until its process is gone*
   before the standby's gate opens, so at any time at most one guest uses the disk (``pause``, ``end``).
   The standby may be resumed in between (a takeover does, to shorten the interruption): its gate is
   still closed, so by rule 2 its guest does not touch the disk;
4. that guest drops any cached block of the disk before mounting it (above);
5. a ``start`` or ``adopt`` first kills any other QEMU of the unit still running
   (``enmei.visor.qemu.strays``), since QEMU's lock no longer keeps two of them apart.

Whole-state saves (``enmei.visor.qemu.wholestate``) are different: their RAM holds the mounted file
system, so they copy both disks too, while QEMU has them flushed and inactive.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

from enmei import crashpoint
from enmei.config.qemu import QemuUnit
from enmei.visor.qemu import phase_image
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.errors import QmpError
from enmei.visor.qemu.host import QemuHost
from enmei.visor.qemu.machine import Machine

__all__ = ["SHARED", "end", "pause", "prepare", "release", "shared_in"]

SHARED = "raw-shared"  # the identity's ``data_disk`` when the unit's QEMU shares its data disk (rule 1)


def shared_in(extra: Mapping[str, Any]) -> bool:
    """Whether the QEMU of a saved identity was launched with a shareable data disk."""
    return extra.get("data_disk") == SHARED


async def prepare(host: QemuHost, name: str, spec: QemuUnit, paths: MachinePaths, *, fresh_sys: bool) -> None:
    """The unit's disks for a QEMU about to start: with ``fresh_sys`` a new, empty snapshot disk (and
    the phase image of an earlier first boot goes); the data disk, made once and then kept. Raises
    ``StartError`` or ``ImageError``."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    if fresh_sys:
        await asyncio.to_thread(host.make_sys_disk, name, paths.sys_disk)
        await asyncio.to_thread(phase_image.remove, paths)
    await asyncio.to_thread(host.make_data_disk, name, paths.data_disk, spec.data_disk_mib,
                            paths.legacy_data_disk)


async def pause(old: Machine, *, stamps: dict[str, float] | None = None) -> None:
    """The first half of rule 3: ``old`` is being ended (its exit is not reported) and its guest is
    paused if it still runs, so its I/O drains and it writes the data disk no more. Never raises (a QMP
    that does not answer within 1 s is left: ``end`` kills the process anyway). ``stamps`` gets
    ``paused``."""
    old.retire()
    if not old.panicked:
        with contextlib.suppress(QmpError):
            await old.qmp().execute("stop", timeout_s=1.0)
    if stamps is not None:
        stamps["paused"] = old.clock.monotonic()
    crashpoint.reached("takeover.gate-closed")  # the old guest paused, the new one's gate still closed


async def end(old: Machine, timeout_s: float = 5.0, *, stamps: dict[str, float] | None = None) -> bool:
    """The second half of rule 3: SIGKILL ``old`` and wait until its process is gone; True then, False if
    it survived SIGKILL for ``timeout_s`` (nobody else may use the disk). Only after it returned True may
    another guest's gate open. ``stamps`` gets ``killed``, ``exited`` (its pidfd seen) and ``gone``."""
    old.retire()
    old.kill()
    if stamps is not None:
        stamps["killed"] = old.clock.monotonic()
    gone = await old.wait_gone(timeout_s)
    if stamps is not None:
        if old.exited_mono is not None:
            stamps["exited"] = old.exited_mono
        stamps["gone"] = old.clock.monotonic()
    return gone


async def release(old: Machine, timeout_s: float = 5.0, *, stamps: dict[str, float] | None = None) -> bool:
    """Rule 3 whole: ``pause``, then ``end``."""
    await pause(old, stamps=stamps)
    return await end(old, timeout_s, stamps=stamps)
