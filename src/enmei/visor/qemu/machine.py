"""One running QEMU of a VM unit: its process, QMP monitor, console, gate and boot phases.

A ``Machine`` is made for a QEMU that already runs (``launch`` starts one daemonized: it is never the
supervisor's child, so it outlives the supervisor, and a started and an adopted VM are watched the same
way). ``attach`` pins the process with a pidfd (after checking its create time), connects QMP and
starts two tasks:

* the console task reads ``console.log`` every 20 ms, keeps the boot phases, takes the phase snapshot
  when the configured phase appears (once per QEMU; then ``on_snapshot`` runs), and opens the
  data-disk gate when ``service-ready`` appears. A warm standby is attached without it (its guest is
  not the unit's yet); ``watch`` starts it when the standby takes over;
* the QMP event pump (in ``Monitor``) feeds ``_on_event``: GUEST_PANICKED, SHUTDOWN, RESET, STOP,
  RESUME are recorded and passed on to the backend's ``on_fact``.

When the process exits (the pidfd becomes readable) the tasks end, the monitor closes and
``on_exit(machine)`` is called once. Nothing here emits ``UnitEvent``: the backend does.

A machine changes its own fields; its owners use its public API: ``discard`` (kill it without an
event), ``promote`` (a standby becomes the unit's machine in place of the old one), ``restored_to_snapshot``
and ``note_phase_snapshot`` (its guest is known to be at / to have a phase snapshot), ``wait_phase``
(``BootError`` if the phase does not come). Every process, socket and file operation goes through its
``host`` (``enmei.visor.qemu.host``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from enmei.clock import Clock, uninterrupted, wait_for
from enmei.config.qemu import GUEST_PHASES, QemuUnit
from enmei.errors import IdentityError, StartError, StopError
from enmei.visor.qemu import ram
from enmei.visor.qemu.cmdline import MachinePaths, build_cmdline
from enmei.visor.qemu.console import ConsoleReader, PhaseMark
from enmei.visor.qemu.errors import BootError, QmpError
from enmei.visor.qemu.host import Pin, QemuHost
from enmei.visor.qemu.netcount import PcapCounter
from enmei.visor.qemu.qmp import Monitor

__all__ = ["CREATE_TIME_TOLERANCE_S", "ExitFn", "FactFn", "Machine", "launch", "phase_tag", "phases_upto", "tail"]

log = logging.getLogger(__name__)

CREATE_TIME_TOLERANCE_S = 0.05
_POLL_S = 0.02
_GATE_RETRY_S = 0.1
_LAUNCH_TIMEOUT_S = 60.0


def phase_tag(phase: str) -> str:
    """The internal snapshot tag of the phase snapshot taken at ``phase``."""
    return f"enmei-phase-{phase}"


def phases_upto(spec: QemuUnit) -> list[str]:
    """The boot phases up to and including the unit's phase snapshot's."""
    if spec.phase_snapshot is None:
        return []
    return list(GUEST_PHASES[: GUEST_PHASES.index(spec.phase_snapshot) + 1])


async def launch(host: QemuHost, name: str, spec: QemuUnit, *, kernel: str, initrd: str, paths: MachinePaths,
                 accel: str, incoming: bool = False, standby: bool = False, binary: str | None = None,
                 keep_ram: bool = False) -> int:
    """Start QEMU daemonized; returns its pid once QEMU is initialized (QMP listening).

    ``binary`` replaces the host's QEMU binary for this one. With shared RAM the slot's RAM file starts
    afresh, unless ``keep_ram`` (it holds a live guest: a VMM rejuvenation). Raises ``StartError`` with
    the tail of ``qemu.log`` if QEMU refused to start.
    """
    binary = binary or host.binary
    argv = build_cmdline(spec, kernel=kernel, initrd=initrd, paths=paths, accel=accel, binary=binary,
                         incoming=incoming, standby=standby)
    paths.sock_dir.mkdir(parents=True, exist_ok=True)
    for sock in (paths.qmp, paths.gate):
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
    if spec.ram == "shared" and not keep_ram:
        try:
            ram.fresh(paths)
        except OSError as exc:
            raise StartError(name, "start", f"shared guest RAM: {exc}") from exc
    with contextlib.suppress(FileNotFoundError):
        paths.pidfile.unlink()
    try:
        # To its end even if the start is given up on meanwhile (its remedy's deadline, a supervisor's
        # stop): QEMU daemonizes once initialized, so a launch cancelled half-way would leave a guest
        # running that nobody knows of. Bounded by the spawn's own timeout; the daemon is then ended.
        rc = await uninterrupted(host.spawn(argv, paths.qemu_log, _LAUNCH_TIMEOUT_S))
    except asyncio.CancelledError:
        _end_launched(host, paths)
        raise
    except FileNotFoundError as exc:
        raise StartError(name, "start", f"{binary} not found; run: apt-get install -y qemu-system-x86") from exc
    except TimeoutError as exc:
        raise StartError(name, "start", f"QEMU did not finish starting in {_LAUNCH_TIMEOUT_S:.0f} s") from exc
    if rc != 0:
        raise StartError(name, "start", f"QEMU exited with {rc}: {' | '.join(tail(paths.qemu_log, 3))}")
    try:
        return int(paths.pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise StartError(name, "start", f"QEMU left no readable pid file at {paths.pidfile}") from exc


def _end_launched(host: QemuHost, paths: MachinePaths) -> None:
    """SIGKILL the QEMU a cancelled launch left, found by its pid file and checked by its command line
    (its QMP socket path). Never raises."""
    try:
        pid = int(paths.pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    proc = host.process(pid)
    if proc is not None and str(paths.qmp) in " ".join(proc.cmdline):
        host.kill_pid(pid)


def tail(path: Path, n: int, max_bytes: int = 8192) -> list[str]:
    """The last ``n`` lines of a file; [] if it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            data = f.read()
    except OSError:
        return []
    return [ln[:300] for ln in data.decode("utf-8", "replace").splitlines()[-n:]]


FactFn = Callable[["Machine", str, Mapping[str, Any], float], None]
ExitFn = Callable[["Machine"], None]
SnapshotFn = Callable[["Machine"], Awaitable[None]]


EXIT_DRAIN_S = 2.0  # after QEMU exits, how long its last QMP events may take to be read


@dataclass
class Machine:
    """The live state of one QEMU process of unit ``name``."""

    name: str
    spec: QemuUnit
    kernel: str
    initrd: str
    paths: MachinePaths
    accel: str
    clock: Clock
    on_fact: FactFn  # (machine, QMP event name, data, QEMU wall time)
    on_exit: Callable[[Machine], None]
    host: QemuHost = field(default_factory=QemuHost)
    console_offset: int = 0
    on_snapshot: SnapshotFn | None = None  # after the phase snapshot was taken (before the gate opens)
    data_shared: bool = False  # the data disk is raw and shareable (launched for a unit with a standby)
    phase_image_id: str | None = None  # the unit's phase image made from this guest's phase snapshot
    pid: int = 0
    create_time: float = 0.0
    started_mono: float = 0.0
    started_wall: float = 0.0
    proc: psutil.Process | None = None
    pin: Pin | None = None
    monitor: Monitor | None = None
    console: ConsoleReader = field(init=False)
    stopping: bool = False
    quiet_exit: bool = False  # its exit is not reported (a failed start, a QEMU replaced by a restore)
    panicked: bool = False
    panic_wall: float | None = None
    shutdown_reason: str | None = None
    resets: int = 0
    panics: int = 0
    phase_snapshot: str | None = None  # the tag, once the phase snapshot exists
    snapshot_phases: dict[str, PhaseMark] = field(default_factory=dict)
    snapshot_error: str | None = None
    gate_opened_mono: float | None = None
    exited_mono: float | None = None  # when its pidfd said the process ended
    vcpu_tids: list[int] = field(default_factory=list)
    net: dict[str, PcapCounter] = field(default_factory=lambda: {"tx": PcapCounter(), "rx": PcapCounter()})
    events: collections.deque[tuple[float, str, dict[str, Any]]] = field(
        default_factory=lambda: collections.deque(maxlen=100))
    done: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _gate_task: asyncio.Task[None] | None = None
    _closing: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.console = ConsoleReader(self.paths.console, offset=self.console_offset)

    # -- attach / detach ----------------------------------------------------------------------------

    async def attach(self, pid: int, *, create_time: float | None = None, replay: bool = False,
                     watch_console: bool = True) -> None:
        """Pin process ``pid`` (checking ``create_time`` if given), connect QMP, start watching.

        Raises ``IdentityError`` if the pid is gone or is another process, ``QmpError`` if QMP does
        not answer (the pidfd is released again in both cases). ``replay`` reads the console from
        ``console_offset`` without acting on old markers (adoption). Without ``watch_console`` (a
        standby) the console task is started later by ``watch``.
        """
        info = self.host.process(pid)
        if info is None:
            raise IdentityError(self.name, "attach", f"pid {pid}: no such process")
        if create_time is not None and abs(info.create_time - create_time) > CREATE_TIME_TOLERANCE_S:
            raise IdentityError(self.name, "attach", f"pid {pid} is another process now")
        try:
            pin = self.host.pin(pid)
        except OSError as exc:
            raise IdentityError(self.name, "attach", f"pid {pid}: {exc}") from exc
        again = self.host.process(pid)  # checked with the pidfd held: the pid cannot be recycled now
        if again is None or again.zombie or again.create_time != info.create_time:
            pin.close()
            raise IdentityError(self.name, "attach", f"pid {pid} has exited")
        self.pid, self.create_time, self.pin = pid, info.create_time, pin
        self.proc = self.host.psutil_process(pid)
        self.started_mono = self.clock.monotonic()
        self.started_wall = self.clock.wall()
        self.monitor = self.host.monitor(self.name, self.paths.qmp, timeout_s=self.spec.qmp_timeout_s,
                                         on_event=self._on_event)
        try:
            await self.monitor.connect(deadline_s=max(5.0, self.spec.qmp_timeout_s))
            cpus = await self.monitor.execute("query-cpus-fast")
            status = await self.monitor.execute("query-status")
        except QmpError:
            await self.monitor.close()
            pin.close()
            self.pin = None
            raise
        self.vcpu_tids = [int(c["thread-id"]) for c in cpus if "thread-id" in c]
        self.panicked = status.get("status") == "guest-panicked"
        if replay:
            self.console.poll(self.clock.monotonic())
        pin.watch(self._exited)
        if watch_console:
            self.watch()

    def watch(self) -> None:
        """Start the console task (phases, phase snapshot, gate)."""
        self._tasks.append(asyncio.create_task(self._watch_console(), name=f"console-{self.name}"))

    def _exited(self) -> None:
        loop = asyncio.get_running_loop()
        self.exited_mono = self.clock.monotonic()
        if self.pin is not None:
            self.pin.close()
        self.console.poll(self.clock.monotonic())  # the last lines (a panic trace...)
        for t in [*self._tasks, self._gate_task]:
            if t is not None:
                t.cancel()
        if self.monitor is None:
            self._report_exit()
            return
        # The pidfd may be seen before the QMP reader has read QEMU's last events (a busy machine): the
        # exit's reason comes from them, so they are read first (bounded), then the exit is reported.
        self._closing = loop.create_task(self._drain_then_close(self.monitor))

    async def _drain_then_close(self, monitor: Monitor) -> None:
        try:
            await monitor.drain(EXIT_DRAIN_S)
        finally:
            self._report_exit()
            await monitor.close()

    def _report_exit(self) -> None:
        if not self.done.done():
            self.done.set_result(None)
        self.on_exit(self)

    async def detach(self) -> None:
        """Stop watching without touching QEMU (it keeps running). Never raises."""
        if self.pin is not None:
            self.pin.close()
        for t in [*self._tasks, self._gate_task]:
            if t is not None:
                t.cancel()
        if self.monitor is not None:
            await self.monitor.close()

    @property
    def alive(self) -> bool:
        return self.pin is not None and self.pin.open and not self.done.done()

    def qmp(self) -> Monitor:
        assert self.monitor is not None
        return self.monitor

    # -- phases, snapshot, gate -------------------------------------------------------------------

    async def _watch_console(self) -> None:
        while True:
            for mark in self.console.poll(self.clock.monotonic()):
                await self._on_phase(mark)
            await self.clock.sleep(_POLL_S)

    async def _on_phase(self, mark: PhaseMark) -> None:
        if mark.phase == "kernel":
            self.panicked = False
        want = self.spec.phase_snapshot
        if want is not None and mark.phase == want and self.phase_snapshot is None:
            # Let the guest settle first, so the snapshot holds an idle guest (less work to redo
            # after every load).
            await self.clock.sleep(self.spec.phase_settle_s)
            await self.take_phase_snapshot(want)
        if mark.phase == "service-ready":
            self.open_gate()

    async def take_phase_snapshot(self, phase: str) -> None:
        """Save the phase snapshot now; on failure note why in ``snapshot_error`` (never raises)."""
        tag = phase_tag(phase)
        try:
            await self.qmp().run_job("snapshot-save", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                                     timeout_s=max(30.0, self.spec.qmp_timeout_s))
        except QmpError as exc:
            self.snapshot_error = exc.cause
            log.warning("unit %s: phase snapshot at %s failed: %s", self.name, phase, exc.cause)
            return
        self.phase_snapshot = tag
        self.snapshot_error = None
        order = list(GUEST_PHASES)
        self.snapshot_phases = {k: v for k, v in self.console.phases.items()
                                if k in order and order.index(k) <= order.index(phase)}
        if self.on_snapshot is not None:
            try:
                await self.on_snapshot(self)
            except Exception:  # the hook's trouble must not keep the gate closed
                log.exception("unit %s: after the phase snapshot", self.name)

    def open_gate(self) -> None:
        """Tell the guest (``go`` on ttyS1) to mount its data disk; retried until ``data-ready``."""
        if self._gate_task is not None and not self._gate_task.done():
            return
        self.gate_opened_mono = self.clock.monotonic()
        self._gate_task = asyncio.create_task(self._gate(self.gate_opened_mono), name=f"gate-{self.name}")

    async def _gate(self, since: float) -> None:
        deadline = since + self.spec.ready_timeout_s
        while self.clock.monotonic() < deadline:
            mark = self.console.phases.get("data-ready")
            if mark is not None and mark.mono >= since:
                return
            try:
                await self.host.knock(self.paths.gate)
            except (OSError, TimeoutError) as exc:
                log.debug("unit %s: gate: %s", self.name, exc)
            await self.clock.sleep(_GATE_RETRY_S)
            self.console.poll(self.clock.monotonic())
        log.warning("unit %s: the guest did not mount its data disk within %.0f s of the gate opening",
                    self.name, self.spec.ready_timeout_s)

    async def wait_phase(self, phase: str, *, since: float, timeout_s: float, what: str) -> float:
        """Wait until ``phase`` is seen at or after ``since``; returns its mono time.

        Raises ``BootError`` (its cause names ``what``, the phases seen and the console tail) if it
        does not come in time, or if QEMU exits meanwhile (``exited``).
        """
        deadline = self.clock.monotonic() + timeout_s
        while True:
            mark = self.console.phases.get(phase)
            if mark is not None and mark.mono >= since:
                return mark.mono
            if not self.alive:
                raise BootError(self.name, what, f"QEMU exited while waiting for {phase}", phase=phase,
                                exited=True)
            if self.clock.monotonic() >= deadline:
                seen = ", ".join(self.console.phases) or "none"
                raise BootError(self.name, what, f"{what}: no {phase!r} within {timeout_s:.1f} s (phases seen:"
                                f" {seen}; console: {' | '.join(self.console.tail(3))})", phase=phase)
            await self.clock.sleep(_POLL_S)

    def restored_to_snapshot(self) -> None:
        """After a snapshot load: the guest is back at the snapshot's phase, before the gate."""
        self.console.poll(self.clock.monotonic())
        self.console.phases = dict(self.snapshot_phases)
        self.panicked = False
        if self._gate_task is not None:
            self._gate_task.cancel()
            self._gate_task = None

    def retire(self) -> None:
        """This QEMU is being ended in favour of another one of the unit (a takeover, a restore): its
        exit is not reported."""
        self.stopping = self.quiet_exit = True

    def stand_by_for(self, primary: Machine) -> None:
        """This QEMU is a standby of ``primary``'s unit: it shares the unit's data disk (it was launched
        so) and starts from the phase image of ``primary``'s guest."""
        self.data_shared = True
        self.phase_image_id = primary.phase_image_id

    def snapshot_deleted(self, tag: str) -> None:
        """Internal snapshot ``tag`` was deleted; if it was the phase snapshot there is none now."""
        if self.phase_snapshot == tag:
            self.phase_snapshot = None

    def note_phase_snapshot(self, tag: str, phases: Mapping[str, PhaseMark]) -> None:
        """The machine's snapshot disk holds phase snapshot ``tag`` (found there by an adopting or
        restoring supervisor); ``phases`` are the boot phases the guest is at after loading it."""
        self.phase_snapshot = tag
        self.snapshot_phases = dict(phases)

    async def promote(self, old: Machine) -> None:
        """This machine (a standby that was just resumed) becomes the unit's machine in place of
        ``old``: it takes over the unit's spec, fact and exit handlers, counters and recent events;
        its phases are those of the phase snapshot it runs from; its console goes to the unit's console
        log (``chardev-change``; if QEMU refuses, it is read from the slot's own file) and is watched.
        The data-disk gate stays closed: opening it is the caller's (``disks``, rule 3)."""
        self.spec = old.spec
        self.on_fact, self.on_exit = old.on_fact, old.on_exit
        self.panics, self.resets = old.panics, old.resets
        self.events = collections.deque(old.events, maxlen=old.events.maxlen)
        now = self.clock.monotonic()
        self.snapshot_phases = {p: PhaseMark(p, now, None, 1)
                                for p in GUEST_PHASES[: GUEST_PHASES.index("service-ready") + 1]}
        await self.console_to_unit()
        self.console.phases = dict(self.snapshot_phases)
        self.watch()

    async def console_to_unit(self) -> None:
        """This QEMU's console goes to the unit's console log from now on (``chardev-change``; if QEMU
        refuses, it is read from the slot's own file); it is read from its present end, no phase seen."""
        console = self.paths.console
        try:
            await self.qmp().execute("chardev-change", {"id": "console", "backend": {
                "type": "file", "data": {"out": str(console), "append": True}}})
        except QmpError as exc:
            log.warning("unit %s: the console stays in %s: %s", self.name, self.paths.slot_console, exc.cause)
            console = self.paths.slot_console
        offset = console.stat().st_size if console.exists() else 0
        self.console = ConsoleReader(console, offset=offset)
        self.console_offset = offset

    # -- QMP events ---------------------------------------------------------------------------------

    def _on_event(self, event: str, data: Mapping[str, Any], wall: float) -> None:
        self.events.append((wall, event, dict(data)))
        if event == "GUEST_PANICKED":
            self.panics += 1
            self.panicked = True
            self.panic_wall = wall
        elif event == "SHUTDOWN":
            self.shutdown_reason = str(data.get("reason", "unknown"))
        elif event == "RESET":
            if data.get("reason") != "snapshot-load":  # a snapshot load resets the machine first
                self.resets += 1
            self.panicked = False
        elif event == "RESUME":
            self.panicked = False
        self.on_fact(self, event, data, wall)

    # -- stop ---------------------------------------------------------------------------------------

    async def stop(self, timeout_s: float) -> None:
        """ACPI power button, ``timeout_s``; then ``quit``, 5 s; then SIGKILL, 5 s; then ``StopError``.

        The power button is skipped when the guest cannot act on it (paused, panicked) or QMP is gone.
        """
        self.stopping = True
        if not self.alive:
            return
        graceful = False
        with contextlib.suppress(QmpError):
            status = await self.qmp().execute("query-status", timeout_s=2.0)
            if status.get("running"):
                await self.qmp().execute("system_powerdown", timeout_s=2.0)
                graceful = True
        if graceful and await self._wait_done(timeout_s):
            return
        with contextlib.suppress(QmpError):
            await self.qmp().execute("quit", timeout_s=2.0)
        if await self._wait_done(5.0):
            return
        log.warning("unit %s: QEMU pid %d ignored quit: SIGKILL", self.name, self.pid)
        self.kill()
        if await self._wait_done(5.0):
            return
        raise StopError(self.name, "stop", f"QEMU pid {self.pid} survived SIGKILL for 5 s")

    def kill(self) -> None:
        """SIGKILL through the pidfd (never a recycled pid). Does nothing if QEMU already exited."""
        if self.pin is not None:
            self.pin.kill()

    async def discard(self, timeout_s: float = 5.0) -> bool:
        """Kill this QEMU without any event (a failed start, a standby, a QEMU replaced), wait until it
        is gone and stop watching it. True if it is gone (False: it survived SIGKILL for ``timeout_s``).
        Never raises."""
        self.retire()
        self.kill()
        gone = not self.alive or await self.wait_gone(timeout_s)
        await self.wait_closed()
        await self.detach()
        return gone

    async def wait_gone(self, timeout_s: float) -> bool:
        """Wait until the QEMU process has exited (its files, sockets and ports are closed then)."""
        try:
            await wait_for(asyncio.shield(self.done), timeout=timeout_s)
        except TimeoutError:
            return False
        return True

    async def _wait_done(self, timeout_s: float) -> bool:
        try:
            await wait_for(asyncio.shield(self.done), timeout=timeout_s)
        except TimeoutError:
            return False
        await self.wait_closed()
        return True

    async def wait_closed(self) -> None:
        """Wait until the monitor of an exited QEMU is closed (it is closed in the background)."""
        if self._closing is not None:
            with contextlib.suppress(Exception):
                await self._closing
