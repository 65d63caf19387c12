"""The phase image: a copy of a unit's snapshot disk holding the phase snapshot, what standbys start from.

Files, per unit: ``phase-sys.qcow2`` (the copy) and ``phase-sys.json``, versioned::

    {"format": 1, "id": "<16 hex>", "made_wall": <seconds>, "key": {<image_key>}}

``id`` names the first boot the image was made from (a guest's ``phase_image_id``; it goes into the
unit's identity, so an adopting supervisor knows which image belongs to the running guest). ``key`` is
what a QEMU must match to load it (kernel, initrd, accelerator, memory, CPUs, kernel command line, extra
arguments): a standby made from an image of another machine could not load its state. Both files are
written to a temporary name and renamed, so a reader sees a whole image or none.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from enmei.visor.qemu.cmdline import MachinePaths, kernel_append
from enmei.visor.qemu.machine import Machine

__all__ = ["FORMAT", "image_key", "image_problem", "meta_path", "remove", "save"]

FORMAT = 1


def image_key(machine: Machine) -> dict[str, Any]:
    """What a phase image must match to be loaded into a QEMU like ``machine``'s."""
    spec = machine.spec
    return {"tag": machine.phase_snapshot, "kernel": machine.kernel, "initrd": machine.initrd,
            "accel": machine.accel, "memory_mib": spec.memory_mib, "cpus": spec.cpus,
            "append": kernel_append(spec), "extra_args": list(spec.extra_args)}


def meta_path(paths: MachinePaths) -> Path:
    return paths.phase_image.with_suffix(".json")


def remove(paths: MachinePaths) -> None:
    """Remove the unit's phase image (a new first boot makes a new one)."""
    for old in (paths.phase_image, meta_path(paths)):
        old.unlink(missing_ok=True)


async def save(machine: Machine, wall: float) -> str:
    """Copy ``machine``'s snapshot disk (holding the phase snapshot) to the unit's phase image; returns
    the image's id. QEMU is paused for the copy (``stop`` flushes its qcow2 caches to the file, so the
    copy is consistent) and resumed after it, if it ran. Raises ``QmpError`` or ``OSError``."""
    paths = machine.paths
    qmp = machine.qmp()
    running = bool((await qmp.execute("query-status")).get("running"))
    tmp = paths.phase_image.with_name(paths.phase_image.name + ".tmp")
    if running:
        await qmp.execute("stop")
    try:
        await asyncio.to_thread(shutil.copyfile, paths.sys_disk, tmp)
    finally:
        if running:
            await qmp.execute("cont")
    image_id = uuid.uuid4().hex[:16]
    meta = {"format": FORMAT, "id": image_id, "made_wall": wall, "key": image_key(machine)}
    os.replace(tmp, paths.phase_image)
    mtmp = meta_path(paths).with_name(meta_path(paths).name + ".tmp")
    mtmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(mtmp, meta_path(paths))
    return image_id


def image_problem(machine: Machine) -> str | None:
    """Why the unit's phase image cannot make a standby for ``machine`` (None: it can)."""
    try:
        meta = json.loads(meta_path(machine.paths).read_text())
    except (OSError, ValueError):
        return "no phase image"
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not machine.paths.phase_image.exists():
        return "no phase image"
    if machine.phase_image_id is None or meta.get("id") != machine.phase_image_id:
        return "the phase image is not this guest's"
    if meta.get("key") != image_key(machine):
        return "the phase image was made for another machine (kernel, memory...)"
    return None
