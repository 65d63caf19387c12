"""``QemuBackend``: units that are virtual machines under QEMU, controlled over QMP.

Promises:

* ``start`` boots the unit's image and returns once the guest printed ``service-ready`` and then
  ``data-ready`` (its data disk mounted), within ``ready_timeout_s``; otherwise QEMU is killed,
  ``START_FAILED`` is emitted and ``StartError`` raised. QEMU runs daemonized in its own session: it
  outlives the supervisor, and ``adopt`` takes it over again from the saved ``Identity`` (name, QEMU pid
  and create time, QMP socket in ``extra``).
* The accelerator is chosen by ``enmei.visor.qemu.accel`` (``auto`` = a bounded, cached KVM probe).
* Facts go out as ``UnitEvent``: ``STARTED``, ``ADOPTED``, ``STOPPED``, ``START_FAILED``, and
  ``EXITED`` when QEMU ends on its own (``detail["reason"]`` is QEMU's SHUTDOWN reason, or
  ``"guest-panicked"`` when the panic made QEMU exit, ``panic_action = "exit"``).
* A guest kernel panic while QEMU stays up (``panic_action = "pause"``, the default; the guest is
  frozen for inspection) is *not* a unit event: it is a ``Verdict(kind=PANIC)`` passed to the
  ``verdict`` callback given to the constructor (the engine puts it on its queue, like a detector's
  verdict). Its evidence holds QEMU's panic data and wall-clock timestamp (``qemu_wall``), the
  kernel's panic line (``panic_message``), the console tail and the phase snapshot's tag. The callback
  runs on the event loop and must not block; an exception in it is logged, never raised.
* Stop is the ACPI power button, then ``quit``, then SIGKILL through a pidfd, then ``StopError``.
* Every QMP command is bounded (``qmp_timeout_s``); failures are ``QmpError`` (a ``VisorError``) and
  concern only that unit: the backend goes on serving the others.

Data-disk consistency (see ``guest/gate.sh``): the guest's root file system is its initramfs, in
RAM, so it belongs to every snapshot. The persistent data disk (ext4, ``data.qcow2``) is never part of
an internal snapshot, and the guest mounts it only after the host opens a gate on ttyS1, which the host
does only after the phase snapshot is taken. No snapshot therefore holds any cached state of the data
disk: after ``phase_reboot`` the guest comes back before the gate, the host opens it again, and the
guest mounts the disk as it is now (ext4's journal repairs what the failure interrupted; the mount
runs at the lowest priority, so the service answers first). Data the service synced before the
failure survives a phase reboot exactly as it survives a cold reboot; what it had not synced is lost
in both. Guest RAM (``/run``: knobs, caches, sessions) goes back to the snapshot.
Whole-state saves (``state_save``, ``clone``) are different: their RAM holds the mounted file system,
so they copy both disks too, while QEMU has them flushed and inactive at the end of the migration.

Remedy mechanisms (the lead's remedies wrap them): ``cold_reboot`` (reset, boot again, wait for the
service) and ``phase_reboot`` (load the phase snapshot taken at ``phase_snapshot`` of the first boot);
a failed ``phase_reboot`` (``VisorError``) leaves the guest paused and calls for ``cold_reboot``.
Also: ``phases(name)`` (the current boot's phases), ``events(name)`` (recent QMP events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil

from enmei.clock import Clock
from enmei.config.qemu import GUEST_PHASES, QemuUnit
from enmei.errors import IdentityError, StartError, VisorError
from enmei.model import Severity, UnitEvent, UnitEventKind, Verdict, VerdictKind
from enmei.visor.base import Backend, Capability, EmitFn, Identity
from enmei.visor.qemu import image as images
from enmei.visor.qemu.accel import accel_key, choose_accel, probe_kvm
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.console import PhaseMark
from enmei.visor.qemu.errors import ImageError, QmpError
from enmei.visor.qemu.machine import Machine, launch, phase_tag, tail
from enmei.visor.qemu.monitor_api import DUMP_ROTATE_BYTES, MonitorApi
from enmei.visor.qemu.rotate import rotate

__all__ = ["QemuBackend", "VerdictFn"]

log = logging.getLogger(__name__)

VerdictFn = Callable[[Verdict], None]
_STATE_FORMAT = 1


class QemuBackend(MonitorApi, Backend):
    """Runs ``QemuUnit`` units. ``verdict`` receives guest panics (see the module docstring).

    ``cache_dir`` is where images and the accelerator verdict are cached (default: the user's cache,
    ``enmei.visor.qemu.image.cache_root()``); ``binary`` is the QEMU system emulator;
    ``kvm_probe_timeout_s`` bounds the one-time KVM test boot of ``accel = "auto"``.
    """

    kind: ClassVar[str] = "qemu"
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)

    def __init__(self, *, clock: Clock, state_dir: Path, emit: EmitFn, verdict: VerdictFn | None = None,
                 cache_dir: Path | None = None, binary: str = "qemu-system-x86_64",
                 kvm_probe_timeout_s: float = 20.0) -> None:
        super().__init__(clock=clock, state_dir=state_dir, emit=emit)
        self.verdict = verdict
        self.cache_dir = cache_dir
        self.binary = binary
        self.kvm_probe_timeout_s = kvm_probe_timeout_s
        self._vms: dict[str, Machine] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, name: str, spec: Any) -> Identity:
        if not isinstance(spec, QemuUnit):
            raise StartError(name, "start", f"not a qemu unit: {type(spec).__name__}")
        if name in self._vms:
            raise StartError(name, "start", f"already running as QEMU pid {self._vms[name].pid}")
        paths = MachinePaths.for_unit(self.state_dir, name)
        try:
            kernel, initrd, accel = await self._prepare(name, spec, paths, fresh_sys=True)
            machine = await self._launch(name, spec, kernel, initrd, accel, paths)
        except (StartError, ImageError) as exc:
            self._start_failed(name, str(exc))
            if isinstance(exc, StartError):
                raise
            raise StartError(name, "start", exc.cause) from exc
        try:
            await machine.wait_phase("service-ready", since=0.0, timeout_s=spec.ready_timeout_s,
                                     what="boot")
            left = spec.ready_timeout_s - (self.clock.monotonic() - machine.started_mono)
            await machine.wait_phase("data-ready", since=0.0, timeout_s=max(1.0, left), what="data disk")
        except (TimeoutError, ProcessLookupError) as exc:
            machine.stopping = machine.quiet_exit = True
            machine.kill()
            await machine._wait_done(5.0)
            self._vms.pop(name, None)
            self._start_failed(name, str(exc))
            raise StartError(name, "start", str(exc)) from exc
        boot_s = round(self.clock.monotonic() - machine.started_mono, 3)
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(), {
            "pid": machine.pid, "accel": accel, "boot_s": boot_s,
            "phase_snapshot": machine.phase_snapshot, "phase_snapshot_error": machine.snapshot_error}))
        return self._identity(machine)

    async def adopt(self, name: str, spec: Any, identity: Identity) -> bool:
        """Take over a QEMU left running by an earlier supervisor. False if it is gone or not ours
        (pid recycled, another command line); ``QmpError`` if it is ours but QMP does not answer."""
        if not isinstance(spec, QemuUnit) or name in self._vms or identity.backend != self.kind:
            return False
        extra = identity.extra
        try:
            qmp_path = Path(str(extra["qmp"]))
            cmdline = " ".join(psutil_cmdline(identity.pid))
        except (KeyError, ProcessLookupError):
            return False
        if str(qmp_path) not in cmdline:
            return False
        paths = MachinePaths(Path(str(extra["dir"])), qmp_path.parent)
        machine = self._machine(name, spec, str(extra.get("kernel", "")), str(extra.get("initrd", "")),
                                str(extra.get("accel", "tcg")), paths, int(extra.get("console_offset", 0)))
        try:
            await machine.attach(identity.pid, create_time=identity.create_time, replay=True)
        except IdentityError:
            return False
        self._vms[name] = machine
        tag = machine_phase_tag(spec)
        if tag is not None:
            with contextlib.suppress(QmpError):
                if tag in await self.snapshot_list(name):
                    now = self.clock.monotonic()
                    machine.phase_snapshot = tag
                    machine.snapshot_phases = {p: machine.console.phases.get(p) or PhaseMark(p, now, None, 1)
                                               for p in _phases_upto(spec)}
        machine.console.poll(self.clock.monotonic())
        phases = machine.console.phases
        if "service-ready" in phases and "data-ready" not in phases:
            # the earlier supervisor died between service-ready and the gate: finish its work
            if spec.phase_snapshot and machine.phase_snapshot is None:
                await machine.take_phase_snapshot(spec.phase_snapshot)
            machine.open_gate()
        self.emit(UnitEvent(name, UnitEventKind.ADOPTED, self.clock.monotonic(),
                            {"pid": identity.pid, "phase_snapshot": machine.phase_snapshot}))
        return True

    async def stop(self, name: str, *, timeout_s: float) -> None:
        machine = self._vms.get(name)
        if machine is None:
            return
        await machine.stop(timeout_s)

    def alive(self, name: str) -> bool:
        machine = self._vms.get(name)
        return machine is not None and machine.alive

    def identity(self, name: str) -> Identity | None:
        machine = self._vms.get(name)
        return self._identity(machine) if machine else None

    async def close(self) -> None:
        """Stop watching every VM; the QEMUs keep running (adopt them later)."""
        for machine in list(self._vms.values()):
            await machine.detach()
        self._vms.clear()

    def maintain(self) -> None:
        """Rotate each VM's console log past ``log.max_bytes`` (copy, then truncate: QEMU appends),
        keeping ``log.keep`` old files; start the network counters' dump files afresh when large."""
        for machine in list(self._vms.values()):
            if rotate(machine.paths.console, int(machine.spec.log.max_bytes), machine.spec.log.keep):
                machine.console.poll(self.clock.monotonic())
            if machine.alive and any(machine.paths.net_dump(d).exists() and
                                     machine.paths.net_dump(d).stat().st_size > DUMP_ROTATE_BYTES
                                     for d in ("tx", "rx")):
                task = asyncio.get_running_loop().create_task(self._quiet_net_stats(machine.name))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    async def _quiet_net_stats(self, name: str) -> None:
        with contextlib.suppress(VisorError):
            await self.net_stats(name)

    def log_path(self, name: str, stream: str) -> Path | None:
        """``console`` (the guest's serial console) or ``qemu`` (QEMU's own messages)."""
        paths = MachinePaths.for_unit(self.state_dir, name)
        return {"console": paths.console, "qemu": paths.qemu_log}.get(stream)

    def phases(self, name: str) -> dict[str, float]:
        """The boot phases of the guest's current boot: phase -> monotonic time it was seen."""
        machine = self._require(name, "phases")
        return {k: v.mono for k, v in machine.console.phases.items()}

    def events(self, name: str) -> list[tuple[float, str, dict[str, Any]]]:
        """The last QMP events of the unit's QEMU: (QEMU wall time, name, data)."""
        return list(self._require(name, "events").events)

    # -- remedy mechanisms -------------------------------------------------------------------------

    async def cold_reboot(self, name: str, *, timeout_s: float | None = None) -> float:
        """Reset the machine (same QEMU), boot again to ``data-ready``; returns the seconds it took.

        Works on a panicked or paused guest too. Raises ``VisorError`` if QMP fails or the guest is
        not ready within ``timeout_s`` (default ``ready_timeout_s``); the VM is then left booting.
        """
        machine = self._require(name, "cold reboot")
        start = self.clock.monotonic()
        try:
            await machine.qmp().execute("system_reset")
            status = await machine.qmp().execute("query-status")
            if not status.get("running"):
                await machine.qmp().execute("cont")
        except QmpError as exc:
            raise VisorError(name, "cold reboot", exc.cause) from exc
        machine.console.forget_phases()
        limit = timeout_s if timeout_s is not None else machine.spec.ready_timeout_s
        try:
            await machine.wait_phase("data-ready", since=start, timeout_s=limit, what="cold reboot")
        except (TimeoutError, ProcessLookupError) as exc:
            raise VisorError(name, "cold reboot", str(exc)) from exc
        return self.clock.monotonic() - start

    async def phase_reboot(self, name: str, *, wait_data: bool = False) -> float:
        """Load the phase snapshot (the guest as it was at ``phase_snapshot`` of its first boot) and
        run it; returns the seconds it took. The data disk keeps its present state (module docstring).

        ``wait_data`` also waits for the data disk to be mounted again. Raises ``VisorError`` if there
        is no phase snapshot or loading it fails (a corrupt snapshot...): the guest is then in an
        undefined state and the next step is ``cold_reboot``.
        """
        machine = self._require(name, "phase reboot")
        if machine.phase_snapshot is None:
            why = f" (saving it failed: {machine.snapshot_error})" if machine.snapshot_error else ""
            raise VisorError(name, "phase reboot", f"no phase snapshot{why}")
        start = self.clock.monotonic()
        await self._load(machine, machine.phase_snapshot, "phase reboot")
        machine.restored_to_snapshot()
        if "service-ready" in machine.console.phases:
            machine.open_gate()
        if wait_data:
            try:
                await machine.wait_phase("data-ready", since=start, timeout_s=machine.spec.ready_timeout_s,
                                         what="phase reboot")
            except (TimeoutError, ProcessLookupError) as exc:
                raise VisorError(name, "phase reboot", str(exc)) from exc
        return self.clock.monotonic() - start

    async def _load(self, machine: Machine, tag: str, action: str) -> None:
        try:
            await machine.qmp().run_job("snapshot-load", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                                        timeout_s=max(30.0, machine.spec.qmp_timeout_s))
            status = await machine.qmp().execute("query-status")
            if not status.get("running"):
                await machine.qmp().execute("cont")
        except QmpError as exc:
            raise VisorError(machine.name, action, exc.cause) from exc

    # -- whole-state save, restore, clone ----------------------------------------------------------

    async def state_save(self, name: str, path: Path) -> None:
        """Save the whole machine (RAM, devices, both disks) to ``path`` (+ ``.sys.qcow2``,
        ``.data.qcow2``, ``.json``). The guest pauses for the end of the migration and the disk copy,
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
                    "saved_wall": self.clock.wall()}
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
            if meta.get("format") != _STATE_FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            use = spec or QemuUnit.model_validate(meta["spec"])
        except (OSError, ValueError, KeyError) as exc:
            raise VisorError(name, "state restore", f"{files['meta']} is unreadable: {exc}") from exc
        old = self._vms.get(name)
        if old is not None:
            old.quiet_exit = True
            await old.stop(0.0)
            self._vms.pop(name, None)
        paths = MachinePaths.for_unit(self.state_dir, name)
        paths.dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(shutil.copyfile, files["sys"], paths.sys_disk)
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
        try:
            machine = await self._launch(name, spec, kernel, initrd, accel, paths, incoming=True)
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
            machine.stopping = machine.quiet_exit = True
            machine.kill()
            await machine._wait_done(5.0)
            self._vms.pop(name, None)
            raise VisorError(name, via, getattr(exc, "cause", str(exc))) from exc
        if meta.get("phase_snapshot") in tags:
            machine.phase_snapshot = str(meta["phase_snapshot"])
            now = self.clock.monotonic()
            machine.snapshot_phases = {p: PhaseMark(p, now, None, 1) for p in _phases_upto(spec)}
            machine.console.phases = {p: PhaseMark(p, now, None, 1) for p in meta.get("phases", [])}
        detail: dict[str, Any] = {"pid": machine.pid, "accel": accel, "via": via}
        if clone_of:
            detail["clone_of"] = clone_of
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(), detail))
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

    # -- internals ---------------------------------------------------------------------------------

    async def _prepare(self, name: str, spec: QemuUnit, paths: MachinePaths, *,
                       fresh_sys: bool) -> tuple[str, str, str]:
        if shutil.which(self.binary) is None:
            raise StartError(name, "start", f"{self.binary} is not installed; run: "
                             "apt-get install -y qemu-system-x86 qemu-utils")
        info = images.resolve(spec.image, cache_dir=self.cache_dir)
        for item in spec.forward:
            _check_port_free(name, int(item.partition(":")[0]))
        paths.dir.mkdir(parents=True, exist_ok=True)
        if fresh_sys:
            await asyncio.to_thread(_make_sys_disk, name, paths.sys_disk)
        await asyncio.to_thread(images.data_disk, paths.data_disk, spec.data_disk_mib, unit=name)

        async def probe() -> bool:
            return await probe_kvm(info.kernel, info.initrd, timeout_s=self.kvm_probe_timeout_s,
                                   binary=self.binary)

        root = self.cache_dir or images.cache_root()
        accel = await choose_accel(spec.accel, cache_file=root / "accel.json",
                                   key=await asyncio.to_thread(accel_key, self.binary), probe=probe)
        return info.kernel, info.initrd, accel

    async def _launch(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                      paths: MachinePaths, *, incoming: bool = False) -> Machine:
        offset = paths.console.stat().st_size if paths.console.exists() else 0
        for direction in ("tx", "rx"):
            with contextlib.suppress(FileNotFoundError):
                paths.net_dump(direction).unlink()
        pid = await launch(name, spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                           binary=self.binary, incoming=incoming)
        machine = self._machine(name, spec, kernel, initrd, accel, paths, offset)
        try:
            await machine.attach(pid)
        except (IdentityError, QmpError) as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)  # just started by us, not yet watched: the pid cannot be recycled yet
            raise StartError(name, "start", f"QEMU pid {pid}: {exc}") from exc
        self._vms[name] = machine
        return machine

    def _machine(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                 paths: MachinePaths, offset: int) -> Machine:
        return Machine(name=name, spec=spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                       clock=self.clock, on_fact=self._on_fact, on_exit=self._on_exit, console_offset=offset)

    def _identity(self, machine: Machine) -> Identity:
        return Identity(unit=machine.name, backend=self.kind, pid=machine.pid,
                        create_time=machine.create_time,
                        started_wall=machine.started_wall,
                        extra={"qmp": str(machine.paths.qmp), "gate": str(machine.paths.gate),
                               "dir": str(machine.paths.dir), "console_offset": machine.console_offset,
                               "kernel": machine.kernel, "initrd": machine.initrd, "accel": machine.accel})

    def _require(self, name: str, action: str) -> Machine:
        machine = self._vms.get(name)
        if machine is None or not machine.alive:
            raise VisorError(name, action, "not running")
        return machine

    def _start_failed(self, name: str, cause: str) -> None:
        self.emit(UnitEvent(name, UnitEventKind.START_FAILED, self.clock.monotonic(), {"cause": cause}))

    def _on_fact(self, machine: Machine, event: str, data: Mapping[str, Any], wall: float) -> None:
        if event != "GUEST_PANICKED" or machine.stopping:
            return
        action = str(data.get("action", ""))
        if action != "pause":
            return  # QEMU goes on (run) or exits (poweroff): the exit is reported as EXITED
        now = self.clock.monotonic()
        evidence: dict[str, Any] = {
            "action": action, "info": dict(data.get("info") or {}), "qemu_wall": wall,
            "pid": machine.pid, "phases": list(machine.console.phases),
            "panic_message": _panic_message(machine),
            "console_tail": tail(machine.paths.console, 15),
            "phase_snapshot": machine.phase_snapshot}
        verdict = Verdict(unit=machine.name, detector="qemu.pvpanic", kind=VerdictKind.PANIC,
                          severity=Severity.CRITICAL, mono=now,
                          summary="guest kernel panicked; QEMU keeps the guest paused", evidence=evidence)
        if self.verdict is not None:
            self.verdict(verdict)
        else:
            log.warning("unit %s: guest kernel panicked (no verdict callback wired)", machine.name)

    def _on_exit(self, machine: Machine) -> None:
        if self._vms.get(machine.name) is machine:
            del self._vms[machine.name]
        if machine.quiet_exit:
            return
        reason = machine.shutdown_reason
        if reason == "guest-panic" or (reason is None and machine.panicked):
            reason = "guest-panicked"
        detail: dict[str, Any] = {
            "pid": machine.pid, "code": None, "reason": reason or "killed (no SHUTDOWN event)",
            "uptime_s": round(self.clock.monotonic() - machine.started_mono, 3),
            "panics": machine.panics, "resets": machine.resets}
        if not machine.stopping:
            detail["console_tail"] = tail(machine.paths.console, 15)
            if reason == "guest-panicked":
                detail["panic_message"] = _panic_message(machine)
            detail["qemu_log_tail"] = tail(machine.paths.qemu_log, 5)
        kind = UnitEventKind.STOPPED if machine.stopping else UnitEventKind.EXITED
        self.emit(UnitEvent(machine.name, kind, self.clock.monotonic(), detail))


def _panic_message(machine: Machine) -> str | None:
    """The kernel's ``Kernel panic - not syncing: ...`` line of this boot, if the console has it."""
    for line in reversed(tail(machine.paths.console, 200, max_bytes=32768)):
        if "Kernel panic" in line:
            return line.strip()
    return None


def machine_phase_tag(spec: QemuUnit) -> str | None:
    return phase_tag(spec.phase_snapshot) if spec.phase_snapshot else None


def _phases_upto(spec: QemuUnit) -> list[str]:
    if spec.phase_snapshot is None:
        return []
    return list(GUEST_PHASES[: GUEST_PHASES.index(spec.phase_snapshot) + 1])


def psutil_cmdline(pid: int) -> list[str]:
    """The command line of ``pid``; ``ProcessLookupError`` if it cannot be read."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error as exc:
        raise ProcessLookupError(pid) from exc


def _state_files(path: Path) -> dict[str, Path]:
    return {"sys": path.with_name(path.name + ".sys.qcow2"),
            "data": path.with_name(path.name + ".data.qcow2"),
            "meta": path.with_name(path.name + ".json")}


def _shq(text: str) -> str:
    if re.fullmatch(r"[\w./+-]+", text):
        return text
    return "'" + text.replace("'", "'\\''") + "'"


def _make_sys_disk(name: str, path: Path) -> None:
    """A fresh, empty qcow2 for snapshots (its virtual size is irrelevant: the guest never sees it)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    try:
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "1M"], check=True,
                       capture_output=True, timeout=60)
    except FileNotFoundError as exc:
        raise StartError(name, "start", "qemu-img is not installed; run: apt-get install -y qemu-utils"
                         ) from exc
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise StartError(name, "start", f"qemu-img create {path} failed: {exc}") from exc


def _check_port_free(name: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as exc:
            raise StartError(name, "start", f"forwarded port 127.0.0.1:{port} is in use ({exc.strerror})"
                             ) from exc



def _absolute(path: Path) -> Path:
    return path.absolute()
