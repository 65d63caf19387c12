"""``QemuBackend``: units that are virtual machines under QEMU, controlled over QMP.

Promises:

* ``start`` boots the unit's image and returns once the guest printed ``service-ready`` and then
  ``data-ready`` (its data disk mounted), within ``ready_timeout_s``; otherwise QEMU is killed,
  ``START_FAILED`` is emitted and ``StartError`` raised. A start cancelled while the guest boots (a
  remedy's deadline) kills its QEMU the same way (``START_FAILED``) before the cancellation goes on: a
  guest that gets ready after its start was given up on is never left running beside the next start.
  QEMU runs daemonized in its own session: it outlives the supervisor, and ``adopt`` takes it over
  again from the saved ``Identity`` (name, QEMU pid and create time, QMP socket in ``extra``).
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

Data-disk consistency: the data disk is never part of an internal snapshot and the guest mounts it
only after a gate the host opens once the phase snapshot exists; data the service synced survives a
phase reboot exactly as it survives a cold reboot; guest RAM (``/run``: knobs, caches, sessions) goes
back to the snapshot. The rules, also with a standby sharing the disk, are in ``enmei.visor.qemu.disks``.

Warm standby (``phase_standby``, on by default; ``enmei.visor.qemu.standby``): a second, paused QEMU
of the unit holds the guest at the phase snapshot, already warmed; ``phase_reboot`` switches to it
(milliseconds of downtime) and prepares the next one in the background, and loads the snapshot in
place when no standby is ready. Whole-state saves (``state_save``, ``clone``;
``enmei.visor.qemu.wholestate``) copy both disks too.

The backend composes: ``Machine`` (one QEMU: process, QMP, console, gate), ``StandbyManager``,
``WholeState``, ``MonitorApi``, ``strays`` (killing a unit's QEMUs left by a dead supervisor), ``disks``,
``phase_image``; all of them reach the host through one ``QemuHost`` (``host``), which a test may
replace by ``enmei.visor.qemu.fake.FakeHost``.

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
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from enmei.clock import Clock, uninterrupted
from enmei.config.qemu import QemuUnit
from enmei.errors import IdentityError, StartError, VisorError
from enmei.model import Severity, UnitEvent, UnitEventKind, Verdict, VerdictKind
from enmei.visor.base import Backend, Capability, EmitFn, Identity
from enmei.visor.logs import rotate
from enmei.visor.qemu import disks, handoff, ram, strays
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.console import PhaseMark
from enmei.visor.qemu.errors import BootError, ImageError, QmpError
from enmei.visor.qemu.forwards import host_forwards, hostfwd_add, parse_host_forwards
from enmei.visor.qemu.host import QemuHost
from enmei.visor.qemu.machine import ExitFn, FactFn, Machine, launch, phase_tag, phases_upto, tail
from enmei.visor.qemu.monitor_api import DUMP_ROTATE_BYTES, MonitorApi
from enmei.visor.qemu.shadow import ShadowUpdater, StepFn, recorded_boot_files, settle
from enmei.visor.qemu.standby import StandbyManager
from enmei.visor.qemu.vmm import VmmRejuvenator
from enmei.visor.qemu.wholestate import WholeState

__all__ = ["QemuBackend", "VerdictFn"]

log = logging.getLogger(__name__)

VerdictFn = Callable[[Verdict], None]


class QemuBackend(Backend):
    """Runs ``QemuUnit`` units. ``verdict`` receives guest panics (see the module docstring).

    ``cache_dir`` is where images and the accelerator verdict are cached (default: the user's cache,
    ``enmei.visor.qemu.image.cache_root()``); ``binary`` is the QEMU system emulator;
    ``kvm_probe_timeout_s`` bounds the one-time KVM test boot of ``accel = "auto"``. ``host`` replaces
    the real host (the three arguments before are then the host's business).
    """

    kind: ClassVar[str] = "qemu"
    # Every capability but the socket handover of process units (a VM's update is its own remedy).
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability) - {Capability.HANDOVER}

    def __init__(self, *, clock: Clock, state_dir: Path, emit: EmitFn, verdict: VerdictFn | None = None,
                 cache_dir: Path | None = None, binary: str = "qemu-system-x86_64",
                 kvm_probe_timeout_s: float = 20.0, host: QemuHost | None = None) -> None:
        super().__init__(clock=clock, state_dir=state_dir, emit=emit)
        self.verdict = verdict
        self.host = host or QemuHost(binary=binary, cache_dir=cache_dir, kvm_probe_timeout_s=kvm_probe_timeout_s)
        self._ram_swept = False
        self.cache_dir = self.host.cache_dir
        self.binary = self.host.binary
        self._vms: dict[str, Machine] = {}  # the unit machines, shared with the parts below
        self._reboots: dict[str, dict[str, Any]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.standbys = StandbyManager(clock=clock, host=self.host, emit=emit, machines=self._vms,
                                       launch=self._launch_standby, identity=self._identity)
        self.api = MonitorApi(self._require)
        self.vmm = VmmRejuvenator(clock=clock, host=self.host, emit=emit, machines=self._vms,
                                  standbys=self.standbys)
        self.whole = WholeState(clock=clock, state_dir=state_dir, emit=emit, machines=self._vms,
                                standbys=self.standbys, require=self._require, launch=self._launch_incoming,
                                identity=self._identity, snapshots=self.api.snapshot_list)
        self.shadow = ShadowUpdater(clock=clock, host=self.host, machines=self._vms, standbys=self.standbys,
                                    launch=self._launch_standby)

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, name: str, spec: Any) -> Identity:
        if not isinstance(spec, QemuUnit):
            raise StartError(name, "start", f"not a qemu unit: {type(spec).__name__}")
        if name in self._vms:
            raise StartError(name, "start", f"already running as QEMU pid {self._vms[name].pid}")
        paths = MachinePaths.for_unit(self.state_dir, name)
        try:
            await self.standbys.drop(name)
            await strays.reap(self.host, name, paths)
            await asyncio.to_thread(handoff.clear, paths)  # (its QEMU, if any, was just reaped)
            # an update's pre-update image left by a supervisor that died in it (a first boot makes a new one)
            await asyncio.to_thread(settle, paths, spec.image, None, running=None, phase_image_id=None)
            await asyncio.to_thread(strays.remove_files,
                                    [f for s in strays.SLOTS[1:] for f in paths.with_slot(s).slot_files()])
            if not self._ram_swept:  # guest RAM left in /dev/shm by killed supervisors: before room is counted
                self._ram_swept = True
                await asyncio.to_thread(ram.sweep_unheld)
            spec = ram.resolve(name, spec, paths, self.host.free_bytes)
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
        except BootError as exc:
            await machine.discard()
            self._vms.pop(name, None)
            self._start_failed(name, exc.cause)
            raise StartError(name, "start", exc.cause) from exc
        except asyncio.CancelledError:
            # The start was given up on (its remedy's deadline, an operator's stop): a guest still booting
            # is no instance of the unit. Its QEMU is killed by pid, so that a later start (or a guest
            # getting ready after all) can never make two of the unit's QEMUs run.
            self._vms.pop(name, None)
            await uninterrupted(machine.discard())
            self._start_failed(name, "the start was cancelled before the guest was ready; its QEMU was killed")
            raise
        boot_s = round(self.clock.monotonic() - machine.started_mono, 3)
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(), {
            "pid": machine.pid, "accel": accel, "boot_s": boot_s, "ram": spec.ram,
            "phase_snapshot": machine.phase_snapshot, "phase_snapshot_error": machine.snapshot_error}))
        return self._identity(machine)

    async def adopt(self, name: str, spec: Any, identity: Identity) -> bool:
        """Take over a QEMU left running by an earlier supervisor. False if it is gone or not ours
        (pid recycled, another command line); ``QmpError`` if it is ours but QMP does not answer."""
        if not isinstance(spec, QemuUnit) or name in self._vms or identity.backend != self.kind:
            return False
        extra = identity.extra
        spec = spec.model_copy(update={"ram": "shared" if extra.get("ram") == "shared" else "private"})
        try:
            qmp_path = Path(str(extra["qmp"]))
        except KeyError:
            return False
        proc = self.host.process(identity.pid)
        if proc is None or str(qmp_path) not in " ".join(proc.cmdline):
            return False
        paths = MachinePaths(Path(str(extra["dir"])), qmp_path.parent, str(extra.get("slot", "")))
        took_over = bool(extra.get("takeover"))  # (``recover``: a takeover's new QEMU, the old one gone)
        if not took_over:
            record = await asyncio.to_thread(handoff.read, paths)
            if record is not None and record.old_pid == identity.pid \
                    and abs(record.old_create_time - identity.create_time) < 0.5 \
                    and await self._takeover_committed(name, spec, record):
                # the earlier supervisor died in a takeover after this QEMU let the unit's ports go to the
                # new one: the new one is kept (``recover`` ends this one)
                log.warning("unit %s: QEMU pid %d was being replaced when the earlier supervisor ended: not "
                            "adopted", name, identity.pid)
                return False
        image_id = extra.get("phase_image")
        machine = self._machine(name, spec, str(extra.get("kernel", "")), str(extra.get("initrd", "")),
                                str(extra.get("accel", "tcg")), paths, int(extra.get("console_offset", 0)),
                                data_shared=disks.shared_in(extra), phase_image_id=str(image_id) if image_id else None)
        try:
            await machine.attach(identity.pid, create_time=identity.create_time, replay=True)
        except IdentityError:
            return False
        self._vms[name] = machine
        # a standby (or any other QEMU of this unit) left by the earlier supervisor goes: it is not adopted
        with contextlib.suppress(VisorError):
            await strays.reap(self.host, name, paths, keep_pid=identity.pid)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(handoff.clear, paths)
        if not took_over and spec.forward:
            # a takeover the earlier supervisor died in may have taken this QEMU's ports away (the new
            # QEMU that held them was reaped above): they are given back
            try:
                await self._ensure_forwards(machine, spec, "adopt")
            except VisorError as exc:
                log.warning("unit %s: the adopted QEMU's forwarded ports: %s", name, exc.cause)
        if took_over:
            try:
                await self._finish_takeover(machine, spec, identity)
            except VisorError as exc:  # (a QmpError too) not adopted: the start that follows reaps it
                log.warning("unit %s: the QEMU a takeover left (pid %d) could not be adopted: %s", name,
                            identity.pid, exc)
                self._vms.pop(name, None)
                await machine.detach()
                return False
        # the files of an update the earlier supervisor died in name the guest that runs (``shadow.settle``)
        settled = await asyncio.to_thread(self._settle, name, spec, machine)
        tag = phase_tag(spec.phase_snapshot) if spec.phase_snapshot else None
        if tag is not None:
            with contextlib.suppress(QmpError):
                if tag in await self.api.snapshot_list(name):
                    now = self.clock.monotonic()
                    machine.note_phase_snapshot(tag, {p: machine.console.phases.get(p) or PhaseMark(p, now, None, 1)
                                                      for p in phases_upto(spec)})
        resumed = False
        with contextlib.suppress(QmpError):
            status = (await machine.qmp().execute("query-status")).get("status")
            if status == "postmigrate":
                # the earlier supervisor died in a VMM rejuvenation after the migration: the new QEMU
                # (reaped above) never became the unit's; this one resumes, as a failed one would
                await self.vmm.reset_capabilities(machine)
            if status in ("paused", "postmigrate"):
                # Only enmei pauses a unit's guest, and only inside a remedy (a takeover drains the old
                # guest's I/O before killing it): the earlier supervisor died there. The guest goes back
                # to where it was before the remedy, so that what called for it can be seen again.
                await machine.qmp().execute("cont")
                resumed = True
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
        detail: dict[str, Any] = {"pid": identity.pid, "phase_snapshot": machine.phase_snapshot}
        if resumed:
            detail["resumed"] = True
        if took_over:
            detail["took_over"] = True
        if settled:
            detail["settled"] = settled
        self.emit(UnitEvent(name, UnitEventKind.ADOPTED, self.clock.monotonic(), detail))
        if machine.panicked:
            # Found panicked: the earlier supervisor saw the panic but did not finish repairing it (it
            # died in the remedy, a takeover before the old QEMU went). The panic is reported again.
            self._on_fact(machine, "GUEST_PANICKED", {"action": "pause", "info": {"adopted": True}},
                          self.clock.wall())
        self.standbys.want(name)
        return True

    async def recover(self, name: str, spec: Any) -> Identity | None:
        """A takeover the earlier supervisor died in after it ended the unit's QEMU (``handoff``): the QEMU
        that was taking over — a warm standby repairing a panic, a shadow update's clone running the
        update — is adopted as the unit's (``ADOPTED`` with ``took_over``): resumed if paused, given the
        unit's forwarded ports and console, its data-disk gate opened, the update's files settled as for
        any adoption. None when there is no such takeover (no record, its QEMU gone or not the one
        named, its old QEMU still running): the unit is then started afresh, every stray reaped."""
        if not isinstance(spec, QemuUnit) or name in self._vms:
            return None
        paths = MachinePaths.for_unit(self.state_dir, name)
        record = await asyncio.to_thread(handoff.read, paths)
        if record is None:
            return None
        old = self.host.process(record.old_pid)
        if old is not None and not old.zombie and abs(old.create_time - record.old_create_time) < 0.5:
            if not await self._takeover_committed(name, spec, record):
                return None  # not taken over: the old QEMU runs (not adopted, so not the unit's: reaped at start)
            # the old QEMU (paused, its ports given away) ends, and is waited for (disks, rule 3), before
            # the new one is adopted and its gate opened
            log.warning("unit %s: a takeover the earlier supervisor died in had moved the unit's ports: "
                        "ending the old QEMU (pid %d)", name, old.pid)
            if not await strays.kill_process(self.host, old):
                return None
        try:
            if not await self.adopt(name, spec, record.identity):
                return None
        except VisorError as exc:  # its QMP does not answer: not adopted (the start that follows reaps it)
            log.warning("unit %s: the QEMU a takeover left (pid %d): %s", name, record.identity.pid, exc)
            return None
        machine = self._vms[name]
        if record.temporary_ports:
            self.standbys.drop_temporary_forwards(machine, list(record.temporary_ports))
        return self._identity(machine)

    async def _takeover_committed(self, name: str, spec: QemuUnit, record: handoff.Handoff) -> bool:
        """Whether takeover ``record``'s new QEMU runs (it is the one named) and holds every one of the
        unit's forwarded ports (for a unit with none: its guest was resumed): the takeover had moved
        the service to it, so it is the one to keep. Never raises (a QMP that does not answer: False)."""
        ident = record.identity
        proc = self.host.process(ident.pid)
        qmp = str(ident.extra.get("qmp", ""))
        if proc is None or proc.zombie or not qmp or qmp not in " ".join(proc.cmdline) \
                or abs(proc.create_time - ident.create_time) > 0.5:
            return False
        ports = {int(item.partition(":")[0]) for item in spec.forward}
        monitor = self.host.monitor(name, Path(qmp), timeout_s=spec.qmp_timeout_s, on_event=None)
        try:
            await monitor.connect(deadline_s=max(2.0, spec.qmp_timeout_s))
            if ports:
                answer = await monitor.execute("human-monitor-command", {"command-line": "info usernet"})
                return ports <= parse_host_forwards(str(answer))
            return bool((await monitor.execute("query-status")).get("status") == "running")
        except QmpError as exc:
            log.warning("unit %s: the QEMU a takeover named (pid %d) does not answer: %s", name, ident.pid, exc.cause)
            return False
        finally:
            await monitor.close()

    async def _ensure_forwards(self, machine: Machine, spec: QemuUnit, action: str) -> None:
        """The unit's forwarded ports on ``machine``: those it does not hold are added."""
        held = await host_forwards(machine)
        for item in spec.forward:
            host, _, guest = item.partition(":")
            if int(host) not in held:
                await hostfwd_add(machine, int(host), int(guest), clock=self.clock, action=action, wait_s=2.0)

    async def _finish_takeover(self, machine: Machine, spec: QemuUnit, identity: Identity) -> None:
        """What a takeover does after ending the old QEMU, for an adopted new one (``recover``): its
        console to the unit's log (before its gate opens: the ``data-ready`` line must be read there),
        the unit's forwarded ports (those it does not hold yet). Its phases are the phase snapshot's."""
        await machine.console_to_unit()
        machine.console.phases = {}
        await self._ensure_forwards(machine, spec, "adopt")
        log.warning("unit %s: adopting QEMU pid %d, which was taking over when the earlier supervisor ended",
                    machine.name, identity.pid)

    async def stop(self, name: str, *, timeout_s: float) -> None:
        await self.standbys.drop(name)
        machine = self._vms.get(name)
        if machine is None:
            return
        await machine.stop(timeout_s)
        ram.remove(machine.paths)  # (and the unit's RAM folder, once its standby's file went too)

    def alive(self, name: str) -> bool:
        machine = self._vms.get(name)
        return machine is not None and machine.alive

    def identity(self, name: str) -> Identity | None:
        machine = self._vms.get(name)
        return self._identity(machine) if machine else None

    async def close(self) -> None:
        """Stop watching every VM; the QEMUs keep running (adopt them later). Standbys are killed: a
        new supervisor prepares new ones."""
        await self.standbys.close()
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

    # -- the monitor API, whole state, the standby (their parts do the work) --------------------------

    async def stats(self, name: str) -> dict[str, float]:
        return await self.api.stats(name)

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        return await self.api.block_stats(name)

    async def net_stats(self, name: str) -> dict[str, float]:
        """``tx_*`` = sent by the guest, ``rx_*`` = received by it, since this QEMU started."""
        return await self.api.net_stats(name)

    async def read_memory(self, name: str, address: int, size: int) -> bytes:
        return await self.api.read_memory(name, address, size)

    async def send_keys(self, name: str, text: str) -> None:
        await self.api.send_keys(name, text)

    async def guest_running(self, name: str) -> bool:
        return await self.api.guest_running(name)

    async def set_link(self, name: str, up: bool) -> None:
        await self.api.set_link(name, up)

    async def copy_data_disk(self, name: str, dest: Path) -> float:
        return await self.api.copy_data_disk(name, dest)

    async def snapshot_save(self, name: str, tag: str) -> None:
        await self.api.snapshot_save(name, tag)

    async def snapshot_load(self, name: str, tag: str) -> None:
        await self.api.snapshot_load(name, tag)

    async def snapshot_list(self, name: str) -> list[str]:
        return await self.api.snapshot_list(name)

    async def snapshot_delete(self, name: str, tag: str) -> None:
        await self.api.snapshot_delete(name, tag)

    async def state_save(self, name: str, path: Path) -> None:
        await self.whole.state_save(name, path)

    async def state_restore(self, name: str, path: Path, *, spec: QemuUnit | None = None) -> None:
        await self.whole.state_restore(name, path, spec=spec)

    async def clone(self, name: str, new_name: str, *, spec: QemuUnit | None = None) -> Identity:
        return await self.whole.clone(name, new_name, spec=spec)

    def standby(self, name: str) -> dict[str, Any] | None:
        """The unit's standby (``StandbyManager.status``); None if it has none."""
        return self.standbys.status(name)

    async def wait_standby(self, name: str, timeout_s: float) -> bool:
        """Wait until the unit's standby is ready; False if it is not within ``timeout_s``."""
        return await self.standbys.wait_ready(name, timeout_s)

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
        except BootError as exc:
            raise VisorError(name, "cold reboot", exc.cause) from exc
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
        if standby:
            machine = await self.standbys.take_over(name, machine, report) or machine
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
            except BootError as exc:
                raise VisorError(name, "phase reboot", exc.cause) from exc
            took = self.clock.monotonic() - start
        return took

    async def shadow_update(self, name: str, *, kernel: str | None = None, initrd: str | None = None,
                            image: str | None = None,
                            clone_timeout_s: float | None = None, verify_s: float = 3.0,
                            on_step: StepFn | None = None) -> dict[str, Any]:
        """Boot a clone of the unit into ``kernel``/``initrd`` while the guest serves, then swap it in
        (``enmei.visor.qemu.shadow``); its report. Raises ``VisorError`` (nothing done) or
        ``UpdateFailed`` (rolled back)."""
        return await self.shadow.update(name, kernel=kernel, initrd=initrd, image=image,
                                        clone_timeout_s=clone_timeout_s, verify_s=verify_s, on_step=on_step)

    async def rejuvenate_vmm(self, name: str, *, binary: str | None = None, verify_s: float = 10.0) -> dict[str, Any]:
        """A fresh QEMU process (``binary``, else the backend's) under the unit's live guest; the report.
        ``enmei.visor.qemu.vmm`` says how, and what a failure leaves (``VisorError``)."""
        return await self.vmm.rejuvenate(name, binary=binary, verify_s=verify_s)

    def vmm_report(self, name: str) -> dict[str, Any] | None:
        """How the unit's last VMM rejuvenation went (``enmei.visor.qemu.vmm``), or None."""
        report = self.vmm.reports.get(name)
        return dict(report) if report is not None else None

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
        host = self.host
        host.check_binary(name)
        info = host.resolve_image(spec.image)
        for item in spec.forward:
            host.check_port_free(name, int(item.partition(":")[0]))
        await disks.prepare(host, name, spec, paths, fresh_sys=fresh_sys)
        accel = await host.choose_accel(spec.accel, info)
        # a shadow update recorded newer boot files over the configured image (``shadow``)
        kernel, initrd = recorded_boot_files(spec, paths) or (info.kernel, info.initrd)
        return kernel, initrd, accel

    async def _launch(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                      paths: MachinePaths, *, incoming: bool = False,
                      standby: tuple[FactFn, ExitFn] | None = None) -> Machine:
        """Launch and attach a QEMU. It becomes the unit's machine, except a ``standby`` (paused, its
        console task not started, its facts and exit going to the standby's handlers given)."""
        offset = paths.console.stat().st_size if paths.console.exists() else 0
        for direction in ("tx", "rx"):
            with contextlib.suppress(FileNotFoundError):
                paths.net_dump(direction).unlink()
        pid = await launch(self.host, name, spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                           incoming=incoming, standby=standby is not None)
        machine = self._machine(name, spec, kernel, initrd, accel, paths, offset, standby=standby)
        try:
            # To its end (bounded by the QMP deadlines) even if the start is given up on meanwhile: a QMP
            # connect cancelled half-way leaves its socket open; the machine is then ended whole.
            await uninterrupted(machine.attach(pid, watch_console=standby is None))
        except (IdentityError, QmpError) as exc:
            self.host.kill_pid(pid)
            raise StartError(name, "start", f"QEMU pid {pid}: {exc}") from exc
        except asyncio.CancelledError:  # given up on before it was the unit's: nobody else would end it
            self.host.kill_pid(pid)
            await uninterrupted(machine.discard())
            raise
        if standby is None:
            self._vms[name] = machine
        return machine

    async def _launch_standby(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                              paths: MachinePaths, on_fact: FactFn, on_exit: ExitFn) -> Machine:
        return await self._launch(name, spec, kernel, initrd, accel, paths, standby=(on_fact, on_exit))

    async def _launch_incoming(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                               paths: MachinePaths) -> Machine:
        return await self._launch(name, spec, kernel, initrd, accel, paths, incoming=True)

    def _machine(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                 paths: MachinePaths, offset: int, *, standby: tuple[FactFn, ExitFn] | None = None,
                 data_shared: bool | None = None, phase_image_id: str | None = None) -> Machine:
        if standby is not None:
            return Machine(name=name, spec=spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                           clock=self.clock, on_fact=standby[0], on_exit=standby[1], host=self.host,
                           console_offset=offset)
        return Machine(name=name, spec=spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel,
                       clock=self.clock, on_fact=self._on_fact, on_exit=self._on_exit, host=self.host,
                       console_offset=offset, on_snapshot=self.standbys.on_phase_snapshot,
                       data_shared=spec.uses_standby if data_shared is None else data_shared,
                       phase_image_id=phase_image_id)

    def _identity(self, machine: Machine) -> Identity:
        return Identity(unit=machine.name, backend=self.kind, pid=machine.pid,
                        create_time=machine.create_time,
                        started_wall=machine.started_wall,
                        extra={"qmp": str(machine.paths.qmp), "gate": str(machine.paths.gate),
                               "dir": str(machine.paths.dir), "slot": machine.paths.slot,
                               "console_offset": machine.console_offset,
                               "kernel": machine.kernel, "initrd": machine.initrd, "accel": machine.accel,
                               "data_disk": disks.SHARED if machine.data_shared else "raw",
                               "phase_image": machine.phase_image_id, "promoted": bool(machine.paths.slot),
                               "ram": machine.spec.ram})

    def _settle(self, name: str, spec: QemuUnit, machine: Machine) -> list[str]:
        try:
            info = self.host.resolve_image(spec.image)
            configured: tuple[str, str] | None = (info.kernel, info.initrd)
        except ImageError:
            configured = None
        try:
            done = settle(machine.paths, spec.image, configured, running=(machine.kernel, machine.initrd),
                          phase_image_id=machine.phase_image_id)
        except OSError as exc:
            log.warning("unit %s: settling an interrupted update's files: %s", name, exc)
            return [f"settling an interrupted update's files failed: {exc}"]
        for what in done:
            log.warning("unit %s: an update interrupted by the earlier supervisor's end: %s", name, what)
        return done

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
            if not machine.quiet_exit:
                self.standbys.drop_soon(machine.name)
        if machine.quiet_exit:
            return
        ram.remove(machine.paths)  # the unit's guest is gone: so is its memory
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
