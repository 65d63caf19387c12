"""Warm standby for phase-based reboots: ``StandbyManager``, composed by ``QemuBackend``.

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
failed QEMU — if it is unusable the reboot falls back to loading the snapshot in place. Then the takeover
is recorded (``handoff``), the failed QEMU lets the unit's ports go (``hostfwd_remove``: its listening
sockets close at once, its guest answers the requests it already has), the standby takes them
(``hostfwd_add``) and is resumed (``cont``): the interruption ends here. Only then is the failed QEMU
stopped (so its I/O drains), killed through its pidfd and *waited for until it is gone* (its exit, the
kernel tearing down its memory, took 90-200 ms under load here: it was on the critical path before, and
requests it had accepted while paused hung until then), the standby's console switched to the unit's
console log (``chardev-change``), and only then its gate opened: the guest drops every cached block of
the data disk and mounts it (``guest/gate.sh``). Until the gate opens the resumed standby's guest does
not touch the data disk, so never do two guests use it. A failed QEMU whose monitor does not answer is
stopped, killed and waited for before its ports move. A failure after the failed QEMU was touched leaves
the unit without a QEMU: both are killed, ``EXITED`` emitted, ``VisorError`` raised. ``timeline_s`` in
the report times each step (``TIMELINE``).

A supervisor that dies during a takeover leaves one of these, each handled by the next supervisor
(``tests/unit/qemu/test_qemu_takeover.py`` dies at every step): before the standby holds the unit's
ports, the old QEMU (adopted; its ports given back if it had let them go) and the standby (killed by
``strays.reap``); from then on, before ``STARTED`` named it, the standby (``QemuBackend.recover``, by
the takeover record: the old QEMU, if it still runs, ended first; the standby resumed if paused, its
gate opened); once ``STARTED`` named it, the promoted standby (adopted; its gate opened if it was not).
The data-disk rules are in ``enmei.visor.qemu.disks``, the phase image in ``phase_image``, stray
QEMUs in ``strays``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psutil

from enmei import crashpoint
from enmei.clock import Clock
from enmei.config.qemu import QemuUnit
from enmei.errors import StartError, VisorError
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.base import EmitFn, Identity
from enmei.visor.qemu import disks, handoff, phase_image, strays
from enmei.visor.qemu.cmdline import NET_DEV, MachinePaths
from enmei.visor.qemu.errors import QmpError
from enmei.visor.qemu.forwards import hmp, hostfwd_add
from enmei.visor.qemu.host import QemuHost
from enmei.visor.qemu.machine import ExitFn, FactFn, Machine

__all__ = ["RETRY_S", "TIMELINE", "Standby", "StandbyLaunchFn", "StandbyManager", "StandbyState", "Unusable",
           "timeline", "warm"]

log = logging.getLogger(__name__)

RETRY_S = (2.0, 10.0, 60.0)
_WARM_TIMEOUT_S = 5.0
_FORWARD_WAIT_S = 2.0

StandbyLaunchFn = Callable[[str, QemuUnit, str, str, str, MachinePaths, FactFn, ExitFn], Awaitable[Machine]]
"""(unit, spec, kernel, initrd, accel, slot paths, on_fact, on_exit): launch a paused standby QEMU and
attach it without watching its console; ``StartError`` if it does not start."""


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


TIMELINE = ("checked", "recorded", "unplugged", "forwarded", "resumed", "paused", "killed", "exited", "gone",
            "promoted", "gate")
"""The steps of a takeover, in the order they usually come, as its report's ``timeline_s`` names them:
the standby checked (paused, QMP answers), the takeover record written, the old QEMU's forwards of the
unit's ports removed, the unit's forwards on the new QEMU, the new guest resumed (the interruption ends
here), the old guest paused, the old QEMU sent SIGKILL, its pidfd seen, it gone (its last QMP events
read), the new one promoted (the unit's console, spec, handlers), its data-disk gate opened. (An old QEMU
whose monitor does not answer is paused, killed and gone before ``unplugged``.)"""


def timeline(stamps: Mapping[str, float]) -> dict[str, float]:
    """``stamps`` (step -> monotonic time, ``start`` among them) as the seconds from the step before
    (in time) to each step, in the order they happened.

    >>> timeline({"start": 10.0, "checked": 10.002, "paused": 10.012, "gone": 10.05})
    {'checked': 0.002, 'paused': 0.01, 'gone': 0.038}
    """
    out: dict[str, float] = {}
    last = stamps["start"]
    for step, at in sorted(((k, v) for k, v in stamps.items() if k != "start"), key=lambda kv: kv[1]):
        out[step] = round(at - last, 4)
        last = at
    return out


class Unusable(Exception):
    """The standby cannot take over; nothing was done to the unit's QEMU yet."""


async def warm(host: QemuHost, port: int, paths: list[str], rounds: int, *,
               timeout_s: float = _WARM_TIMEOUT_S) -> list[float]:
    """GET each of ``paths`` on 127.0.0.1:``port``, ``rounds`` times; the seconds of each answered request.

    Any HTTP answer counts (a 404 too: the guest's network and server paths ran). Never raises.
    """
    took: list[float] = []
    loop = asyncio.get_running_loop()
    for _ in range(rounds):
        for path in paths:
            t = loop.time()
            try:
                data = await host.http_get(port, path, timeout_s)
            except (OSError, TimeoutError):
                continue
            if data.startswith(b"HTTP/"):
                took.append(loop.time() - t)
    return took


class StandbyManager:
    """The warm standbys of a backend's units (module docstring).

    ``machines`` is the backend's table of unit machines (read here; a standby that takes over is put
    in it); ``launch`` starts a standby QEMU. Nothing here raises into the event loop: a failed
    preparation is a FAILED standby, retried after ``retry_s`` (default ``RETRY_S``).
    """

    def __init__(self, *, clock: Clock, host: QemuHost, emit: EmitFn, machines: dict[str, Machine],
                 launch: StandbyLaunchFn, retry_s: Sequence[float] = RETRY_S,
                 identity: Callable[[Machine], Identity] | None = None) -> None:
        """``identity`` names a machine as the backend saves it: with it, each takeover is recorded before
        the old QEMU is ended (``enmei.visor.qemu.handoff``), for a successor to adopt the new one."""
        self.clock = clock
        self.identity = identity
        #: The delays before the 1st, 2nd... retry of a failed standby (then no more); a test sets them small.
        self.retry_s: tuple[float, ...] = tuple(retry_s)
        self.host = host
        self.emit = emit
        self.machines = machines
        self.launch = launch
        self.standbys: dict[str, Standby] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- public --------------------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        """The unit's standby: ``state`` (preparing, ready, failed), ``pid``, ``error``, ``prepare_s``...;
        None if the unit has none (``phase_standby`` off, or not running)."""
        sb = self.standbys.get(name)
        return sb.status() if sb is not None else None

    async def wait_ready(self, name: str, timeout_s: float) -> bool:
        """Wait until the unit's standby is ready; False if it is not within ``timeout_s`` (or failed
        for good)."""
        deadline = self.clock.monotonic() + timeout_s
        while self.clock.monotonic() < deadline:
            sb = self.standbys.get(name)
            if sb is not None and sb.state is StandbyState.READY:
                return True
            if sb is not None and sb.state is StandbyState.FAILED and (sb.task is None or sb.task.done()):
                return False
            await self.clock.sleep(0.02)
        return False

    async def on_phase_snapshot(self, machine: Machine) -> None:
        """After the first boot's phase snapshot: save the phase image, then prepare a standby."""
        if self.machines.get(machine.name) is not machine or not machine.spec.uses_standby:
            return
        try:
            machine.phase_image_id = await phase_image.save(machine, self.clock.wall())
        except (QmpError, OSError) as exc:
            cause = getattr(exc, "cause", None) or str(exc)
            log.warning("unit %s: no phase image, so no standby: %s", machine.name, cause)
            self.standbys[machine.name] = Standby(machine.name, "a", StandbyState.FAILED,
                                                  self.clock.monotonic(), error=f"phase image: {cause}")
            return
        self.want(machine.name)

    def want(self, name: str, delay_s: float = 0.0) -> None:
        """Prepare a standby for the unit in the background, unless it has one or cannot have one."""
        machine = self.machines.get(name)
        if machine is None or not machine.alive or machine.stopping or not machine.spec.uses_standby:
            return
        old = self.standbys.get(name)
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
            problem = phase_image.image_problem(machine)
        sb = Standby(name, slot, StandbyState.PREPARING, self.clock.monotonic())
        self.standbys[name] = sb
        if problem is not None:
            sb.state, sb.error = StandbyState.FAILED, problem
            log.info("unit %s: no standby: %s", name, problem)
            return
        sb.task = asyncio.get_running_loop().create_task(self._keep_preparing(name, sb, delay_s),
                                                         name=f"standby-{name}")

    async def drop(self, name: str) -> None:
        """Kill the unit's standby (preparing or ready), if it has one. Never raises."""
        sb = self.standbys.pop(name, None)
        if sb is None:
            return
        if sb.task is not None and not sb.task.done():
            sb.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sb.task
        with contextlib.suppress(Exception):
            await self._kill(sb)

    def drop_soon(self, name: str) -> None:
        """``drop`` in the background (from a callback that cannot wait)."""
        if name in self.standbys:
            self._spawn(self.drop(name))

    async def close(self) -> None:
        """Kill every standby. Never raises."""
        for name in list(self.standbys):
            await self.drop(name)

    async def take_over(self, name: str, machine: Machine, report: dict[str, Any]) -> Machine | None:
        """Let the unit's ready standby take over from ``machine``; the unit's machine afterwards, or
        None if no standby could (nothing was done to ``machine`` then; ``report`` says why).

        Never left half-done by a cancel (the old QEMU killed, the standby not yet running): a cancel
        waits for the takeover to finish. Raises ``VisorError`` if the standby failed after the old
        QEMU was ended (``EXITED`` was emitted; the unit has no QEMU).
        """
        sb = self.standbys.get(name)
        if sb is None:
            return None
        if sb.state is not StandbyState.READY:
            report["standby"] = str(sb.state)
            return None
        del self.standbys[name]
        takeover = asyncio.ensure_future(self._take_over(name, machine, sb, report))
        try:
            return await asyncio.shield(takeover)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await takeover
            if not takeover.cancelled() and isinstance(takeover.exception(), Unusable):
                await self._kill(sb)
            raise
        except Unusable as exc:
            log.warning("unit %s: the standby cannot take over (%s): loading the snapshot in place", name, exc)
            report["standby_unusable"] = str(exc)
            await self._kill(sb)
            self.want(name)
            return None

    # -- making one ------------------------------------------------------------------------------------

    async def _keep_preparing(self, name: str, sb: Standby, delay_s: float) -> None:
        if delay_s > 0:
            await self.clock.sleep(delay_s)
        while True:
            try:
                await self._prepare(name, sb)
                return
            except asyncio.CancelledError:
                await self._kill(sb)
                raise
            except (VisorError, OSError, TimeoutError, ProcessLookupError) as exc:
                await self._kill(sb)
                cause = getattr(exc, "cause", None) or str(exc) or type(exc).__name__
                sb.state, sb.error = StandbyState.FAILED, cause
                sb.attempts += 1
                log.warning("unit %s: preparing the standby failed (attempt %d): %s", name, sb.attempts, cause)
                if sb.attempts > len(self.retry_s) or self.standbys.get(name) is not sb:
                    return
                await self.clock.sleep(self.retry_s[sb.attempts - 1])
                if self.standbys.get(name) is not sb or name not in self.machines:
                    return

    async def _prepare(self, name: str, sb: Standby) -> None:
        primary = self.machines.get(name)
        if primary is None or not primary.alive:
            raise VisorError(name, "standby", "the unit is not running")
        # The unit's guest first: its data disk (first boot) or its first answers (after a takeover).
        with contextlib.suppress(VisorError):
            await primary.wait_phase("data-ready", since=0.0, timeout_s=primary.spec.ready_timeout_s,
                                     what="standby")
        tag = primary.phase_snapshot
        if tag is None:
            raise VisorError(name, "standby", "no phase snapshot")
        start = self.clock.monotonic()
        sb.state, sb.since_mono = StandbyState.PREPARING, start
        paths = sb.paths = primary.paths.with_slot(sb.slot)
        # every slot but the running QEMU's starts clean (a stray QEMU found there is killed)
        await strays.reap(self.host, name, primary.paths, keep_slot=primary.paths.slot, clear=True)
        await asyncio.to_thread(shutil.copyfile, primary.paths.phase_image, paths.sys_disk)
        sb.forwards = {item: self.host.free_port() for item in primary.spec.forward}
        spec = primary.spec.model_copy(update={
            "forward": [f"{port}:{item.partition(':')[2]}" for item, port in sb.forwards.items()]})
        # A launch is not cancelled half-way (QEMU daemonizes: it would be left running unwatched); a
        # cancel waits for it, and the QEMU it started is then killed (``_keep_preparing``).
        launching = asyncio.ensure_future(self.launch(name, spec, primary.kernel, primary.initrd, primary.accel,
                                                      paths, self._on_fact, self._on_exit))
        try:
            machine = await asyncio.shield(launching)
        except StartError as exc:
            raise VisorError(name, "standby", exc.cause) from exc
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                sb.machine = await launching
            raise
        sb.machine = machine
        machine.stand_by_for(primary)
        qmp = machine.qmp()
        try:
            await qmp.run_job("snapshot-load", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                              timeout_s=max(30.0, spec.qmp_timeout_s))
            await qmp.execute("cont")
            if spec.forward and spec.phase_standby_warm and spec.phase_standby_warm_rounds:
                port = int(spec.forward[0].partition(":")[0])
                sb.warm_s = await warm(self.host, port, spec.phase_standby_warm, spec.phase_standby_warm_rounds)
                if not sb.warm_s:
                    raise VisorError(name, "standby", f"its service did not answer on port {port}")
            await qmp.execute("stop")
            status = await qmp.execute("query-status")
        except QmpError as exc:
            raise VisorError(name, "standby", exc.cause) from exc
        if status.get("status") != "paused" or machine.panicked or not machine.alive:
            raise VisorError(name, "standby", f"the standby guest is {status.get('status')}")
        machine.note_phase_snapshot(tag, {})  # (its phases are set when it takes over: ``promote``)
        sb.state, sb.error = StandbyState.READY, None
        sb.prepare_s = round(self.clock.monotonic() - start, 3)
        log.info("unit %s: standby ready in slot %s (QEMU pid %d) in %.2fs", name, sb.slot, machine.pid,
                 sb.prepare_s)

    async def _kill(self, sb: Standby) -> None:
        if sb.machine is not None:
            await sb.machine.discard()
        if sb.paths is not None:
            stray = strays.slot_qemu(self.host, sb.paths)  # launched, but not attached (yet)
            if stray is not None:
                await strays.kill_process(self.host, stray)
            await asyncio.to_thread(strays.remove_files, sb.paths.slot_files())

    def _on_fact(self, machine: Machine, event: str, data: Mapping[str, Any], wall: float) -> None:
        if event == "GUEST_PANICKED" and not machine.stopping:
            log.warning("unit %s: the standby guest panicked; it is dropped", machine.name)
            machine.kill()

    def _on_exit(self, machine: Machine) -> None:
        sb = self.standbys.get(machine.name)
        if sb is None or sb.machine is not machine or machine.stopping:
            return
        sb.state, sb.error = StandbyState.FAILED, "the standby QEMU exited"
        log.warning("unit %s: the standby QEMU (pid %d) exited", machine.name, machine.pid)
        if sb.task is None or sb.task.done():  # (a preparation under way notices by itself)
            sb.attempts += 1  # counted with failed preparations: a standby that keeps dying is given up
            if sb.attempts <= len(self.retry_s):
                sb.task = asyncio.get_running_loop().create_task(
                    self._keep_preparing(machine.name, sb, self.retry_s[sb.attempts - 1]),
                    name=f"standby-{machine.name}")

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- taking over -------------------------------------------------------------------------------------

    async def _take_over(self, name: str, old: Machine, sb: Standby, report: dict[str, Any]) -> Machine:
        """Make the ready standby ``sb`` the unit's machine in place of ``old`` (module docstring).

        Raises ``Unusable`` before touching ``old``; ``VisorError`` after (the unit is then gone).
        """
        new = sb.machine
        clock = self.clock
        t0 = clock.monotonic()
        stamps: dict[str, float] = {"start": t0}
        if new is None or not new.alive:
            raise Unusable("its QEMU is gone")
        try:
            status = await new.qmp().execute("query-status", timeout_s=1.0)
        except QmpError as exc:
            raise Unusable(f"its QMP does not answer: {exc.cause}") from exc
        if status.get("status") != "paused":
            raise Unusable(f"it is {status.get('status')}, not paused")
        stamps["checked"] = clock.monotonic()
        # 0. The new QEMU named on disk: a supervisor killed from here on leaves its successor the new one
        #    to adopt once it holds the unit's ports (``handoff``), not a cold start that would throw it away.
        self._record_handoff(name, old, sb)
        stamps["recorded"] = clock.monotonic()
        old.retire()  # (from here on its end is the takeover's: not reported as the unit's exit)
        try:
            # 1. The unit's ports move: the old QEMU lets them go (its listening sockets close at once; its
            #    guest runs on and answers the requests it has), the new one takes them. Before, the old
            #    QEMU was paused, killed and waited for first, to free them: its exit (the kernel tearing
            #    down its memory) took 90-200 ms here, and the requests it had accepted while paused hung
            #    until then. A QEMU whose monitor does not answer is ended first, as before.
            if not await self._unplug(old, sb):
                await disks.pause(old, stamps=stamps)
                await self._end_old(name, old, sb, stamps)
            stamps["unplugged"] = clock.monotonic()
            for item in sb.forwards:
                host, _, guest = item.partition(":")
                await self._hostfwd_add(new, int(host), int(guest))
            t_fwd = clock.monotonic()
            stamps["forwarded"] = t_fwd
            # 2. Run: its gate is closed, so it does not touch the data disk while the old QEMU ends.
            await new.qmp().execute("cont")
        except (QmpError, VisorError) as exc:
            cause = getattr(exc, "cause", str(exc))
            await new.discard()
            with contextlib.suppress(VisorError):
                await disks.pause(old)
                await self._end_old(name, old, sb, stamps)
            self.emit(UnitEvent(name, UnitEventKind.EXITED, clock.monotonic(), {
                "pid": old.pid, "code": None, "reason": f"phase reboot through the standby failed: {cause}"}))
            raise VisorError(name, "phase reboot", f"the standby could not take over: {cause}") from exc
        t_cont = clock.monotonic()
        stamps["resumed"] = t_cont
        crashpoint.reached("takeover.resumed")  # the new guest runs with the unit's ports, its gate closed
        # 3. The failed QEMU goes (disks, rule 3): paused (its I/O drains), killed, and waited for until it
        #    is gone: from then on no other QEMU has the data disk open.
        if "gone" not in stamps:
            await disks.pause(old, stamps=stamps)
            try:
                await self._end_old(name, old, sb, stamps)
            except VisorError:
                await self._kill(sb)  # (never two guests on the data disk: the new one goes)
                raise
        t_kill = stamps["gone"]
        crashpoint.reached("takeover.old-ended")  # the old one gone, the new one runs behind its closed gate
        # 4. It is the unit's machine now.
        self.machines[name] = new
        await new.promote(old)
        stamps["promoted"] = clock.monotonic()
        # 5. The data-disk gate: the old QEMU is gone (step 3).
        new.open_gate()
        t_gate = clock.monotonic()
        stamps["gate"] = t_gate
        # ``kill_s``: the swap's start until the old QEMU let the ports go (the clone checked, the takeover
        # recorded); ``forward_s`` and ``cont_s``: the ports on the new QEMU, its resume. Their sum is the
        # interruption enmei causes; ``end_s`` (the old QEMU killed and waited for) and ``gate_s`` come
        # after the resume.
        report.update({"via": "standby", "replaced_pid": old.pid, "pid": new.pid, "slot": sb.slot,
                       "kill_s": round(stamps["unplugged"] - t0, 4),
                       "forward_s": round(t_fwd - stamps["unplugged"], 4), "cont_s": round(t_cont - t_fwd, 4),
                       "end_s": round(stamps["gone"] - stamps["killed"], 4), "gate_s": round(t_gate - t_kill, 4),
                       "standby_prepare_s": sb.prepare_s, "stamps_mono": stamps,
                       "timeline_s": timeline(stamps)})
        self.emit(UnitEvent(name, UnitEventKind.STARTED, clock.monotonic(), {
            "pid": new.pid, "accel": new.accel, "via": "phase-standby", "replaced_pid": old.pid,
            "phase_snapshot": new.phase_snapshot}))
        # Off the critical path: the standby's temporary ports go (the old slot's files are swept by the
        # next preparation), and the next standby is prepared.
        self._spawn(self._drop_forwards(new, list(sb.forwards.values())))
        self.want(name)
        return new

    async def _unplug(self, old: Machine, sb: Standby) -> bool:
        """The old QEMU's forwards of the unit's ports removed (their listening sockets closed); False if
        its monitor did not answer (it must then be ended to free them)."""
        try:
            for item in sb.forwards:
                answer = await hmp(old, f"hostfwd_remove {NET_DEV} tcp:127.0.0.1:{item.partition(':')[0]}")
                if "removed" not in answer:  # QEMU 7.2: "host forwarding rule for tcp:... removed"
                    raise QmpError(old.name, "hostfwd_remove", answer.strip() or "no answer")
        except QmpError as exc:
            log.warning("unit %s: the old QEMU kept its ports (%s): ending it first", old.name, exc.cause)
            return False
        return True

    async def _end_old(self, name: str, old: Machine, sb: Standby, stamps: dict[str, float]) -> None:
        """Rule 3's second half (``disks.end``); ``VisorError`` if the old QEMU survived SIGKILL."""
        if not await disks.end(old, stamps=stamps):
            raise VisorError(name, "phase reboot", f"QEMU pid {old.pid} survived SIGKILL")

    def _record_handoff(self, name: str, old: Machine, sb: Standby) -> None:
        if self.identity is None or sb.machine is None:
            return
        try:
            handoff.write(old.paths, handoff.Handoff(self.identity(sb.machine), old.pid, old.create_time,
                                                     tuple(sb.forwards.values())))
        except OSError as exc:  # (a full disk) the takeover goes on; a supervisor killed in it cold-starts
            log.warning("unit %s: the takeover record could not be written: %s", name, exc)

    def drop_temporary_forwards(self, machine: Machine, ports: list[int]) -> None:
        """Remove ``machine``'s forwards of ``ports`` (a standby's own, once it is the unit's), off the
        caller's path; failures are ignored."""
        self._spawn(self._drop_forwards(machine, ports))

    async def _drop_forwards(self, machine: Machine, ports: list[int]) -> None:
        for port in ports:
            with contextlib.suppress(QmpError):
                await hmp(machine, f"hostfwd_remove {NET_DEV} tcp:127.0.0.1:{port}")

    async def _hostfwd_add(self, machine: Machine, host: int, guest: int) -> None:
        await hostfwd_add(machine, host, guest, clock=self.clock, action="phase reboot", wait_s=_FORWARD_WAIT_S)
