"""VMM rejuvenation (RootHammer for one unit): a fresh QEMU process under the live guest.

``VmmRejuvenator.rejuvenate(name)``, composed by ``QemuBackend`` as ``rejuvenate_vmm``, replaces the
unit's QEMU process (its leaked memory, fds, threads, TCG code cache; or its binary: ``binary`` names a
newer one) without rebooting the guest: the guest's kernel, page cache, processes and uptime go on.

How (each step bounded; ``report`` holds the timings):

1. checks: the unit runs, its guest has not panicked, with ``ram = "shared"`` the RAM file is there at
   the guest's size (``enmei.visor.qemu.ram``). A standby being *prepared* is dropped (its preparation
   sweeps every slot but the running one; it is prepared again afterwards); a ready one stays.
2. a new QEMU in a free slot: the same command line (``binary`` if given), paused (``-S``), waiting for an
   incoming migration (``-incoming defer``), without host forwards (the old QEMU holds the ports). Its
   snapshot disk and RAM file are hard links to the old slot's: the same file, the same internal
   snapshots, the same guest memory. The data disk and console log are the unit's own.
3. ``x-ignore-shared`` on both sides (with shared RAM: the RAM file is not copied; with private RAM the
   migration copies it, which is slower), ``migrate`` over a unix socket; the old QEMU pauses at its end.
4. the switch: the forwards move (``hostfwd_remove`` on the old, ``hostfwd_add`` on the new) and the new
   QEMU resumes (``cont``). *Until ``cont`` succeeded, any failure (the new QEMU does not start, refuses
   or loses the migration, dies, a port does not move) ends the new QEMU first, gives the old one its
   ports back and resumes it*: the guest keeps running in the old QEMU, the outcome says why
   (``VisorError``, ``report["fell_back"]``).
5. after the switch: the new QEMU is the unit's machine (QMP socket, pid and identity for adoption,
   console log, boot phases and phase snapshot, net counters continued, QMP event history) and
   ``STARTED`` is emitted with ``via = "vmm-rejuvenation"`` and ``replaced_pid``; the old QEMU is killed
   (its guest ran elsewhere since the switch: it must never resume) and its slot's file names removed;
   the capability is switched off again (a later phase snapshot must hold RAM), and the guest is asked
   to answer through the first forward (``answered_s``; no answer within ``verify_s`` is a
   ``VisorError`` after the switch: the unit then runs on the new QEMU, and the policy's next step
   repairs the guest). A dropped standby is prepared again.

Downtime is measured by QEMU's own clocks: ``STOP`` of the old QEMU to ``RESUME`` of the new
(``downtime_s``); ``qemu_downtime_ms`` is what the old QEMU's ``query-migrate`` reports.

An enmei killed during a rejuvenation: before the switch the old QEMU is the saved identity (adopted;
paused by the migration, ``postmigrate``, it is resumed with the capability off) and the new one a stray
in a slot (killed by ``strays.reap``); after it, the ``STARTED`` identity names the new one. A kill
between ``cont`` and the engine saving that identity leaves the old one, whose QEMU is paused after a
completed migration: the adopter resumes it, so the guest runs on from the migration's device state
over RAM the new QEMU already ran on for those milliseconds — a known window (not closed: the backend
cannot wait for the engine's identity record), as wide as the switch's last steps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from enmei.clock import Clock
from enmei.errors import IdentityError, StartError, VisorError
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.base import EmitFn
from enmei.visor.qemu import ram, strays
from enmei.visor.qemu.cmdline import NET_DEV, MachinePaths
from enmei.visor.qemu.errors import QmpError
from enmei.visor.qemu.forwards import hmp, hostfwd_add
from enmei.visor.qemu.host import QemuHost
from enmei.visor.qemu.machine import Machine, launch
from enmei.visor.qemu.standby import StandbyManager

__all__ = ["ACTION", "StepHook", "VmmRejuvenator"]

log = logging.getLogger(__name__)

ACTION = "rejuvenate_vmm"
_MIGRATE_SHARED_S = 30.0
_MIGRATE_COPIED_S = 300.0
_POLL_S = 0.002
_FORWARD_WAIT_S = 2.0

StepHook = Callable[[str, Machine], Awaitable[None]]
"""(step, the new machine): called after ``launched`` and ``migrated`` (tests inject faults there)."""


class VmmRejuvenator:
    """Replaces units' QEMU processes under their live guests (module docstring)."""

    def __init__(self, *, clock: Clock, host: QemuHost, emit: EmitFn, machines: dict[str, Machine],
                 standbys: StandbyManager) -> None:
        self.clock = clock
        self.host = host
        self.emit = emit
        self._vms = machines
        self._standbys = standbys
        self.reports: dict[str, dict[str, Any]] = {}
        self.step_hook: StepHook | None = None

    async def rejuvenate(self, name: str, *, binary: str | None = None, verify_s: float = 10.0) -> dict[str, Any]:
        """Replace unit ``name``'s QEMU by a fresh one under the running guest; the report (also kept in
        ``reports[name]``). Raises ``VisorError``: before the switch the old QEMU runs on
        (``report["fell_back"]``), after it the new one runs (``report["switched"]``)."""
        report: dict[str, Any] = {"switched": False}
        self.reports[name] = report
        t0 = self.clock.monotonic()
        old = self._vms.get(name)
        if old is None or not old.alive:
            raise VisorError(name, ACTION, "not running")
        spec = old.spec
        shared = spec.ram == "shared"
        report.update({"replaced_pid": old.pid, "ram": "shared" if shared else "private",
                       "binary": binary or self.host.binary, "memory_mib": spec.memory_mib})
        if old.panicked:
            raise VisorError(name, ACTION, "the guest has panicked: repair the guest first (phase_reboot)")
        if shared and (problem := ram.check_file(old.paths, spec)) is not None:
            raise VisorError(name, ACTION, problem)
        try:
            running = bool((await old.qmp().execute("query-status")).get("running"))
        except QmpError as exc:
            raise VisorError(name, ACTION, f"the old QEMU does not answer: {exc.cause}") from exc
        sb = self._standbys.status(name)
        dropped = sb is not None and sb.get("state") != "ready"
        if dropped:
            await self._standbys.drop(name)
        try:
            return await self._replace(name, old, binary, shared, running, verify_s, report, t0)
        finally:
            report["total_s"] = round(self.clock.monotonic() - t0, 4)
            if dropped or not report["switched"]:
                self._standbys.want(name)

    async def _replace(self, name: str, old: Machine, binary: str | None, shared: bool, running: bool,
                       verify_s: float, report: dict[str, Any], t0: float) -> dict[str, Any]:
        spec = old.spec
        paths = old.paths.with_slot(self._free_slot(name, old))
        report["slot"] = paths.slot
        sock = paths.sock_dir / (f"vmm-{paths.slot}.sock" if paths.slot else "vmm.sock")
        new: Machine | None = None
        moved: list[tuple[int, int]] = []
        try:
            await self._clear_slot(paths)
            await asyncio.to_thread(_link_shared, old.paths, paths, shared)
            # 2. the new QEMU (a launch is never cancelled half-way: it would leave a daemonized QEMU
            # unwatched; a cancel waits for it and the fallback below ends it)
            launching = asyncio.ensure_future(self._launch(name, old, paths, binary))
            try:
                new = await asyncio.shield(launching)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    new = await launching
                raise
            t_launch = self.clock.monotonic()
            report["launch_s"] = round(t_launch - t0, 4)
            if self.step_hook is not None:
                await self.step_hook("launched", new)
            # 3. migrate: only device state with shared RAM
            caps = {"capabilities": [{"capability": "x-ignore-shared", "state": shared}]}
            await new.qmp().execute("migrate-set-capabilities", caps)
            await new.qmp().execute("migrate-incoming", {"uri": f"unix:{sock}"})
            await old.qmp().execute("migrate-set-capabilities", caps)
            await old.qmp().execute("migrate-set-parameters", {"max-bandwidth": 10 * 2**30})
            await old.qmp().execute("migrate", {"uri": f"unix:{sock}"})
            info = await self._wait_migration(old, _MIGRATE_SHARED_S if shared else _MIGRATE_COPIED_S)
            await self._wait_incoming(new)
            t_mig = self.clock.monotonic()
            report.update({"migrate_s": round(t_mig - t_launch, 4), "qemu_downtime_ms": info.get("downtime"),
                           "transferred_bytes": (info.get("ram") or {}).get("transferred")})
            if self.step_hook is not None:
                await self.step_hook("migrated", new)
            if not new.alive:
                raise VisorError(name, ACTION, f"the new QEMU (pid {new.pid}) exited after the migration")
            # 4. the switch
            for item in spec.forward:
                host_port, _, guest_port = item.partition(":")
                await hmp(old, f"hostfwd_remove {NET_DEV} tcp:127.0.0.1:{int(host_port)}")
                moved.append((int(host_port), int(guest_port)))
                await self._hostfwd_add(new, int(host_port), int(guest_port))
            if running:
                await new.qmp().execute("cont")
        except (QmpError, VisorError, StartError, IdentityError, OSError) as exc:
            cause = getattr(exc, "cause", None) or str(exc) or type(exc).__name__
            await self._fall_back(name, old, new, paths, moved, running, report)
            raise VisorError(name, ACTION, f"{cause}; the old QEMU (pid {old.pid}) runs on") from exc
        except asyncio.CancelledError:
            await self._fall_back(name, old, new, paths, moved, running, report)
            raise
        finally:
            with contextlib.suppress(OSError):
                sock.unlink()
        report["switched"] = True
        t_switch = self.clock.monotonic()
        report["switch_s"] = round(t_switch - t_mig, 4)
        await self._adopt_new(name, old, new)
        report["pid"] = new.pid
        report["downtime_s"] = _downtime(old, new)
        # 5. the old QEMU goes; the guest runs in the new one from the switch on
        await old.discard()
        await asyncio.to_thread(_remove_names, old.paths)
        with contextlib.suppress(QmpError):
            await self.reset_capabilities(new)
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(), {
            "pid": new.pid, "accel": new.accel, "via": "vmm-rejuvenation", "replaced_pid": old.pid,
            "phase_snapshot": new.phase_snapshot, "ram": report["ram"]}))
        log.info("unit %s: QEMU pid %d replaced by pid %d under the live guest (%s RAM, %.1f ms down)", name,
                 old.pid, new.pid, report["ram"], 1000 * (report["downtime_s"] or 0.0))
        if running and spec.forward:
            answered = await self._answers(new, verify_s)
            report["answered_s"] = None if answered is None else round(answered - t_switch, 4)
            if answered is None:
                raise VisorError(name, ACTION, f"QEMU pid {new.pid} runs the guest, but its service did not "
                                               f"answer within {verify_s:.0f} s")
        return report

    async def reset_capabilities(self, machine: Machine) -> None:
        """``x-ignore-shared`` off (a later phase snapshot must hold the RAM). Raises ``QmpError``."""
        await machine.qmp().execute("migrate-set-capabilities",
                                    {"capabilities": [{"capability": "x-ignore-shared", "state": False}]})

    # -- steps -------------------------------------------------------------------------------------

    def _free_slot(self, name: str, old: Machine) -> str:
        taken = {old.paths.slot}
        sb = self._standbys.status(name)
        if sb is not None:
            taken.add(str(sb.get("slot")))
        return next(s for s in strays.SLOTS if s not in taken)

    async def _clear_slot(self, paths: MachinePaths) -> None:
        stray = strays.slot_qemu(self.host, paths)
        if stray is not None and not await strays.kill_process(self.host, stray):
            raise VisorError(paths.dir.name, ACTION, f"a QEMU left in slot {paths.slot!r} (pid {stray.pid}) "
                                                     "survived SIGKILL")
        await asyncio.to_thread(strays.remove_files, paths.slot_files())

    async def _launch(self, name: str, old: Machine, paths: MachinePaths, binary: str | None) -> Machine:
        spec = old.spec.model_copy(update={"forward": [], "extra_args": [*old.spec.extra_args, "-S"]})
        offset = paths.console.stat().st_size if paths.console.exists() else 0
        pid = await launch(self.host, name, spec, kernel=old.kernel, initrd=old.initrd, paths=paths,
                           accel=old.accel, incoming=True, binary=binary, keep_ram=True)
        new = Machine(name=name, spec=old.spec, kernel=old.kernel, initrd=old.initrd, paths=paths,
                      accel=old.accel, clock=self.clock, on_fact=_no_fact, on_exit=_no_exit, host=self.host,
                      console_offset=offset, data_shared=old.data_shared, phase_image_id=old.phase_image_id)
        try:
            await new.attach(pid, watch_console=False)
        except (IdentityError, QmpError) as exc:
            self.host.kill_pid(pid)
            raise StartError(name, ACTION, f"the new QEMU (pid {pid}): {exc}") from exc
        return new

    async def _wait_migration(self, old: Machine, timeout_s: float) -> Mapping[str, Any]:
        deadline = self.clock.monotonic() + timeout_s
        while True:
            info = await old.qmp().execute("query-migrate")
            status = info.get("status")
            if status == "completed":
                return dict(info)
            if status in ("failed", "cancelled"):
                raise VisorError(old.name, ACTION, f"migration {status}: {info.get('error-desc', 'no reason given')}")
            if self.clock.monotonic() > deadline:
                raise VisorError(old.name, ACTION, f"migration not done within {timeout_s:.0f} s")
            await self.clock.sleep(_POLL_S)

    async def _wait_incoming(self, new: Machine) -> None:
        """The destination has loaded the state (it leaves ``inmigrate``): paused, as ``-S`` asked."""
        deadline = self.clock.monotonic() + max(5.0, new.spec.qmp_timeout_s)
        while True:
            status = str((await new.qmp().execute("query-status")).get("status"))
            if status == "paused":
                return
            if status != "inmigrate" or self.clock.monotonic() > deadline:
                raise VisorError(new.name, ACTION, f"the new QEMU is {status!r} after the migration, not paused")
            await self.clock.sleep(_POLL_S)

    async def _hostfwd_add(self, machine: Machine, host: int, guest: int) -> None:
        await hostfwd_add(machine, host, guest, clock=self.clock, action=ACTION, wait_s=_FORWARD_WAIT_S)

    async def _fall_back(self, name: str, old: Machine, new: Machine | None, paths: MachinePaths,
                         moved: list[tuple[int, int]], running: bool, report: dict[str, Any]) -> None:
        """Before the switch: the new QEMU goes first (never two guests on one disk and RAM), then the
        old one gets its ports back and runs on. Never raises; what failed is logged and reported."""
        report["fell_back"] = True
        problems: list[str] = []
        with contextlib.suppress(QmpError):
            await old.qmp().execute("migrate_cancel")
        if new is not None and not await new.discard():
            problems.append(f"the new QEMU pid {new.pid} survived SIGKILL")
        stray = strays.slot_qemu(self.host, paths)  # launched, not attached
        if stray is not None and not await strays.kill_process(self.host, stray):
            problems.append(f"the new QEMU pid {stray.pid} survived SIGKILL")
        await asyncio.to_thread(_remove_names, paths)
        if problems:  # the old guest must not run beside a live copy: it stays paused for an operator
            report["problems"] = problems
            log.error("unit %s: %s: the old QEMU stays paused", name, "; ".join(problems))
            return
        try:
            await self.reset_capabilities(old)
            for host_port, guest_port in moved:
                await self._hostfwd_add(old, host_port, guest_port)
            if running and not (await old.qmp().execute("query-status")).get("running"):
                await old.qmp().execute("cont")
        except (QmpError, VisorError) as exc:
            problems.append(getattr(exc, "cause", str(exc)))
            report["problems"] = problems
            log.error("unit %s: resuming the old QEMU after a failed VMM rejuvenation: %s", name, problems[-1])
            return
        log.warning("unit %s: VMM rejuvenation failed; the old QEMU (pid %d) runs on", name, old.pid)

    async def _adopt_new(self, name: str, old: Machine, new: Machine) -> None:
        """The new QEMU becomes the unit's machine: everything the backend knows of the guest follows."""
        for direction in ("tx", "rx"):  # the counters go on from the old QEMU's totals
            counter = old.net[direction]
            await asyncio.to_thread(counter.read_file, old.paths.net_dump(direction))
            counter.restart()
            new.net[direction] = counter
        new.on_fact, new.on_exit, new.on_snapshot = old.on_fact, old.on_exit, old.on_snapshot
        new.panics, new.resets = old.panics, old.resets
        new.events = collections.deque([*old.events, *new.events], maxlen=old.events.maxlen)
        if old.phase_snapshot is not None:
            new.note_phase_snapshot(old.phase_snapshot, old.snapshot_phases)
        new.snapshot_error = old.snapshot_error
        new.console.phases = dict(old.console.phases)
        new.gate_opened_mono = old.gate_opened_mono
        # An adopter replays the console from here: the boot it reads is this guest's (same log).
        new.console_offset = old.console_offset
        self._vms[name] = new
        new.watch()

    async def _answers(self, machine: Machine, verify_s: float) -> float | None:
        """The monotonic time of the guest's first HTTP answer through the unit's first forward."""
        port = int(machine.spec.forward[0].partition(":")[0])
        path = (machine.spec.phase_standby_warm or ["/"])[0]
        deadline = self.clock.monotonic() + verify_s
        while self.clock.monotonic() < deadline:
            with contextlib.suppress(OSError, TimeoutError):
                data = await self.host.http_get(port, path, max(0.5, min(2.0, deadline - self.clock.monotonic())))
                if data.startswith(b"HTTP/"):
                    return self.clock.monotonic()
            await self.clock.sleep(0.01)
        return None


def _downtime(old: Machine, new: Machine) -> float | None:
    """Seconds from the old QEMU's last ``STOP`` to the new one's first ``RESUME`` (QEMU's clocks)."""
    stop = next((w for w, ev, _ in reversed(old.events) if ev == "STOP"), None)
    resume = next((w for w, ev, _ in new.events if ev == "RESUME" and stop is not None and w >= stop), None)
    return None if stop is None or resume is None else round(resume - stop, 4)


def _link_shared(old: MachinePaths, new: MachinePaths, shared: bool) -> None:
    """The new slot's snapshot disk (and RAM file) are the old slot's files under the new slot's names."""
    os.link(old.sys_disk, new.sys_disk)
    if shared:
        os.link(old.ram, new.ram)


def _remove_names(gone: MachinePaths) -> None:
    """Remove a slot's file names (links of files another slot uses stay reachable under its names)."""
    strays.remove_files(gone.slot_files())


def _no_fact(machine: Machine, event: str, data: Mapping[str, Any], wall: float) -> None:
    """Before the switch the new QEMU's events are its own business (``_adopt_new`` wires the unit's)."""


def _no_exit(machine: Machine) -> None:
    """Before the switch the new QEMU's exit is noticed by the rejuvenation itself."""

