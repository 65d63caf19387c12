"""Whole-state save, restore and clone of VM units: ``WholeState``, composed by ``QemuBackend``.

``state_save`` migrates the whole machine (RAM, devices) to a file, and copies both disks while QEMU has
them flushed and inactive at the end of the migration (the RAM holds the mounted file system, so the
disks must be the ones of that instant); ``state_restore`` replaces the unit's QEMU by a fresh one
restored from such files; ``clone`` runs a copy of a unit as another unit. Files of a save: ``PATH``
(the migration stream), ``PATH.sys.qcow2``, ``PATH.data.img`` (``.data.qcow2`` in format 1, from when
data disks were qcow2: converted when restored), ``PATH.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from enmei.clock import Clock
from enmei.config.qemu import QemuUnit
from enmei.errors import StartError, VisorError
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.base import EmitFn, Identity
from enmei.visor.qemu import image as images
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.console import PhaseMark
from enmei.visor.qemu.errors import ImageError, QmpError
from enmei.visor.qemu.machine import Machine, phases_upto
from enmei.visor.qemu.standby import StandbyManager

__all__ = ["IncomingLaunchFn", "WholeState"]

_STATE_FORMAT = 2  # 2: the data disk is raw (1: qcow2, converted when restored)

IncomingLaunchFn = Callable[[str, QemuUnit, str, str, str, MachinePaths], Awaitable[Machine]]
"""(unit, spec, kernel, initrd, accel, paths): launch the unit's QEMU waiting for an incoming
migration; it becomes the unit's machine. ``StartError`` if it does not start."""


class WholeState:
    """Whole-state save, restore and clone over the backend's table of unit ``machines``.

    ``require(name, action)`` is the unit's running machine (``VisorError`` if none), ``launch`` starts
    a QEMU to restore into, ``identity`` is the identity of a machine, ``snapshots(name)`` the internal
    snapshots of a unit's machine; restoring replaces the unit's standby (``standbys``).
    """

    def __init__(self, *, clock: Clock, state_dir: Path, emit: EmitFn, machines: dict[str, Machine],
                 standbys: StandbyManager, require: Callable[[str, str], Machine], launch: IncomingLaunchFn,
                 identity: Callable[[Machine], Identity],
                 snapshots: Callable[[str], Awaitable[list[str]]]) -> None:
        self.clock = clock
        self.state_dir = state_dir
        self.emit = emit
        self._vms = machines
        self._standbys = standbys
        self._require = require
        self._launch = launch
        self._identity = identity
        self.snapshot_list = snapshots

    async def state_save(self, name: str, path: Path) -> None:
        """Save the whole machine (RAM, devices, both disks) to ``path`` (+ ``.sys.qcow2``,
        ``.data.img``, ``.json``). The guest pauses for the end of the migration and the disk copy,
        then runs on. Raises ``VisorError``; a failed save leaves no files at ``path``."""
        machine = self._require(name, "state save")
        path = _absolute(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        files = _state_files(path)
        tmp = path.with_name(path.name + ".part")
        qmp = machine.qmp()
        try:
            was_running = bool((await qmp.execute("query-status")).get("running"))
            await qmp.execute("migrate-set-parameters", {"max-bandwidth": 10 * 2**30})
            await qmp.execute("migrate", {"uri": f"exec:cat > {_shq(str(tmp))}"})
            await self._wait_migration(machine, "state save")
            await asyncio.to_thread(shutil.copyfile, machine.paths.sys_disk, files["sys"])
            await asyncio.to_thread(shutil.copyfile, machine.paths.data_disk, files["data"])
            meta = {"format": _STATE_FORMAT, "unit": name, "spec": machine.spec.model_dump(mode="json"),
                    "kernel": machine.kernel, "initrd": machine.initrd, "accel": machine.accel,
                    "phase_snapshot": machine.phase_snapshot, "phases": list(machine.console.phases),
                    "phase_image": machine.phase_image_id, "saved_wall": self.clock.wall()}
            files["meta"].write_text(json.dumps(meta, indent=2) + "\n")
            os.replace(tmp, path)
        except (QmpError, OSError) as exc:
            for f in (tmp, *files.values()):
                with contextlib.suppress(OSError):
                    f.unlink()
            raise VisorError(name, "state save", getattr(exc, "cause", str(exc))) from exc
        finally:
            with contextlib.suppress(QmpError):
                status = await qmp.execute("query-status")
                if was_running and not status.get("running"):
                    await qmp.execute("cont")

    async def state_restore(self, name: str, path: Path, *, spec: QemuUnit | None = None) -> None:
        """Replace the unit's QEMU (if running) by a fresh one restored from ``state_save`` files.

        The replaced QEMU is quit without a ``STOPPED`` event; ``STARTED`` is emitted with
        ``detail["via"] = "state-restore"``. Raises ``VisorError`` (no unit is left running then).
        """
        path = _absolute(path)
        files = _state_files(path)
        try:
            meta = json.loads(files["meta"].read_text())
            if meta.get("format") not in (1, _STATE_FORMAT):
                raise ValueError(f"format {meta.get('format')!r}")
            use = spec or QemuUnit.model_validate(meta["spec"])
        except (OSError, ValueError, KeyError) as exc:
            raise VisorError(name, "state restore", f"{files['meta']} is unreadable: {exc}") from exc
        await self._standbys.drop(name)
        old = self._vms.get(name)
        if old is not None:
            old.retire()
            await old.stop(0.0)
            self._vms.pop(name, None)
        paths = MachinePaths.for_unit(self.state_dir, name)
        paths.dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, files["sys"], paths.sys_disk)
        if meta["format"] == 1:  # saved when data disks were qcow2: restore a raw conversion
            def convert() -> None:
                with contextlib.suppress(FileNotFoundError):
                    paths.data_disk.unlink()
                shutil.copyfile(files["data"].with_suffix(".qcow2"), paths.legacy_data_disk)
                images.data_disk(paths.data_disk, use.data_disk_mib, unit=name, legacy=paths.legacy_data_disk)

            try:
                await asyncio.to_thread(convert)
            except (ImageError, OSError) as exc:
                raise VisorError(name, "state restore", str(exc)) from exc
        else:
            await asyncio.to_thread(shutil.copyfile, files["data"], paths.data_disk)
        await self._restore(name, use, str(meta["kernel"]), str(meta["initrd"]), str(meta["accel"]),
                            paths, path, meta, via="state-restore")

    async def clone(self, name: str, new_name: str, *, spec: QemuUnit | None = None) -> Identity:
        """A running copy of unit ``name`` as unit ``new_name``, with copies of both disks.

        ``spec`` defaults to the original's without forwarded ports (two QEMUs cannot listen on one
        port). The original pauses for the end of a migration and the disk copy. Emits ``STARTED`` for
        the clone with ``detail["clone_of"]``. Raises ``VisorError``.
        """
        machine = self._require(name, "clone")
        if new_name in self._vms:
            raise VisorError(new_name, "clone", "a unit of that name is running")
        paths = MachinePaths.for_unit(self.state_dir, new_name)
        paths.dir.mkdir(parents=True, exist_ok=True)
        state = paths.dir / "clone-source.state"
        await self.state_save(name, state)
        files = _state_files(state)
        try:
            os.replace(files["sys"], paths.sys_disk)
            os.replace(files["data"], paths.data_disk)
            meta = json.loads(files["meta"].read_text())
            use = spec or machine.spec.model_copy(update={"forward": []})
            return await self._restore(new_name, use, machine.kernel, machine.initrd, machine.accel, paths,
                                       state, meta, via="clone", clone_of=name)
        finally:
            for f in (state, *files.values()):
                with contextlib.suppress(OSError):
                    f.unlink()

    async def _restore(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                       paths: MachinePaths, state: Path, meta: Mapping[str, Any], *, via: str,
                       clone_of: str | None = None) -> Identity:
        # The saved RAM goes back into RAM of the kind it came from (a shared RAM file and QEMU's own
        # memory are differently named RAM blocks in the stream); saves older than ``ram`` are private.
        saved = meta.get("spec")
        saved_ram = saved.get("ram") if isinstance(saved, Mapping) else None
        spec = spec.model_copy(update={"ram": "shared" if saved_ram == "shared" else "private"})
        try:
            machine = await self._launch(name, spec, kernel, initrd, accel, paths)
        except StartError as exc:
            raise VisorError(name, via, exc.cause) from exc
        try:
            await machine.qmp().execute("migrate-incoming", {"uri": f"exec:cat {_shq(str(state))}"})
            await self._wait_migration(machine, via)
            status = await machine.qmp().execute("query-status")
            if not status.get("running"):
                await machine.qmp().execute("cont")
            tags = await self.snapshot_list(name)
        except (QmpError, VisorError) as exc:
            await machine.discard()
            self._vms.pop(name, None)
            raise VisorError(name, via, getattr(exc, "cause", str(exc))) from exc
        if meta.get("phase_snapshot") in tags:
            now = self.clock.monotonic()
            machine.note_phase_snapshot(str(meta["phase_snapshot"]),
                                        {p: PhaseMark(p, now, None, 1) for p in phases_upto(spec)})
            machine.console.phases = {p: PhaseMark(p, now, None, 1) for p in meta.get("phases", [])}
        image_id = meta.get("phase_image")
        machine.phase_image_id = str(image_id) if image_id and not clone_of else None
        detail: dict[str, Any] = {"pid": machine.pid, "accel": accel, "via": via}
        if clone_of:
            detail["clone_of"] = clone_of
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(), detail))
        self._standbys.want(name)
        return self._identity(machine)

    async def _wait_migration(self, machine: Machine, action: str, timeout_s: float = 300.0) -> None:
        deadline = self.clock.monotonic() + timeout_s
        while True:
            info = await machine.qmp().execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise VisorError(machine.name, action, f"migration {status}: {info.get('error-desc', '')}")
            if self.clock.monotonic() > deadline:
                with contextlib.suppress(QmpError):
                    await machine.qmp().execute("migrate_cancel")
                raise VisorError(machine.name, action, f"migration not done within {timeout_s:.0f} s")
            await self.clock.sleep(0.01)


def _state_files(path: Path) -> dict[str, Path]:
    return {"sys": path.with_name(path.name + ".sys.qcow2"),
            "data": path.with_name(path.name + ".data.img"),
            "meta": path.with_name(path.name + ".json")}


def _shq(text: str) -> str:
    if re.fullmatch(r"[\w./+-]+", text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _absolute(path: Path) -> Path:
    return path.absolute()
