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
RAM, so it belongs to every snapshot. The persistent data disk (ext4, a raw file ``data.img``) is never
part of an internal snapshot, and the guest mounts it only after the host opens a gate on ttyS1, which
the host does only after the phase snapshot is taken. No snapshot therefore holds any state of the
mounted file system; the one thing the guest read from the disk before the snapshot is its first blocks
(the kernel's partition scan at boot), and the gate script drops every cached block of the disk
(``blockdev --flushbufs``, ``drop_caches``) before it mounts. After ``phase_reboot`` the guest comes
back before the gate, the host opens it again, and the guest mounts the disk as it is now (ext4's
journal repairs what the failure interrupted; the mount runs at the lowest priority, so the service
answers first). Data the service synced before the failure survives a phase reboot exactly as it
survives a cold reboot; what it had not synced is lost in both. Guest RAM (``/run``: knobs, caches,
sessions) goes back to the snapshot.

Warm standby (``phase_standby``, on by default; ``enmei.visor.qemu.standby``): a second, paused QEMU
of the unit holds the guest at the phase snapshot, already warmed; ``phase_reboot`` switches to it
(milliseconds of downtime) and prepares the next one in the background, and loads the snapshot in
place when no standby is ready. Two QEMUs then have the data disk open, and the rules that keep it
consistent are: (1) the disk is *raw*, so a QEMU holds no image metadata (no qcow2 L2 or refcount
cache) that another could make stale, and QEMU's image lock is shared (``share-rw``) by the unit's
QEMUs; (2) a standby's guest never passes its gate while it is a standby, so it never reads or writes
the disk; (3) the failed QEMU is killed and *waited for until its process is gone* before the standby
is resumed and its gate opened, so at any time at most one guest uses the disk; (4) that guest drops
any cached block of the disk before mounting it (above); (5) a ``start`` or ``adopt`` first kills any
other QEMU of the unit still running (found by the slots' pid files, confirmed by their command line:
a standby left behind by a supervisor that died), since QEMU's lock no longer keeps two of them apart.
Whole-state saves (``state_save``, ``clone``; ``enmei.visor.qemu.wholestate``) are different: their
RAM holds the mounted file system, so they copy both disks too, while QEMU has them flushed and
inactive at the end of the migration.

Remedy mechanisms (the lead's remedies wrap them): ``cold_reboot`` (reset, boot again, wait for the
service) and ``phase_reboot`` (switch to the warm standby, or load the phase snapshot taken at
``phase_snapshot`` of the first boot in place); a failed in-place ``phase_reboot`` (``VisorError``)
leaves the guest paused and calls for ``cold_reboot``. A standby taking over is a new QEMU: ``STARTED``
is emitted with ``detail["via"] = "phase-standby"`` and ``replaced_pid``, and ``identity`` changes.
Also: ``phases(name)`` (the current boot's phases), ``events(name)`` (recent QMP events),
``standby(name)`` (the standby's state), ``reboot_report(name)`` (how the last phase reboot went).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import psutil

from enmei.clock import Clock
from enmei.config.qemu import QemuUnit
from enmei.errors import IdentityError, StartError, VisorError
from enmei.model import Severity, UnitEvent, UnitEventKind, Verdict, VerdictKind
from enmei.visor.base import Backend, Capability, EmitFn, Identity
from enmei.visor.logs import rotate
from enmei.visor.qemu import image as images
from enmei.visor.qemu.accel import accel_key, choose_accel, probe_kvm
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.console import PhaseMark
from enmei.visor.qemu.errors import ImageError, QmpError
from enmei.visor.qemu.machine import Machine, launch, phase_tag, tail
from enmei.visor.qemu.monitor_api import DUMP_ROTATE_BYTES, MonitorApi
from enmei.visor.qemu.standby import SLOTS, Standby, StandbyMixin, StandbyState, _Unusable, remove_files
from enmei.visor.qemu.wholestate import WholeStateMixin, phases_upto

__all__ = ["QemuBackend", "VerdictFn"]

log = logging.getLogger(__name__)

VerdictFn = Callable[[Verdict], None]


class QemuBackend(MonitorApi, StandbyMixin, WholeStateMixin, Backend):
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
        self._standbys: dict[str, Standby] = {}
        self._reboots: dict[str, dict[str, Any]] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, name: str, spec: Any) -> Identity:
        if not isinstance(spec, QemuUnit):
            raise StartError(name, "start", f"not a qemu unit: {type(spec).__name__}")
        if name in self._vms:
            raise StartError(name, "start", f"already running as QEMU pid {self._vms[name].pid}")
        paths = MachinePaths.for_unit(self.state_dir, name)
        try:
            await self._drop_standby(name)
            await self._reap_strays(name, paths, keep_pid=None)
            await asyncio.to_thread(remove_files, [f for s in SLOTS[1:] for f in paths.with_slot(s).slot_files()])
            kernel, initrd, accel = await self._prepare(name, spec, paths, fresh_sys=True)
            machine = await self._launch(name, spec, kernel, initrd, accel, paths)
        except (StartError, ImageError, VisorError) as exc:
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
        paths = MachinePaths(Path(str(extra["dir"])), qmp_path.parent, str(extra.get("slot", "")))
        machine = self._machine(name, spec, str(extra.get("kernel", "")), str(extra.get("initrd", "")),
                                str(extra.get("accel", "tcg")), paths, int(extra.get("console_offset", 0)))
        machine.data_shared = extra.get("data_disk") == "raw-shared"
        image_id = extra.get("phase_image")
        machine.phase_image_id = str(image_id) if image_id else None
        try:
            await machine.attach(identity.pid, create_time=identity.create_time, replay=True)
        except IdentityError:
            return False
        self._vms[name] = machine
        # a standby (or any other QEMU of this unit) left by the earlier supervisor goes: it is not adopted
        with contextlib.suppress(VisorError):
            await self._reap_strays(name, paths, keep_pid=identity.pid)
        tag = machine_phase_tag(spec)
        if tag is not None:
            with contextlib.suppress(QmpError):
                if tag in await self.snapshot_list(name):
                    now = self.clock.monotonic()
                    machine.phase_snapshot = tag
                    machine.snapshot_phases = {p: machine.console.phases.get(p) or PhaseMark(p, now, None, 1)
                                               for p in phases_upto(spec)}
        machine.console.poll(self.clock.monotonic())
        phases = machine.console.phases
        if "service-ready" in phases and "data-ready" not in phases:
            # the earlier supervisor died between service-ready and the gate: finish its work
            if spec.phase_snapshot and machine.phase_snapshot is None:
                await machine.take_phase_snapshot(spec.phase_snapshot)
            machine.open_gate()
        elif extra.get("promoted") and "data-ready" not in phases:
            # a standby that took over, its gate not yet open when the earlier supervisor died
            machine.console.phases = dict(machine.snapshot_phases)
            machine.open_gate()
        self.emit(UnitEvent(name, UnitEventKind.ADOPTED, self.clock.monotonic(),
                            {"pid": identity.pid, "phase_snapshot": machine.phase_snapshot}))
        self._want_standby(name)
        return True

    async def stop(self, name: str, *, timeout_s: float) -> None:
        await self._drop_standby(name)
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
        """Stop watching every VM; the QEMUs keep running (adopt them later). Standbys are killed: a
        new supervisor prepares new ones."""
        for name in list(self._standbys):
            await self._drop_standby(name)
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

    async def phase_reboot(self, name: str, *, wait_data: bool = False, standby: bool = True) -> float:
        """Bring the guest back to the phase snapshot (as it was at ``phase_snapshot`` of its first boot)
        and run it; returns the seconds it took. The data disk keeps its present state (module docstring).

        With a ready warm standby (and ``standby``), the standby takes over: the unit's QEMU is replaced
        (``STARTED`` with ``via = "phase-standby"``). Otherwise the snapshot is loaded in place.
        ``reboot_report(name)`` says which and how long each step took. ``wait_data`` also waits for the
        data disk to be mounted again. Raises ``VisorError`` if there is no phase snapshot or loading it
        fails (a corrupt snapshot...): the guest is then in an undefined state and the next step is
        ``cold_reboot``; or if a standby failed after the old QEMU was ended (``EXITED`` was emitted).
        """
        machine = self._require(name, "phase reboot")
        if machine.phase_snapshot is None:
            why = f" (saving it failed: {machine.snapshot_error})" if machine.snapshot_error else ""
            raise VisorError(name, "phase reboot", f"no phase snapshot{why}")
        start = self.clock.monotonic()
        report: dict[str, Any] = {"via": "in-place"}
        sb = self._standbys.get(name)
        if standby and sb is not None and sb.state is StandbyState.READY:
            del self._standbys[name]
            # Never left half-done (the old QEMU killed, the standby not yet running): a cancel waits.
            takeover = asyncio.ensure_future(self._take_over(name, machine, sb))
            try:
                machine, report = await asyncio.shield(takeover)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await takeover
                if not takeover.cancelled() and isinstance(takeover.exception(), _Unusable):
                    await self._kill_standby_machine(sb)
                raise
            except _Unusable as exc:
                log.warning("unit %s: the standby cannot take over (%s): loading the snapshot in place",
                            name, exc)
                report["standby_unusable"] = str(exc)
                await self._kill_standby_machine(sb)
                self._want_standby(name)
        elif sb is not None:
            report["standby"] = str(sb.state)
        if report["via"] == "in-place":
            tag = machine.phase_snapshot
            assert tag is not None
            await self._load(machine, tag, "phase reboot")
            machine.restored_to_snapshot()
            if "service-ready" in machine.console.phases:
                machine.open_gate()
        took = self.clock.monotonic() - start
        report["took_s"] = round(took, 4)
        self._reboots[name] = report
        if wait_data:
            try:
                await machine.wait_phase("data-ready", since=start, timeout_s=machine.spec.ready_timeout_s,
                                         what="phase reboot")
            except (TimeoutError, ProcessLookupError) as exc:
                raise VisorError(name, "phase reboot", str(exc)) from exc
            took = self.clock.monotonic() - start
        return took

    def reboot_report(self, name: str) -> dict[str, Any] | None:
        """How the unit's last phase reboot went: ``via`` (``standby`` or ``in-place``), ``took_s``, and
        for a standby the seconds to end the old QEMU (``kill_s``), move the ports (``forward_s``) and
        resume (``cont_s``)."""
        report = self._reboots.get(name)
        return dict(report) if report is not None else None

    async def _load(self, machine: Machine, tag: str, action: str) -> None:
        try:
            await machine.qmp().run_job("snapshot-load", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                                        timeout_s=max(30.0, machine.spec.qmp_timeout_s))
            status = await machine.qmp().execute("query-status")
            if not status.get("running"):
                await machine.qmp().execute("cont")
        except QmpError as exc:
            raise VisorError(machine.name, action, exc.cause) from exc

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
            for old in (paths.phase_image, paths.phase_image.with_suffix(".json")):
                with contextlib.suppress(FileNotFoundError):
                    old.unlink()  # a new first boot makes a new phase image
        await asyncio.to_thread(images.data_disk, paths.data_disk, spec.data_disk_mib, unit=name,
                                legacy=paths.legacy_data_disk)

        async def probe() -> bool:
            return await probe_kvm(info.kernel, info.initrd, timeout_s=self.kvm_probe_timeout_s,
                                   binary=self.binary)

        root = self.cache_dir or images.cache_root()
        accel = await choose_accel(spec.accel, cache_file=root / "accel.json",
                                   key=await asyncio.to_thread(accel_key, self.binary), probe=probe)
        return info.kernel, info.initrd, accel

    async def _launch(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                      paths: MachinePaths, *, incoming: bool = False, standby: bool = False) -> Machine:
        """Launch and attach a QEMU. It becomes the unit's machine, except a ``standby`` (paused, its
        console task not started, its facts and exit handled as a standby's)."""
        offset = paths.console.stat().st_size if paths.console.exists() else 0
        for direction in ("tx", "rx"):
            with contextlib.suppress(FileNotFoundError):
                paths.net_dump(direction).unlink()
        pid = await launch(name, spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                           binary=self.binary, incoming=incoming, standby=standby)
        machine = self._machine(name, spec, kernel, initrd, accel, paths, offset, standby=standby)
        try:
            await machine.attach(pid, watch_console=not standby)
        except (IdentityError, QmpError) as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 9)  # just started by us, not yet watched: the pid cannot be recycled yet
            raise StartError(name, "start", f"QEMU pid {pid}: {exc}") from exc
        if not standby:
            self._vms[name] = machine
        return machine

    def _machine(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                 paths: MachinePaths, offset: int, *, standby: bool = False) -> Machine:
        if standby:
            return Machine(name=name, spec=spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                           clock=self.clock, on_fact=self._on_standby_fact, on_exit=self._on_standby_exit,
                           console_offset=offset)
        return Machine(name=name, spec=spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                       clock=self.clock, on_fact=self._on_fact, on_exit=self._on_exit, console_offset=offset,
                       on_snapshot=self._on_phase_snapshot, data_shared=spec.uses_standby)

    def _identity(self, machine: Machine) -> Identity:
        return Identity(unit=machine.name, backend=self.kind, pid=machine.pid,
                        create_time=machine.create_time,
                        started_wall=machine.started_wall,
                        extra={"qmp": str(machine.paths.qmp), "gate": str(machine.paths.gate),
                               "dir": str(machine.paths.dir), "slot": machine.paths.slot,
                               "console_offset": machine.console_offset,
                               "kernel": machine.kernel, "initrd": machine.initrd, "accel": machine.accel,
                               "data_disk": "raw-shared" if machine.data_shared else "raw",
                               "phase_image": machine.phase_image_id, "promoted": bool(machine.paths.slot)})

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
            if not machine.quiet_exit and machine.name in self._standbys:
                task = asyncio.get_running_loop().create_task(self._drop_standby(machine.name))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
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


def psutil_cmdline(pid: int) -> list[str]:
    """The command line of ``pid``; ``ProcessLookupError`` if it cannot be read."""
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error as exc:
        raise ProcessLookupError(pid) from exc


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
