"""Warm standby for phase-based reboots (a mixin of ``QemuBackend``).

Why: under TCG, loading the phase snapshot in place takes about a tenth of a second, and the restored
guest then answers its first request only a few tenths of a second later, because a load throws away
TCG's translated code and the guest's kernel, network and fork paths are translated again. A second QEMU that already
holds the guest at the phase snapshot, and has already served a few requests (so its hot paths are
translated), needs only ``cont``: its first answer comes within milliseconds.

Lifecycle of one unit's standby (``Standby.state``)::

    PREPARING -> READY -> taken over by phase_reboot (it becomes the unit's machine;
        |          |                                  the next standby is prepared)
        +----------+-> FAILED (a failed preparation or a standby QEMU that died: retried after
                              2 s, 10 s, 60 s; after a fourth failure left FAILED)
    and at any time: dropped (killed) when the unit stops, is started again, restored, or the backend
    closes (a standby is never adopted: a new supervisor prepares a new one).

Preparing, in the background, once the unit's guest has its data disk (``data-ready``):

1. the *phase image* (``phase-sys.qcow2``: a copy of the snapshot disk made right after the phase
   snapshot of the first boot, while QEMU was paused — ``stop`` flushes its caches to the file) is
   copied into the standby's slot (``a`` or ``b``, never the slot of the unit's running QEMU);
2. a QEMU is launched paused (``-S``) with the unit's command line except: its forwards go to
   temporary loopback ports, its console to its own file; the phase snapshot is loaded into it;
3. it runs, is warmed (``phase_standby_warm``: HTTP GETs on the first forward's temporary port,
   ``phase_standby_warm_rounds`` times), and is paused again: READY. Its guest never passed the
   data-disk gate, so it never touched the data disk.

Taking over (``phase_reboot``): the standby is checked (alive, paused) before anything is done to the
failed QEMU — if it is unusable the reboot falls back to loading the snapshot in place. Then the failed
QEMU is stopped if it still runs (so its I/O drains), killed through its pidfd, and *waited for until
it is gone* — from then on the standby's guest is the only one that can use the data disk, and the
unit's ports are free. The unit's
forwards are added to the standby (``hostfwd_add``), it is resumed (``cont``), its console switched to
the unit's console log (``chardev-change``), and only then its gate opened: the guest drops every
cached block of the data disk and mounts it (``guest/gate.sh``). A failure after the failed QEMU is
gone leaves the unit without a QEMU: the standby is killed, ``EXITED`` emitted, ``VisorError`` raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import psutil

from enmei.clock import Clock
from enmei.config.qemu import GUEST_PHASES, QemuUnit
from enmei.errors import StartError, VisorError
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.base import EmitFn
from enmei.visor.qemu.cmdline import NET_DEV, MachinePaths, kernel_append
from enmei.visor.qemu.console import ConsoleReader, PhaseMark
from enmei.visor.qemu.errors import QmpError
from enmei.visor.qemu.machine import Machine

__all__ = ["SLOTS", "Standby", "StandbyMixin", "StandbyState", "free_port", "image_key", "image_problem",
           "kill_process", "remove_files", "save_phase_image", "slot_qemu",
           "warm"]

log = logging.getLogger(__name__)

SLOTS = ("", "a", "b")
_IMAGE_FORMAT = 1
_RETRY_S = (2.0, 10.0, 60.0)
_WARM_TIMEOUT_S = 5.0
_FORWARD_WAIT_S = 2.0


class StandbyState(StrEnum):
    PREPARING = "preparing"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Standby:
    """One unit's standby: its state, its QEMU once launched, what preparing it cost."""

    unit: str
    slot: str
    state: StandbyState = StandbyState.PREPARING
    since_mono: float = 0.0
    machine: Machine | None = None
    paths: MachinePaths | None = None
    forwards: dict[str, int] = field(default_factory=dict)  # the unit's "HOST:GUEST" -> temporary host port
    error: str | None = None
    prepare_s: float | None = None
    warm_s: list[float] = field(default_factory=list)
    attempts: int = 0
    task: asyncio.Task[None] | None = None

    def status(self) -> dict[str, Any]:
        """``state``, ``slot``, ``pid`` and ``rss_bytes`` of its QEMU (None before it runs), ``error``,
        ``prepare_s`` (seconds the last preparation took), ``warm_requests``, ``attempts``."""
        m = self.machine
        alive = m is not None and m.alive
        rss: float | None = None
        if alive and m is not None and m.proc is not None:
            with contextlib.suppress(psutil.Error):
                rss = float(m.proc.memory_info().rss)
        return {"state": str(self.state), "slot": self.slot, "pid": m.pid if alive and m is not None else None,
                "rss_bytes": rss, "error": self.error, "prepare_s": self.prepare_s,
                "warm_requests": len(self.warm_s), "warm_last_s": self.warm_s[-1] if self.warm_s else None,
                "attempts": self.attempts}


class _Unusable(Exception):
    """The standby cannot take over; nothing was done to the unit's QEMU yet."""


def image_key(machine: Machine) -> dict[str, Any]:
    """What a phase image must match to be loaded into a QEMU like ``machine``'s."""
    spec = machine.spec
    return {"tag": machine.phase_snapshot, "kernel": machine.kernel, "initrd": machine.initrd,
            "accel": machine.accel, "memory_mib": spec.memory_mib, "cpus": spec.cpus,
            "append": kernel_append(spec), "extra_args": list(spec.extra_args)}


def _meta_path(paths: MachinePaths) -> Path:
    return paths.phase_image.with_suffix(".json")


async def save_phase_image(machine: Machine, wall: float) -> str:
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
    meta = {"format": _IMAGE_FORMAT, "id": image_id, "made_wall": wall, "key": image_key(machine)}
    os.replace(tmp, paths.phase_image)
    mtmp = _meta_path(paths).with_name(_meta_path(paths).name + ".tmp")
    mtmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(mtmp, _meta_path(paths))
    return image_id


def image_problem(machine: Machine) -> str | None:
    """Why the unit's phase image cannot make a standby for ``machine`` (None: it can)."""
    path = _meta_path(machine.paths)
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no phase image"
    if meta.get("format") != _IMAGE_FORMAT or not machine.paths.phase_image.exists():
        return "no phase image"
    if machine.phase_image_id is None or meta.get("id") != machine.phase_image_id:
        return "the phase image is not this guest's"
    if meta.get("key") != image_key(machine):
        return "the phase image was made for another machine (kernel, memory...)"
    return None


async def warm(port: int, paths: list[str], rounds: int, *, timeout_s: float = _WARM_TIMEOUT_S) -> list[float]:
    """GET each of ``paths`` on 127.0.0.1:``port``, ``rounds`` times; the seconds of each answered request.

    Any HTTP answer counts (a 404 too: the guest's network and server paths ran). Never raises.
    """
    took: list[float] = []
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        for path in paths:
            t = loop.time()
            writer = None
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout_s)
                writer.write(f"GET {path} HTTP/1.0\r\nHost: enmei-standby\r\n\r\n".encode())
                data = await asyncio.wait_for(reader.read(), timeout_s)
                if data.startswith(b"HTTP/"):
                    took.append(loop.time() - t)
            except (OSError, TimeoutError):
                pass
            finally:
                if writer is not None:
                    writer.close()
    return took


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slot_qemu(paths: MachinePaths) -> psutil.Process | None:
    """The QEMU that runs in ``paths``' slot (by its pid file, confirmed by its command line)."""
    try:
        pid = int(paths.pidfile.read_text().strip())
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or str(paths.qmp) not in " ".join(proc.cmdline()):
            return None
    except (OSError, ValueError, psutil.Error):
        return None
    return proc


async def kill_process(proc: psutil.Process, timeout_s: float = 5.0) -> bool:
    """SIGKILL ``proc`` through a pidfd (after re-checking its create time); True once it is gone."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except OSError:
        return True  # already gone
    try:
        try:
            if psutil.Process(proc.pid).create_time() != proc.create_time():
                return True  # the pid was recycled: not ours to kill
        except psutil.Error:
            return True
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        gone: asyncio.Future[None] = loop.create_future()

        def readable() -> None:
            if not gone.done():
                gone.set_result(None)

        loop.add_reader(pidfd, readable)
        try:
            await asyncio.wait_for(gone, timeout_s)
        except TimeoutError:
            return False
        finally:
            loop.remove_reader(pidfd)
        return True
    finally:
        os.close(pidfd)


def remove_files(files: list[Path]) -> None:
    """Remove these files; those already gone are no error."""
    for f in files:
        with contextlib.suppress(FileNotFoundError):
            f.unlink()


async def _hmp(machine: Machine, command: str) -> str:
    return str(await machine.qmp().execute("human-monitor-command", {"command-line": command}))


class StandbyMixin:
    """The backend's standby methods. The backend provides the attributes and methods declared here."""

    clock: Clock
    emit: EmitFn
    _vms: dict[str, Machine]
    _standbys: dict[str, Standby]
    _background: set[asyncio.Task[None]]

    async def _launch(self, name: str, spec: QemuUnit, kernel: str, initrd: str, accel: str,
                      paths: MachinePaths, *, incoming: bool = False,
                      standby: bool = False) -> Machine:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    def _on_fact(self, machine: Machine, event: str, data: Mapping[str, Any],
                 wall: float) -> None:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    def _on_exit(self, machine: Machine) -> None:  # pragma: no cover - provided by the backend
        raise NotImplementedError

    # -- public --------------------------------------------------------------------------------------

    def standby(self, name: str) -> dict[str, Any] | None:
        """The unit's standby: ``state`` (preparing, ready, failed), ``pid``, ``error``, ``prepare_s``...;
        None if the unit has none (``phase_standby`` off, or not running)."""
        sb = self._standbys.get(name)
        return sb.status() if sb is not None else None

    async def wait_standby(self, name: str, timeout_s: float) -> bool:
        """Wait until the unit's standby is ready; False if it is not within ``timeout_s`` (or failed
        for good)."""
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            sb = self._standbys.get(name)
            if sb is not None and sb.state is StandbyState.READY:
                return True
            if sb is not None and sb.state is StandbyState.FAILED and (sb.task is None or sb.task.done()):
                return False
            await self.clock.sleep(0.02)
        return False

    # -- making one ------------------------------------------------------------------------------------

    async def _on_phase_snapshot(self, machine: Machine) -> None:
        """After the first boot's phase snapshot: save the phase image, then prepare a standby."""
        if self._vms.get(machine.name) is not machine or not machine.spec.uses_standby:
            return
        try:
            machine.phase_image_id = await save_phase_image(machine, self.clock.wall())
        except (QmpError, OSError) as exc:
            cause = getattr(exc, "cause", None) or str(exc)
            log.warning("unit %s: no phase image, so no standby: %s", machine.name, cause)
            self._standbys[machine.name] = Standby(machine.name, "a", StandbyState.FAILED,
                                                   self.clock.monotonic(), error=f"phase image: {cause}")
            return
        self._want_standby(machine.name)

    def _want_standby(self, name: str, delay_s: float = 0.0) -> None:
        """Prepare a standby for the unit in the background, unless it has one or cannot have one."""
        machine = self._vms.get(name)
        if machine is None or not machine.alive or machine.stopping or not machine.spec.uses_standby:
            return
        old = self._standbys.get(name)
        if old is not None and old.state is not StandbyState.FAILED:
            return
        if old is not None and old.task is not None and not old.task.done():
            return  # a failed one is retrying
        slot = "b" if machine.paths.slot == "a" else "a"
        problem = None
        if machine.phase_snapshot is None:
            problem = "no phase snapshot"
        elif not machine.data_shared:
            problem = "the unit's QEMU was started without a shareable data disk"
        else:
            problem = image_problem(machine)
        sb = Standby(name, slot, StandbyState.PREPARING, self.clock.monotonic())
        self._standbys[name] = sb
        if problem is not None:
            sb.state, sb.error = StandbyState.FAILED, problem
            log.info("unit %s: no standby: %s", name, problem)
            return
        sb.task = asyncio.get_running_loop().create_task(self._keep_preparing(name, sb, delay_s),
                                                         name=f"standby-{name}")

    async def _keep_preparing(self, name: str, sb: Standby, delay_s: float) -> None:
        if delay_s > 0:
            await self.clock.sleep(delay_s)
        while True:
            try:
                await self._prepare_standby(name, sb)
                return
            except asyncio.CancelledError:
                await self._kill_standby_machine(sb)
                raise
            except (VisorError, OSError, TimeoutError, ProcessLookupError) as exc:
                await self._kill_standby_machine(sb)
                cause = getattr(exc, "cause", None) or str(exc) or type(exc).__name__
                sb.state, sb.error = StandbyState.FAILED, cause
                sb.attempts += 1
                log.warning("unit %s: preparing the standby failed (attempt %d): %s", name, sb.attempts, cause)
                if sb.attempts > len(_RETRY_S) or self._standbys.get(name) is not sb:
                    return
                await self.clock.sleep(_RETRY_S[sb.attempts - 1])
                if self._standbys.get(name) is not sb or name not in self._vms:
                    return

    async def _prepare_standby(self, name: str, sb: Standby) -> None:
        primary = self._vms.get(name)
        if primary is None or not primary.alive:
            raise VisorError(name, "standby", "the unit is not running")
        # The unit's guest first: its data disk (first boot) or its first answers (after a takeover).
        with contextlib.suppress(TimeoutError):
            await primary.wait_phase("data-ready", since=0.0, timeout_s=primary.spec.ready_timeout_s,
                                     what="standby")
        tag = primary.phase_snapshot
        if tag is None:
            raise VisorError(name, "standby", "no phase snapshot")
        start = self.clock.monotonic()
        sb.state, sb.since_mono = StandbyState.PREPARING, start
        paths = sb.paths = primary.paths.with_slot(sb.slot)
        await self._sweep_slots(primary)
        await asyncio.to_thread(shutil.copyfile, primary.paths.phase_image, paths.sys_disk)
        sb.forwards = {item: free_port() for item in primary.spec.forward}
        spec = primary.spec.model_copy(update={
            "forward": [f"{port}:{item.partition(':')[2]}" for item, port in sb.forwards.items()]})
        # A launch is not cancelled half-way (QEMU daemonizes: it would be left running unwatched); a
        # cancel waits for it, and the QEMU it started is then killed (``_keep_preparing``).
        launching = asyncio.ensure_future(self._launch(name, spec, primary.kernel, primary.initrd, primary.accel,
                                                       paths, standby=True))
        try:
            machine = await asyncio.shield(launching)
        except StartError as exc:
            raise VisorError(name, "standby", exc.cause) from exc
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                sb.machine = await launching
            raise
        sb.machine = machine
        machine.data_shared = True
        machine.phase_image_id = primary.phase_image_id
        qmp = machine.qmp()
        try:
            await qmp.run_job("snapshot-load", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                              timeout_s=max(30.0, spec.qmp_timeout_s))
            await qmp.execute("cont")
            if spec.forward and spec.phase_standby_warm and spec.phase_standby_warm_rounds:
                port = int(spec.forward[0].partition(":")[0])
                sb.warm_s = await warm(port, spec.phase_standby_warm, spec.phase_standby_warm_rounds)
                if not sb.warm_s:
                    raise VisorError(name, "standby", f"its service did not answer on port {port}")
            await qmp.execute("stop")
            status = await qmp.execute("query-status")
        except QmpError as exc:
            raise VisorError(name, "standby", exc.cause) from exc
        if status.get("status") != "paused" or machine.panicked or not machine.alive:
            raise VisorError(name, "standby", f"the standby guest is {status.get('status')}")
        machine.phase_snapshot = tag
        sb.state, sb.error = StandbyState.READY, None
        sb.prepare_s = round(self.clock.monotonic() - start, 3)
        log.info("unit %s: standby ready in slot %s (QEMU pid %d) in %.2fs", name, sb.slot, machine.pid,
                 sb.prepare_s)

    async def _sweep_slots(self, primary: Machine) -> None:
        """Remove the files of every slot but the running QEMU's (killing a stray QEMU found there)."""
        for slot in SLOTS:
            if slot == primary.paths.slot:
                continue
            paths = primary.paths.with_slot(slot)
            stray = slot_qemu(paths)
            if stray is not None:
                log.warning("unit %s: killing a stray QEMU (pid %d) in slot %r", primary.name, stray.pid, slot)
                await kill_process(stray)
            await asyncio.to_thread(remove_files, paths.slot_files())

    async def _reap_strays(self, name: str, base: MachinePaths, keep_pid: int | None) -> None:
        """Kill every QEMU of unit ``name`` but ``keep_pid`` (found by the slots' pid files): two QEMUs of
        one unit must never both use its data disk. A left-over standby of a dead supervisor ends here."""
        for slot in SLOTS:
            paths = base.with_slot(slot)
            stray = slot_qemu(paths)
            if stray is not None and stray.pid != keep_pid:
                log.warning("unit %s: killing a QEMU of this unit left running (pid %d, slot %r)",
                            name, stray.pid, slot)
                if not await kill_process(stray):
                    raise VisorError(name, "start", f"QEMU pid {stray.pid} survived SIGKILL")

    async def _kill_standby_machine(self, sb: Standby) -> None:
        machine = sb.machine
        if machine is not None:
            machine.stopping = machine.quiet_exit = True
            machine.kill()
            await machine.wait_gone(5.0)
            await machine.detach()
        if sb.paths is not None:
            stray = slot_qemu(sb.paths)  # launched, but not attached (yet)
            if stray is not None:
                await kill_process(stray)
            await asyncio.to_thread(remove_files, sb.paths.slot_files())

    async def _drop_standby(self, name: str) -> None:
        """Kill the unit's standby (preparing or ready), if it has one. Never raises."""
        sb = self._standbys.pop(name, None)
        if sb is None:
            return
        if sb.task is not None and not sb.task.done():
            sb.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sb.task
        with contextlib.suppress(Exception):
            await self._kill_standby_machine(sb)

    def _on_standby_fact(self, machine: Machine, event: str, data: Mapping[str, Any], wall: float) -> None:
        if event == "GUEST_PANICKED" and not machine.stopping:
            log.warning("unit %s: the standby guest panicked; it is dropped", machine.name)
            machine.kill()

    def _on_standby_exit(self, machine: Machine) -> None:
        sb = self._standbys.get(machine.name)
        if sb is None or sb.machine is not machine or machine.stopping:
            return
        sb.state, sb.error = StandbyState.FAILED, "the standby QEMU exited"
        log.warning("unit %s: the standby QEMU (pid %d) exited", machine.name, machine.pid)
        if sb.task is None or sb.task.done():  # (a preparation under way notices by itself)
            sb.attempts += 1  # counted with failed preparations: a standby that keeps dying is given up
            if sb.attempts <= len(_RETRY_S):
                sb.task = asyncio.get_running_loop().create_task(
                    self._keep_preparing(machine.name, sb, _RETRY_S[sb.attempts - 1]),
                    name=f"standby-{machine.name}")

    # -- taking over -------------------------------------------------------------------------------------

    async def _take_over(self, name: str, old: Machine, sb: Standby) -> tuple[Machine, dict[str, Any]]:
        """Make the ready standby ``sb`` the unit's machine in place of ``old`` (module docstring).

        Raises ``_Unusable`` before touching ``old``; ``VisorError`` after (the unit is then gone).
        """
        new = sb.machine
        clock = self.clock
        t0 = clock.monotonic()
        if new is None or not new.alive:
            raise _Unusable("its QEMU is gone")
        try:
            status = await new.qmp().execute("query-status", timeout_s=1.0)
        except QmpError as exc:
            raise _Unusable(f"its QMP does not answer: {exc.cause}") from exc
        if status.get("status") != "paused":
            raise _Unusable(f"it is {status.get('status')}, not paused")
        # 1. The failed QEMU: drain its I/O if its guest still runs, then kill it and wait until it is
        #    gone. From then on no other QEMU has the data disk open, and the unit's ports are free.
        old.stopping = old.quiet_exit = True
        if not old.panicked:
            with contextlib.suppress(QmpError):
                await old.qmp().execute("stop", timeout_s=1.0)
        old.kill()
        if not await old.wait_gone(5.0):
            await self._kill_standby_machine(sb)
            raise VisorError(name, "phase reboot", f"QEMU pid {old.pid} survived SIGKILL")
        t_kill = clock.monotonic()
        try:
            # 2. The unit's forwards, on the standby (a port just freed can take a moment).
            for item in sb.forwards:
                host, _, guest = item.partition(":")
                await self._hostfwd_add(new, int(host), int(guest))
            t_fwd = clock.monotonic()
            # 3. Run.
            await new.qmp().execute("cont")
        except (QmpError, VisorError) as exc:
            cause = getattr(exc, "cause", str(exc))
            new.stopping = new.quiet_exit = True
            new.kill()
            await new.wait_gone(5.0)
            self.emit(UnitEvent(name, UnitEventKind.EXITED, clock.monotonic(), {
                "pid": old.pid, "code": None, "reason": f"phase reboot through the standby failed: {cause}"}))
            raise VisorError(name, "phase reboot", f"the standby could not take over: {cause}") from exc
        t_cont = clock.monotonic()
        # 4. It is the unit's machine now.
        new.spec = old.spec
        new.on_fact, new.on_exit = self._on_fact, self._on_exit
        new.panics, new.resets = old.panics, old.resets
        new.events = deque(old.events, maxlen=old.events.maxlen)
        now = clock.monotonic()
        new.snapshot_phases = {p: PhaseMark(p, now, None, 1)
                               for p in GUEST_PHASES[: GUEST_PHASES.index("service-ready") + 1]}
        self._vms[name] = new
        console = new.paths.console
        try:
            await new.qmp().execute("chardev-change", {"id": "console", "backend": {
                "type": "file", "data": {"out": str(console), "append": True}}})
        except QmpError as exc:
            log.warning("unit %s: the console stays in %s: %s", name, new.paths.slot_console, exc.cause)
            console = new.paths.slot_console
        offset = console.stat().st_size if console.exists() else 0
        new.console = ConsoleReader(console, offset=offset)
        new.console_offset = offset
        new.console.phases = dict(new.snapshot_phases)
        new.watch()
        # 5. The data-disk gate: the old QEMU is gone (step 1).
        new.open_gate()
        t_gate = clock.monotonic()
        report = {"via": "standby", "replaced_pid": old.pid, "pid": new.pid, "slot": sb.slot,
                  "kill_s": round(t_kill - t0, 4), "forward_s": round(t_fwd - t_kill, 4),
                  "cont_s": round(t_cont - t_fwd, 4), "gate_s": round(t_gate - t_cont, 4),
                  "standby_prepare_s": sb.prepare_s}
        self.emit(UnitEvent(name, UnitEventKind.STARTED, clock.monotonic(), {
            "pid": new.pid, "accel": new.accel, "via": "phase-standby", "replaced_pid": old.pid,
            "phase_snapshot": new.phase_snapshot}))
        # Off the critical path: the standby's temporary ports go (the old slot's files are swept by the
        # next preparation), and the next standby is prepared.
        task = asyncio.get_running_loop().create_task(self._drop_forwards(new, list(sb.forwards.values())))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        self._want_standby(name)
        return new, report

    async def _drop_forwards(self, machine: Machine, ports: list[int]) -> None:
        for port in ports:
            with contextlib.suppress(QmpError):
                await _hmp(machine, f"hostfwd_remove {NET_DEV} tcp:127.0.0.1:{port}")

    async def _hostfwd_add(self, machine: Machine, host: int, guest: int) -> None:
        rule = f"tcp:127.0.0.1:{host}-:{guest}"
        deadline = self.clock.monotonic() + _FORWARD_WAIT_S
        while True:
            answer = (await _hmp(machine, f"hostfwd_add {NET_DEV} {rule}")).strip()
            if not answer:
                return
            if self.clock.monotonic() > deadline:
                raise VisorError(machine.name, "phase reboot", f"hostfwd_add {rule}: {answer}")
            await self.clock.sleep(0.005)
