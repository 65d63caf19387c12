"""ShadowReboot: update a VM unit's kernel or initramfs by booting a *clone* into it while the original
serves, then swapping the clone in through the warm-standby takeover (``ShadowUpdater``, composed by
``QemuBackend``; the mechanism of the ``shadow_update`` remedy and ``enmei update``).

The unit's guest keeps its state in RAM (its root file system is the initramfs) and its persistent
data on the raw data disk; its snapshot disk holds only internal snapshots. So "the update" is new
boot files, and the clone is a second QEMU of the unit booted from them. Steps, each timed and
reported to ``on_step`` (the remedy journals each as it happens):

1. ``clone``: the unit's warm standby is dropped (its slot is the clone's: a unit has three slots,
   the running QEMU's and two others); a QEMU is launched paused in that slot with the new kernel and
   initramfs, a fresh snapshot disk (the copy-on-write view: nothing of the original's is written), its
   forwards on temporary loopback ports, its console in the slot's own file;
2. ``boot``: it runs until its guest prints ``service-ready``, within ``clone_timeout_s``. The clone
   never passes the data-disk gate (``enmei.visor.qemu.disks``, rule 2): it has the data disk open
   (``share-rw``) but never mounts it while the original serves;
3. ``snapshot``: its phase snapshot (``enmei-phase-service-ready``) is saved, its service warmed
   (``phase_standby_warm``), it is paused, and its snapshot disk copied to the unit's phase image (the
   image of the pre-update guest is kept beside it, ``pre-update-sys.qcow2``, for a rollback);
4. ``swap``: the paused clone takes over exactly as a ready standby does (``StandbyManager.take_over``):
   the unit's forwards are moved to the clone, it resumes (the interruption ends), then the original is
   paused so its I/O drains, killed and *waited for until it is gone*, and only then the clone's gate
   opens and the guest mounts the data disk as the original left it. A write the original acknowledged
   (``sync``) before it was paused is on the disk the clone mounts: nothing acknowledged is lost, and
   never do two guests use the disk;
5. ``verify``: for ``verify_s`` the updated guest must stay up, not panic, mount its data disk and
   answer ``verify_path`` on the unit's first forward.

At the swap the update is recorded in ``<state>/qemu/<unit>/update.json`` (format 1: the new kernel and
initramfs, the image path, the config's ``image`` it was made over, the previous boot files, ``verified``
false until the verification passed; a rollback puts back the record that was there before): a later
cold start of the unit boots the recorded files as long as the unit's configured ``image`` is the one
the update was made over (an operator who changes ``image`` in the config gets the config's). The
user's config file is not rewritten. The running QEMU's identity names its kernel too, so an adopting
supervisor knows what runs.

Rollback, journaled as a ``rollback`` step, and the update then raises ``UpdateFailed``:

* before the swap (the clone fails to start or boot within ``clone_timeout_s``, panics, or the
  original exits meanwhile): the clone is killed, the pre-update phase image put back, a standby of
  the original prepared again. The original served throughout;
* after the swap (the updated guest fails ``verify``): a QEMU is started from the pre-update phase
  image and the pre-update boot files, and takes over from the updated one the same way (a second
  short gap); the update record is put back as it was;
* if the updated QEMU is gone (it crashed) the pre-update phase image and update record are put back:
  the unit's next start (the engine's restart) boots the pre-update files.

While the clone boots the unit has no warm standby: a phase reboot then loads the snapshot in place.
A supervisor killed during an update (at any of ``POINTS``, each a named step in this code path that the
``ENMEI_CRASH_AT`` test hook can kill it at) leaves at most the original and the clone: before the swap
its successor adopts the original (a paused one is resumed) and kills the clone (a stray in a standby
slot, ``strays.reap``); after the swap it adopts the promoted clone (its gate opened if it was not); in
between (the clone holding the unit's ports, paused or resumed, but not yet saved as the unit's) it adopts
the clone too, named by the takeover record (``enmei.visor.qemu.handoff``, ``QemuBackend.recover``): the
original ended first if it still runs, the clone resumed, given the unit's ports and console, its gate
opened. Never do two guests use the data disk: the
clone's gate is closed until the original is gone. ``settle`` then makes the files agree with the guest
that runs (the pre-update phase image put back or dropped, the update record naming its boot files).
A full disk refuses an update before anything is done (less room than three phase images: the
pre-update copy, the clone's snapshot disk, its phase image) or rolls it back as soon as the clone's boot
sees less than two (checked every second: a full disk silences the clone's console, where its phases are
read, and its snapshot cannot be saved); after the swap a record that cannot be written is reported
(``record_error``), the update stands.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enmei import crashpoint
from enmei.clock import Clock
from enmei.config.qemu import QemuUnit
from enmei.errors import StartError, VisorError
from enmei.visor.qemu import phase_image, strays
from enmei.visor.qemu.cmdline import MachinePaths
from enmei.visor.qemu.console import ConsoleReader
from enmei.visor.qemu.errors import QmpError
from enmei.visor.qemu.host import QemuHost
from enmei.visor.qemu.machine import Machine, phase_tag
from enmei.visor.qemu.standby import Standby, StandbyLaunchFn, StandbyManager, StandbyState, warm

__all__ = ["POINTS", "RECORD_FORMAT", "ShadowUpdater", "StepFn", "UpdateFailed", "read_record", "record_path",
           "recorded_boot_files", "settle"]

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
_POLL_S = 0.02
_PHASE = "service-ready"
_ROOM_CHECK_S = 1.0  # how often the clone's boot checks that the disk has room for its snapshot
_ROOM_MARGIN = 16 * 2**20  # beyond the copies an update makes: consoles, records

POINTS = ("shadow.clone-started", "shadow.clone-booting", "shadow.clone-ready", "takeover.resumed",
          "takeover.gate-closed", "takeover.old-ended", "shadow.swap", "shadow.verify", "shadow.verified")
"""The named steps of an update, in the order it reaches them (``enmei.crashpoint``, a test hook that kills
the supervisor there): the clone launched (paused); the clone resumed, booting; the clone paused at
``service-ready``, its state the unit's phase image; the clone resumed with the unit's ports (the
original let them go), its data-disk gate closed, the original running on; the original paused
(``disks.pause``), not yet ended; the original gone, the clone not yet the unit's machine; the swap done
and recorded; the updated guest answered in its verification; the verification passed and recorded. A
supervisor killed at any of them leaves a state its successor settles (``settle``): one guest serves,
original or updated, and the records name it."""

StepFn = Callable[[str, Mapping[str, Any]], None]
"""(step, facts): called as each step of an update ends (``clone``, ``boot``, ``snapshot``, ``swap``,
``verify``, ``rollback``); facts hold ``took_s`` and what the step saw. Must not block or raise."""


class UpdateFailed(VisorError):
    """The update did not take; ``report`` says how far it got and how it was rolled back."""

    def __init__(self, unit: str, cause: str, report: Mapping[str, Any]) -> None:
        super().__init__(unit, "shadow update", cause)
        self.report = dict(report)


def record_path(paths: MachinePaths) -> Path:
    """The unit's update record (module docstring)."""
    return paths.dir / "update.json"


def read_record(paths: MachinePaths, configured_image: str) -> dict[str, Any] | None:
    """The unit's update record if it applies to a unit configured with image ``configured_image``
    and its boot files still exist; None otherwise (no record, another format, unreadable)."""
    try:
        data = json.loads(record_path(paths).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        return None
    if data.get("base_image") != configured_image:
        return None
    kernel, initrd = data.get("kernel"), data.get("initrd")
    if not isinstance(kernel, str) or not isinstance(initrd, str):
        return None
    if not (Path(kernel).is_file() and Path(initrd).is_file()):
        log.warning("%s names boot files that are gone: booting the configured image", record_path(paths))
        return None
    return data


def _write_record(paths: MachinePaths, data: Mapping[str, Any]) -> None:
    target = record_path(paths)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"format": RECORD_FORMAT, **data}, indent=2) + "\n")
    os.replace(tmp, target)


async def _try_write_record(paths: MachinePaths, data: Mapping[str, Any]) -> str | None:
    """Write the update record; None, or why it could not be written (a full disk: the update stands, a
    later cold start boots the files of the record that was there). Off the event loop."""
    try:
        await asyncio.to_thread(_write_record, paths, data)
    except OSError as exc:
        log.error("unit %s: the update record %s could not be written: %s", paths.dir.name, record_path(paths), exc)
        with contextlib.suppress(OSError):
            record_path(paths).with_name(record_path(paths).name + ".tmp").unlink(missing_ok=True)
        return f"{record_path(paths)}: {exc.strerror or exc}; a cold start boots the files recorded before"
    return None


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _put_back(path: Path, data: bytes | None) -> None:
    """``path`` as it was (``data``; None: there was no such file)."""
    if data is None:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _backup_paths(paths: MachinePaths) -> tuple[Path, Path]:
    return paths.dir / "pre-update-sys.qcow2", paths.dir / "pre-update-sys.json"


@dataclass
class _Clone:
    machine: Machine
    paths: MachinePaths
    forwards: dict[str, int]
    console: ConsoleReader


class ShadowUpdater:
    """Shadow updates of a backend's VM units (module docstring). ``machines`` is the backend's table of
    unit machines, ``standbys`` its standby manager (whose takeover does the swap), ``launch`` starts a
    paused QEMU in a slot (the backend's standby launcher)."""

    def __init__(self, *, clock: Clock, host: QemuHost, machines: dict[str, Machine], standbys: StandbyManager,
                 launch: StandbyLaunchFn) -> None:
        self.clock = clock
        self.host = host
        self.machines = machines
        self.standbys = standbys
        self.launch = launch

    async def update(self, name: str, *, kernel: str | None = None, initrd: str | None = None,
                     image: str | None = None,
                     clone_timeout_s: float | None = None, verify_s: float = 3.0, verify_path: str | None = None,
                     on_step: StepFn | None = None) -> dict[str, Any]:
        """Update unit ``name`` to boot files ``kernel`` and ``initrd`` (module docstring): those of built
        image ``image`` (a name or a directory), where one is not given those of the running guest.
        Returns the
        report: ``outcome`` (``updated``), ``steps`` (step -> facts), ``downtime_s`` (the swap's start to
        the clone's resume), ``swap_mono`` (the swap's start and end on the clock's monotonic time),
        ``swap_stamps_mono`` (each step of the swap on that clock, ``standby.TIMELINE``), ``mount_s`` (the
        updated guest's gate opening to its data disk mounted),
        ``pid``/``replaced_pid``, ``kernel``, ``initrd``, ``previous``.

        Raises ``VisorError`` before anything is done (the unit is not running, has no shareable data
        disk or no phase snapshot, a boot file is missing), ``UpdateFailed`` after a rollback (its
        ``report`` has ``outcome`` = ``rolled-back`` and where it failed). ``clone_timeout_s`` bounds the
        clone's boot to ``service-ready`` (default: the unit's ``ready_timeout_s``).
        """
        primary = self.machines.get(name)
        if primary is None or not primary.alive:
            raise VisorError(name, "shadow update", "not running")
        if not primary.data_shared:
            raise VisorError(name, "shadow update", "the unit's QEMU was started without a shareable data disk "
                             "(a shadow update needs phase_standby = true and phase_snapshot = \"service-ready\")")
        if primary.phase_snapshot is None:
            raise VisorError(name, "shadow update", "the unit has no phase snapshot yet")
        if image is not None:
            info = await asyncio.to_thread(self.host.resolve_image, image)  # ImageError names the image
            kernel, initrd = kernel or info.kernel, initrd or info.initrd
        if kernel is None and initrd is None:
            raise VisorError(name, "shadow update", "nothing to update to: give a kernel, an initramfs or an image")
        kernel, initrd = kernel or primary.kernel, initrd or primary.initrd
        for f in (kernel, initrd):
            if not await asyncio.to_thread(os.path.isfile, f):
                raise VisorError(name, "shadow update", f"{f}: no such file")
        steps: dict[str, dict[str, Any]] = {}
        report: dict[str, Any] = {"outcome": None, "steps": steps, "kernel": kernel, "initrd": initrd,
                                  "image": image, "previous": {"kernel": primary.kernel, "initrd": primary.initrd}}

        def step(what: str, t0: float, **facts: Any) -> None:
            facts = {"took_s": round(self.clock.monotonic() - t0, 4), **facts}
            steps[what] = facts
            log.info("unit %s: shadow update: %s %s", name, what, facts)
            if on_step is not None:
                try:
                    on_step(what, facts)
                except Exception:  # a journal's trouble must not leave the update half-done
                    log.exception("unit %s: shadow update step callback", name)

        problem = phase_image.image_problem(primary)
        if problem is not None:
            raise VisorError(name, "shadow update", f"{problem} (the pre-update guest could not be restored)")
        limit = clone_timeout_s if clone_timeout_s is not None else primary.spec.ready_timeout_s
        old_image_id = primary.phase_image_id
        short = await asyncio.to_thread(self._short_of_room, primary.paths, 3)
        if short is not None:
            raise VisorError(name, "shadow update", f"not enough room for the update: {short}")
        try:
            await asyncio.to_thread(self._backup_image, primary.paths)
        except OSError as exc:  # (a full disk): nothing was done but a partial copy, which goes
            await asyncio.to_thread(self._drop_backup, primary.paths)
            raise VisorError(name, "shadow update", f"cannot keep the pre-update phase image for a rollback: "
                             f"{exc.strerror or exc}") from exc
        clone: _Clone | None = None
        try:
            t = self.clock.monotonic()
            clone = await self._launch_clone(primary, kernel, initrd)
            step("clone", t, pid=clone.machine.pid, slot=clone.paths.slot)
            crashpoint.reached("shadow.clone-started")
            t = self.clock.monotonic()
            await self._boot(primary, clone, limit)
            step("boot", t, phases=list(clone.console.phases))
            t = self.clock.monotonic()
            warm_n = await self._snapshot(primary, clone)
            step("snapshot", t, tag=clone.machine.phase_snapshot, warm_requests=warm_n,
                 phase_image=clone.machine.phase_image_id)
            crashpoint.reached("shadow.clone-ready")
        except (VisorError, OSError, TimeoutError) as exc:
            cause = getattr(exc, "cause", None) or str(exc) or type(exc).__name__
            await self._rollback_before_swap(name, clone, old_image_id, report, step, cause)
            raise UpdateFailed(name, f"{cause}; rolled back, the original kept serving", report) from exc
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await self._rollback_before_swap(name, clone, old_image_id, report, step, "cancelled")
            raise
        # the swap: the clone is a ready standby now
        before = await asyncio.to_thread(_read_bytes, record_path(primary.paths))
        t = self.clock.monotonic()
        swap: dict[str, Any] = {}
        sb = Standby(name, clone.paths.slot, StandbyState.READY, t, machine=clone.machine, paths=clone.paths,
                     forwards=clone.forwards, prepare_s=round(sum(s["took_s"] for s in steps.values()), 3))
        self.standbys.standbys[name] = sb
        try:
            new = await self.standbys.take_over(name, primary, swap)
        except VisorError as exc:  # the original is gone and the clone did not take over: no QEMU
            await asyncio.to_thread(self._restore_image, primary.paths)
            step("rollback", t, after="swap", why=exc.cause, restored="pre-update phase image; the next start "
                 "boots the pre-update files")
            report["outcome"] = "rolled-back"
            raise UpdateFailed(name, exc.cause, report) from exc
        if new is None:
            why = str(swap.get("standby_unusable") or swap.get("standby") or "the clone could not take over")
            await self._rollback_before_swap(name, None, old_image_id, report, step, why)
            raise UpdateFailed(name, f"{why}; rolled back, the original kept serving", report)
        downtime = float(swap.get("kill_s", 0.0)) + float(swap.get("forward_s", 0.0)) + float(swap.get("cont_s", 0.0))
        # Recorded at once (before anything else can happen to this supervisor): from the swap on, the
        # boot files a later cold start uses are those of the guest that runs; a rollback puts the
        # record that was there before back.
        record = {"base_image": new.spec.image, "kernel": kernel, "initrd": initrd, "image": image,
                  "updated_wall": self.clock.wall(), "previous": report["previous"]}
        unrecorded = await _try_write_record(new.paths, {**record, "verified": False})
        step("swap", t, pid=new.pid, replaced_pid=primary.pid, downtime_s=round(downtime, 4),
             **{k: swap[k] for k in ("kill_s", "forward_s", "cont_s", "gate_s", "timeline_s") if k in swap},
             **({"record_error": unrecorded} if unrecorded else {}))
        report.update({"pid": new.pid, "replaced_pid": primary.pid, "downtime_s": round(downtime, 4),
                       "swap_mono": [t, self.clock.monotonic()], "swap_stamps_mono": swap.get("stamps_mono", {})})
        crashpoint.reached("shadow.swap")
        t = self.clock.monotonic()
        problem = await self._verify(new, verify_s, verify_path)
        if problem is not None:
            step("verify", t, ok=False, why=problem)
            await self._rollback_after_swap(name, new, report, step, problem)
            if report["outcome"] == "rolled-back":
                await asyncio.to_thread(_put_back, record_path(new.paths), before)
            then = ("rolled back to the pre-update guest" if report["outcome"] == "rolled-back" else
                    f"the rollback failed too ({steps['rollback'].get('failed')})")
            raise UpdateFailed(name, f"the updated guest {problem}; {then}", report)
        unrecorded = await _try_write_record(new.paths, {**record, "verified": True})
        mounted = new.console.phases.get("data-ready")
        mount_s = round(mounted.mono - new.gate_opened_mono, 3) \
            if mounted is not None and new.gate_opened_mono is not None else None
        step("verify", t, ok=True, mount_s=mount_s, **({"record_error": unrecorded} if unrecorded else {}))
        report["mount_s"] = mount_s
        crashpoint.reached("shadow.verified")
        await asyncio.to_thread(self._drop_backup, new.paths)
        report["outcome"] = "updated"
        report["record"] = str(record_path(new.paths))
        return report

    # -- the clone -----------------------------------------------------------------------------------

    async def _launch_clone(self, primary: Machine, kernel: str, initrd: str) -> _Clone:
        name = primary.name
        await self.standbys.drop(name)
        slot = "b" if primary.paths.slot == "a" else "a"
        paths = primary.paths.with_slot(slot)
        await strays.reap(self.host, name, primary.paths, keep_slot=primary.paths.slot, clear=True)
        await asyncio.to_thread(self.host.make_sys_disk, name, paths.sys_disk)
        forwards = {item: self.host.free_port() for item in primary.spec.forward}
        spec = primary.spec.model_copy(update={
            "forward": [f"{port}:{item.partition(':')[2]}" for item, port in forwards.items()]})
        launching = asyncio.ensure_future(self.launch(name, spec, kernel, initrd, primary.accel, paths,
                                                      self._on_fact, self._on_exit))
        try:
            machine = await asyncio.shield(launching)
        except StartError as exc:
            await self._sweep(paths)
            raise VisorError(name, "shadow update", f"the clone did not start: {exc.cause}") from exc
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await (await launching).discard()
            await self._sweep(paths)
            raise
        machine.stand_by_for(primary)
        return _Clone(machine, paths, forwards, ConsoleReader(paths.slot_console))

    async def _boot(self, primary: Machine, clone: _Clone, limit_s: float) -> None:
        name, m = primary.name, clone.machine
        try:
            await m.qmp().execute("cont")
        except QmpError as exc:
            raise VisorError(name, "shadow update", f"the clone: {exc.cause}") from exc
        crashpoint.reached("shadow.clone-booting")
        deadline = self.clock.monotonic() + limit_s
        next_room_check = self.clock.monotonic()
        while _PHASE not in clone.console.phases:
            clone.console.poll(self.clock.monotonic())
            if _PHASE in clone.console.phases:
                break
            if not m.alive or m.panicked:
                what = "panicked" if m.panicked else "exited"
                raise VisorError(name, "shadow update", f"the clone's guest {what} while booting (console: "
                                 f"{' | '.join(clone.console.tail(3))})")
            if not primary.alive:
                raise VisorError(name, "shadow update", "the original QEMU exited during the clone's boot")
            now = self.clock.monotonic()
            if now >= next_room_check:
                # a full disk stops the clone's console (its phases are read from it) and its snapshot
                # silently: said at once, not as a boot that never ended
                next_room_check = now + _ROOM_CHECK_S
                short = await asyncio.to_thread(self._short_of_room, primary.paths, 2)
                if short is not None:
                    raise VisorError(name, "shadow update", f"the disk filled during the clone's boot: {short}")
            if self.clock.monotonic() >= deadline:
                seen = ", ".join(clone.console.phases) or "none"
                raise VisorError(name, "shadow update", f"the clone reached no {_PHASE} within {limit_s:.1f} s "
                                 f"(phases seen: {seen}; console: {' | '.join(clone.console.tail(3))})")
            await self.clock.sleep(_POLL_S)

    async def _snapshot(self, primary: Machine, clone: _Clone) -> int:
        """Phase snapshot, warm-up, pause, phase image; the number of warm answers."""
        name, m, spec = primary.name, clone.machine, primary.spec
        await self.clock.sleep(spec.phase_settle_s)  # an idle guest in the snapshot (as the first boot's)
        tag = phase_tag(_PHASE)
        qmp = m.qmp()
        try:
            await qmp.run_job("snapshot-save", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                              timeout_s=max(30.0, spec.qmp_timeout_s))
            took: list[float] = []
            if clone.forwards and spec.phase_standby_warm and spec.phase_standby_warm_rounds:
                port = next(iter(clone.forwards.values()))
                took = await warm(self.host, port, spec.phase_standby_warm, spec.phase_standby_warm_rounds)
                if not took:
                    raise VisorError(name, "shadow update", "the clone's service did not answer")
            await qmp.execute("stop")
            status = await qmp.execute("query-status")
        except QmpError as exc:
            raise VisorError(name, "shadow update", f"the clone: {exc.cause}") from exc
        if status.get("status") != "paused" or m.panicked or not m.alive:
            raise VisorError(name, "shadow update", f"the clone's guest is {status.get('status')}")
        m.note_phase_snapshot(tag, {})
        if not primary.alive:
            raise VisorError(name, "shadow update", "the original QEMU exited during the clone's boot")
        m.phase_image_id = await phase_image.save(m, self.clock.wall())
        return len(took)

    async def _verify(self, new: Machine, verify_s: float, path: str | None) -> str | None:
        """None if for ``verify_s`` the guest stayed up and unpanicked, mounted its data disk and answered
        ``path``; else what went wrong."""
        spec = new.spec
        path = path or (spec.phase_standby_warm[0] if spec.phase_standby_warm else None)
        port = int(spec.forward[0].partition(":")[0]) if spec.forward else None
        end = self.clock.monotonic() + verify_s
        answered = False
        while True:
            if not new.alive:
                return "exited"
            if new.panicked:
                return "panicked"
            if port is not None and path is not None and not answered:
                with contextlib.suppress(OSError, TimeoutError):
                    data = await self.host.http_get(port, path, 2.0)
                    answered = data.startswith(b"HTTP/") and b" 200 " in data[:16]
                if answered:
                    crashpoint.reached("shadow.verify")  # the updated guest answered; not yet verified
            if self.clock.monotonic() >= end:
                break
            await self.clock.sleep(0.05)
        # data-ready and an answer may take a little longer than the grace on a loaded host: bounded
        try:
            await new.wait_phase("data-ready", since=0.0, timeout_s=max(1.0, spec.ready_timeout_s / 2),
                                 what="shadow update")
        except VisorError as exc:
            return f"did not mount its data disk ({exc.cause})"
        if port is not None and path is not None and not answered:
            last: object = None
            deadline = self.clock.monotonic() + max(1.0, spec.ready_timeout_s / 2)
            while not answered and self.clock.monotonic() < deadline and new.alive:
                try:
                    data = await self.host.http_get(port, path, 2.0)
                    answered = data.startswith(b"HTTP/") and b" 200 " in data[:16]
                    last = data[:40]
                except (OSError, TimeoutError) as exc:
                    last = exc
                await self.clock.sleep(0.1)
            if not answered:
                return f"did not answer {path} (last: {last!r})"
        return None if new.alive and not new.panicked else "exited" if not new.alive else "panicked"

    # -- rollback ------------------------------------------------------------------------------------

    async def _rollback_before_swap(self, name: str, clone: _Clone | None, old_image_id: str | None,
                                    report: dict[str, Any], step: Callable[..., None], why: str) -> None:
        t = self.clock.monotonic()
        if clone is not None:
            await clone.machine.discard()
            await self._sweep(clone.paths)
        primary = self.machines.get(name)
        await asyncio.to_thread(self._restore_image, primary.paths if primary is not None else None)
        await self.standbys.drop(name)
        if primary is not None:
            primary.phase_image_id = old_image_id
            self.standbys.want(name)
        report["outcome"] = "rolled-back"
        step("rollback", t, before="swap", why=why,
             original_pid=primary.pid if primary is not None and primary.alive else None)

    async def _rollback_after_swap(self, name: str, new: Machine, report: dict[str, Any],
                                   step: Callable[..., None], why: str) -> None:
        t = self.clock.monotonic()
        paths = new.paths
        await asyncio.to_thread(self._restore_image, paths)
        if not new.alive:
            report["outcome"] = "rolled-back"
            step("rollback", t, after="swap", why=why, restored="pre-update phase image; the next start "
                 "boots the pre-update files")
            return
        previous = report["previous"]
        meta = phase_image.meta_path(paths)
        try:
            old_id = str(json.loads(meta.read_text())["id"])
        except (OSError, ValueError, KeyError) as exc:
            report["outcome"] = "failed"
            step("rollback", t, after="swap", why=why, failed=f"no pre-update phase image: {exc}")
            return
        await self.standbys.drop(name)
        slot = "b" if new.paths.slot == "a" else "a"
        back_paths = paths.with_slot(slot)
        back: Machine | None = None
        try:
            await strays.reap(self.host, name, paths, keep_slot=new.paths.slot, clear=True)
            await asyncio.to_thread(shutil.copyfile, paths.phase_image, back_paths.sys_disk)
            forwards = {item: self.host.free_port() for item in new.spec.forward}
            spec = new.spec.model_copy(update={
                "forward": [f"{port}:{item.partition(':')[2]}" for item, port in forwards.items()]})
            back = await self.launch(name, spec, previous["kernel"], previous["initrd"], new.accel, back_paths,
                                     self._on_fact, self._on_exit)
            back.data_shared, back.phase_image_id = True, old_id
            tag = phase_tag(_PHASE)
            await back.qmp().run_job("snapshot-load", {"tag": tag, "vmstate": "sys", "devices": ["sys"]},
                                     timeout_s=max(30.0, spec.qmp_timeout_s))
            # resumed and paused again, as a standby is (a takeover resumes a paused QEMU): warmed meanwhile
            await back.qmp().execute("cont")
            if forwards and spec.phase_standby_warm and spec.phase_standby_warm_rounds:
                await warm(self.host, next(iter(forwards.values())), spec.phase_standby_warm,
                           spec.phase_standby_warm_rounds)
            await back.qmp().execute("stop")
            back.note_phase_snapshot(tag, {})
            sb = Standby(name, slot, StandbyState.READY, self.clock.monotonic(), machine=back, paths=back_paths,
                         forwards=forwards)
            self.standbys.standbys[name] = sb
            swap: dict[str, Any] = {}
            again = await self.standbys.take_over(name, new, swap)
        except (VisorError, OSError, TimeoutError) as exc:
            cause = getattr(exc, "cause", None) or str(exc) or type(exc).__name__
            if back is not None and self.machines.get(name) is not back:
                await back.discard()
            report["outcome"] = "failed"
            step("rollback", t, after="swap", why=why, failed=cause)
            return
        if again is None:  # it could not take over: the updated guest stays (nothing was done to it)
            report["outcome"] = "failed"
            step("rollback", t, after="swap", why=why, failed=str(swap.get("standby_unusable") or swap))
            return
        report["outcome"] = "rolled-back"
        step("rollback", t, after="swap", why=why, pid=again.pid, kill_s=swap.get("kill_s"),
             cont_s=swap.get("cont_s"))

    # -- files and callbacks -------------------------------------------------------------------------

    def _short_of_room(self, paths: MachinePaths, copies: int) -> str | None:
        """None if the unit's folder has room for ``copies`` more phase images (the pre-update copy, the
        clone's snapshot disk, its phase image) and a margin; else what is free and what is needed."""
        free = self.host.free_bytes(paths.dir)
        try:
            size = paths.phase_image.stat().st_size
        except OSError:
            return None  # (no phase image: refused elsewhere)
        need = copies * size + _ROOM_MARGIN
        if free is None or free >= need:
            return None
        return (f"{free / 2**20:.0f} MiB free on {paths.dir}'s file system, about {need / 2**20:.0f} MiB needed "
                f"({copies} copies of the {size / 2**20:.0f} MiB phase image)")

    @staticmethod
    def _backup_image(paths: MachinePaths) -> None:
        image, meta = _backup_paths(paths)
        shutil.copyfile(paths.phase_image, image)
        shutil.copyfile(phase_image.meta_path(paths), meta)

    @staticmethod
    def _drop_backup(paths: MachinePaths) -> None:
        for f in _backup_paths(paths):
            f.unlink(missing_ok=True)

    @staticmethod
    def _restore_image(paths: MachinePaths | None) -> None:
        if paths is None:
            return
        image, meta = _backup_paths(paths)
        if image.exists() and meta.exists():
            shutil.copyfile(image, paths.phase_image)
            os.replace(meta, phase_image.meta_path(paths))  # the meta last: a reader sees a whole image
            image.unlink(missing_ok=True)

    async def _sweep(self, paths: MachinePaths) -> None:
        stray = strays.slot_qemu(self.host, paths)
        if stray is not None:
            await strays.kill_process(self.host, stray)
        await asyncio.to_thread(strays.remove_files, paths.slot_files())

    def _on_fact(self, machine: Machine, event: str, data: Mapping[str, Any], wall: float) -> None:
        if event == "GUEST_PANICKED" and not machine.stopping:
            log.warning("unit %s: the clone's guest panicked", machine.name)

    def _on_exit(self, machine: Machine) -> None:
        if not machine.stopping:
            log.warning("unit %s: the clone QEMU (pid %d) exited", machine.name, machine.pid)


def settle(paths: MachinePaths, configured_image: str, configured_files: tuple[str, str] | None, *,
           running: tuple[str, str] | None, phase_image_id: str | None) -> list[str]:
    """Make an update's files agree with the guest that runs, after a supervisor died in an update
    (``POINTS``); what was changed, for the journal (empty: nothing was left to settle).

    ``running`` is the adopted guest's (kernel, initrd) and ``phase_image_id`` its phase image's id
    (``running`` None: no guest was adopted, the unit is cold-started). The pre-update phase image is
    put back if it is the adopted guest's (the update died before its swap: the unit's phase image is the
    clone's, a standby made from it would run the update), else it is dropped. The update record is
    rewritten to name the running guest's boot files when it names others (the update died between the
    swap and its record): a later cold start boots what ran. Without a pre-update phase image no update
    was in flight and the record is left alone (an operator who changed the configured ``image`` gets it
    on the next cold start). ``configured_files`` are the configured image's (None: unknown, the record is
    left alone). Never raises for a missing or unreadable file; an ``OSError`` writing one propagates.
    """
    done: list[str] = []
    image, meta = _backup_paths(paths)
    interrupted = meta.exists() or image.exists()  # an update's own file: it began and did not end
    if interrupted:
        try:
            backup_id = json.loads(meta.read_text()).get("id")
            current_id = json.loads(phase_image.meta_path(paths).read_text()).get("id")
        except (OSError, ValueError, AttributeError):
            backup_id = current_id = None
        if running is not None and backup_id is not None and backup_id == phase_image_id \
                and current_id != backup_id and image.exists():
            ShadowUpdater._restore_image(paths)
            done.append("the pre-update phase image put back (the update died before its swap)")
        else:
            ShadowUpdater._drop_backup(paths)
            done.append("the pre-update phase image dropped")
    if not interrupted or running is None or configured_files is None:
        return done  # (no update in flight: a guest on other files than the config's is the operator's)
    rec = read_record(paths, configured_image)
    recorded = (str(rec["kernel"]), str(rec["initrd"])) if rec is not None else configured_files
    if running == recorded:
        return done
    if running == configured_files:
        record_path(paths).unlink(missing_ok=True)
        done.append("the update record removed (the running guest boots the configured image)")
    else:
        _write_record(paths, {"base_image": configured_image, "kernel": running[0], "initrd": running[1],
                              "image": None, "verified": False, "settled": True,
                              "previous": {"kernel": recorded[0], "initrd": recorded[1]}})
        done.append(f"the update record names the running guest's boot files ({running[1]})")
    return done


def recorded_boot_files(spec: QemuUnit, paths: MachinePaths) -> tuple[str, str] | None:
    """The boot files an update recorded for a unit configured as ``spec`` (``read_record``), or None."""
    rec = read_record(paths, spec.image)
    return (str(rec["kernel"]), str(rec["initrd"])) if rec is not None else None
