"""The process backend, enmei's embedded default: any command as a unit.

Promises:

* Each unit runs in its own session and process group, and in a cgroup v2 of its own where one can be
  made (``enmei.visor.cgroup``): every process it starts — forked, double-forked, ``setsid`` — is in it,
  gets the stop's SIGTERM and is killed (``cgroup.kill``) when the unit's main process ends, and a stop
  returns once the cgroup is empty. Without cgroup v2, the stragglers of a unit are found by the
  environment marks every process of it inherits (``ENMEI_UNIT``, ``ENMEI_SUPERVISOR``) and killed.
* The command is started through ``/bin/sh`` (``launcher_argv``), which joins the cgroup *before* it
  execs the command — so not even a process forked in the command's first instruction escapes — and
  marks the main process (``ENMEI_MAIN_PID`` = its own pid, which no descendant has): recovery adopts
  only a main process, never an orphan that inherited the other marks.
* stdout and stderr go through pipes that enmei reads in a thread of its own (``enmei.visor.capture``) into
  ``<state>/logs/<unit>.<stream>.log``, rotated by rename before a write would pass ``log.max_bytes``,
  ``keep`` old files: at most ``max_bytes * (keep + 1)`` per stream whatever the write rate; output
  past ``log.max_bytes_per_s`` is dropped, counted and reported as a ``LOG_FLOOD`` event at the
  beginning and the end of each episode. The unit holds a read end of its own pipes (never read), so
  a supervisor crash makes its writes block once the pipe is full, never fail with EPIPE or SIGPIPE;
  the next supervisor attaches to the same pipes through ``/proc/<pid>/fd`` on adoption and goes on.
  A unit adopted from an enmei that wrote the files directly keeps its O_APPEND descriptors, rotated
  copy-then-truncate by ``maintain`` as before, until it restarts.
* Identity is pid + create time, checked when a pidfd is opened; every signal goes through that pidfd
  (``pidfd_send_signal``) or to a process group whose leader was just re-checked, so a recycled pid is
  never signalled.
* An exit is seen at once: the pidfd becomes readable and ``EXITED`` is emitted with the exit code (for
  our own children), the signal, the uptime and the last lines of stderr.
* Stop is the unit's ``stop_command`` (if any, bounded by its own timeout), then its ``stop_signal``
  (SIGTERM by default) to whom ``kill_mode`` names — ``all``: the process group and every process of
  the cgroup; ``group``: the process group; ``main-then-group``: the main process alone — then after
  ``timeout_s`` SIGKILL to all of it, then a typed ``StopError`` after 5 s more. Whatever the mode,
  what is left when the main process ends is killed with the cgroup (or by marks).
* Units still running when the supervisor restarts are adopted again from their saved ``Identity``.
  Their exit code is known only if the process is enmei's child (same enmei process); otherwise None.
* Where ``enmei up`` made enmei a child subreaper, the orphans of units are reparented to it and reaped
  by ``maintain`` (``enmei.visor.reaper``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from enmei.clock import within
from enmei.config.model import ProcessUnit
from enmei.errors import EnmeiError, IdentityError, StartError, StopError, VisorError
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor import handover
from enmei.visor.base import Backend, Capability, Identity
from enmei.visor.cage import HelperCage, Limits, ResourceCage, UnitCage, current_cage_owner, install_cage
from enmei.visor.capture import Capture, attach_existing, make_pipe
from enmei.visor.cgroup import Cgroup, CgroupError, CgroupTree, parse_cgroup2_mount
from enmei.visor.identity import RunAs, launcher_prefix, popen_kwargs, resolve
from enmei.visor.logs import rotate, tail_lines
from enmei.visor.reaper import Orphans, is_subreaper
from enmei.visor.sockets import FIRST_FD, HeldSockets, launcher_script, listen_env, port_owner

__all__ = ["ENV_MAIN_PID", "ENV_SUPERVISOR", "ENV_UNIT", "Launch", "ProcessBackend", "launcher_argv", "port_owner"]

ENV_UNIT = "ENMEI_UNIT"
ENV_SUPERVISOR = "ENMEI_SUPERVISOR"
ENV_MAIN_PID = "ENMEI_MAIN_PID"
ENV_SLOT = "ENMEI_SLOT"  # which of a handover's two instances a process belongs to ("a" when unset)

# $1: the cgroup.procs files to join, one a line ("-": none; a failure to join is checked and repaired by
# the parent). set -f: a path is never globbed.
_LAUNCHER = ('if [ "$1" != - ]; then set -f; _ifs=$IFS; IFS=\'\n\'; '
             'for _c in $1; do { echo 0 >"$_c"; } 2>/dev/null; done; IFS=$_ifs; set +f; fi; shift; '
             f'{ENV_MAIN_PID}=$$; export {ENV_MAIN_PID}; exec "$@"')


def launcher_argv(command: list[str], cgroup_procs: Path | None = None, more: Sequence[Path] = (),
                  listen: Sequence[int] = ()) -> list[str]:
    """``command`` started through ``/bin/sh``: it joins ``cgroup_procs`` and ``more`` (the unit's v1
    groups of the Resource Cage), sets ``ENMEI_MAIN_PID`` to its own pid, then execs ``command`` (same
    pid, same arguments). With ``listen`` (the held sockets' fds, ``enmei.visor.sockets``) it runs
    through bash instead, which first moves them to fds 3, 4, ... and sets ``LISTEN_PID``.

    >>> launcher_argv(["sleep", "1"])[3:]
    ['enmei-launch', '-', 'sleep', '1']
    """
    files = [str(p) for p in (cgroup_procs, *more) if p is not None]
    shell, script = ("/bin/bash", launcher_script(listen) + _LAUNCHER) if listen else ("/bin/sh", _LAUNCHER)
    return [shell, "-c", script, "enmei-launch", "\n".join(files) if files else "-", *command]

log = logging.getLogger(__name__)

_CREATE_TIME_TOLERANCE_S = 0.05
_SWEEP_PASSES = 5  # scans of the marks sweep, at most
_SWEEP_WAIT_S = 2.0  # how long one pass waits for what it SIGKILLed


@dataclass
class _Running:
    """One running unit: its identity, its pidfd, and how it ends."""

    identity: Identity
    pidfd: int  # pins the process (a fake backend keeps -1)
    popen: subprocess.Popen[bytes] | None  # None when adopted (not our child: no exit code)
    proc: psutil.Process | None
    spec: ProcessUnit
    started_mono: float
    stopping: bool = False
    legacy_logs: tuple[str, ...] = ()  # streams the unit writes to the file itself (adopted from an old enmei)
    cgroup: Cgroup | None = None  # None: no cgroup v2 here, or adopted from an enmei without one
    cage: UnitCage | None = None  # its limits (the Resource Cage), if it asked for any
    sweep: asyncio.Future[Any] | None = None  # the marks scan for stragglers (no cgroup), while it runs
    started: dict[str, Any] = field(default_factory=dict)  # the STARTED event's detail
    capture_key: str = ""  # its streams' key in the capture ("": the unit's name; a retired instance's differs)
    retired: bool = False  # beside the unit's instance (a handover's old or new one): its end emits no event
    done: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


@dataclass(frozen=True)
class Launch:
    """How ``_spawn`` starts a command beyond its spec: descriptors the child inherits as they are
    (the read ends of its own output pipes, which keep a write from failing while no enmei reads)."""

    pass_fds: tuple[int, ...] = ()
    cgroup_procs: Path | None = None  # the unit's cgroup.procs, joined before the command runs
    join: tuple[Path, ...] = ()  # the unit's v1 limit groups' cgroup.procs, joined too
    run_as: RunAs = field(default_factory=RunAs)  # who the command runs as (dropped to after the cgroup is joined)
    listen: tuple[int, ...] = ()  # the held sockets' fds, moved to 3, 4, ... by the launcher (LISTEN_FDS)


class ProcessBackend(Backend):
    kind: ClassVar[str] = "process"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS, Capability.LOGS,
                                                               Capability.HANDOVER})

    def __init__(self, *, clock: Any, state_dir: Path, emit: Any, base_dir: Path | None = None,
                 cgroups: bool = True) -> None:
        super().__init__(clock=clock, state_dir=state_dir, emit=emit)
        self.base_dir = base_dir or Path.cwd()
        self.log_dir = state_dir / "logs"
        self._units: dict[str, _Running] = {}
        self.instance = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]
        self.capture = Capture(self._on_capture_event)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._use_cgroups = cgroups
        self._tree: CgroupTree | None = None
        self._tree_known = False
        self._orphans: Orphans | None = None  # made on first use, where enmei is a subreaper with a tree
        # The Resource Cage (limits, the helper cage) discovers what the host offers on first use.
        self.cage: ResourceCage | None = self._make_cage() if cgroups else None
        if self.cage is not None:
            install_cage(self.cage)
        self._releases: dict[str, asyncio.Future[Any]] = {}  # unit -> removal of its limit groups, under way
        self._noticed: set[str] = set()  # units whose cage notices were journaled (once per unit)
        self.held: dict[str, HeldSockets] = {}  # unit -> the listening sockets enmei holds for it
        self.beside: dict[str, Any] = {}  # unit -> its handover under way (``handover.Beside``)
        self._drains: set[asyncio.Future[None]] = set()  # old instances of an interrupted handover, stopping

    @property
    def cgroups(self) -> CgroupTree | None:
        """This supervisor's cgroup subtree (made on first use), or None: no writable cgroup v2 here."""
        if not self._tree_known:
            self._tree_known = True
            self._tree = CgroupTree.discover(self.instance) if self._use_cgroups else None
            if self._use_cgroups and self._tree is None:
                log.warning("no writable cgroup v2: a unit's escaped processes are found by their environment "
                            "marks instead")
        return self._tree

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, name: str, spec: Any) -> Identity:
        if not isinstance(spec, ProcessUnit):
            raise StartError(name, "start", f"not a process unit: {type(spec).__name__}")
        if name in self._units:
            raise StartError(name, "start", f"already running as pid {self._units[name].identity.pid}")
        spec = handover.effective_spec(self, name, spec)  # the command of the last update, if any
        for addr in spec.listen:
            _check_free(name, addr)
        cwd, env, run_as = await self.prepare(name, spec)
        cgroup = await self._end_leftovers(name)
        if name in self._units:  # started by someone else while we waited
            raise StartError(name, "start", f"already running as pid {self._units[name].identity.pid}")
        held = self.hold_sockets(name, spec)  # after the leftovers: one of them may still hold the address
        ucage = await self.cage_for(name, spec, cgroup)
        run = self.launch(name, spec, cwd, env, run_as, cgroup, ucage, held)
        self._units[name] = run
        self._watch(name, run)
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(), run.started))
        return run.identity

    async def prepare(self, name: str, spec: ProcessUnit) -> tuple[Path, dict[str, str], RunAs]:
        """What a start of ``name`` runs with (cwd, environment with the marks, identity), after its
        ``pre_start`` commands passed (their failure is a ``StartError``)."""
        run_as = _run_as(name, spec)
        cwd = (self.base_dir / spec.cwd).resolve() if spec.cwd else self.base_dir
        env = dict(os.environ) if spec.inherit_env else {}
        env.update(spec.env)
        for argv in spec.pre_start:
            await self._pre_start(name, spec, argv, cwd, env, run_as)
        # Marks of origin, inherited by the whole group: a supervisor killed before it saved this
        # unit's identity finds it again by them (``recover``), instead of starting a duplicate.
        env[ENV_UNIT] = name
        env[ENV_SUPERVISOR] = self.instance
        self._loop = asyncio.get_running_loop()
        return cwd, env, run_as

    def forget(self, name: str) -> None:
        """The unit left the config: its held sockets are closed (a connection still queued in them is
        refused from now on, as it would be without enmei)."""
        held = self.held.pop(name, None)
        if held is not None:
            held.close()

    def hold_sockets(self, name: str, spec: ProcessUnit) -> HeldSockets | None:
        """The unit's held sockets, bound now where not held yet (None: it declares none). A reloaded
        config that declares other sockets gets them afresh (the old ones are closed)."""
        if not spec.sockets:
            old = self.held.pop(name, None)
            if old is not None:
                old.close()
            return None
        held = self.held.get(name)
        if held is None or not held.fits(spec.sockets):
            if held is not None:
                held.close()
            held = self.held[name] = HeldSockets(name, tuple(spec.sockets), tuple(spec.socket_names()))
        held.ensure()
        return held

    def launch(self, name: str, spec: ProcessUnit, cwd: Path, env: dict[str, str], run_as: RunAs,
               cgroup: Cgroup | None, ucage: UnitCage | None, held: HeldSockets | None,
               slot: str | None = None) -> _Running:
        """Spawn one instance of ``name`` in ``cgroup`` (its output captured under the unit's name, its
        held sockets passed by ``LISTEN_FDS``; ``slot``: a handover's mark, ``ENMEI_SLOT``, inherited by
        all of the instance); not yet the unit's: the caller registers and watches it."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if slot is not None:
            env = {**env, ENV_SLOT: slot}
        out_r, out_w = make_pipe()
        err_r, err_w = make_pipe()
        listen: list[int] = []
        if held is not None:
            env = {**env, **listen_env(held.names)}
            listen = held.inheritable()
            # The launcher moves the sockets to 3, 4, ...: the pipes' read ends must not be there.
            out_r, err_r = (_above(fd, FIRST_FD + len(listen)) for fd in (out_r, err_r))
        launch = Launch(pass_fds=(out_r, err_r, *listen),
                        cgroup_procs=cgroup.path / "cgroup.procs" if cgroup else None,
                        join=tuple(ucage.procs_files()) if ucage else (), run_as=run_as, listen=tuple(listen))
        try:
            pid, popen, pidfd, proc, create_time = self._spawn(name, spec, cwd, env, out_w, err_w, launch)
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            if ucage is not None:
                self._release_later(name, None, ucage)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
            for fd in listen:
                os.close(fd)
        # Where the child holds its read ends, and which pipes they are: a later enmei re-attaches by them.
        pipes = {"stdout": [out_r, os.fstat(out_r).st_ino], "stderr": [err_r, os.fstat(err_r).st_ino]}
        extra: dict[str, Any] = {"pgid": pid, "capture": pipes}
        if held is not None:
            extra["sockets"] = held.identity()
        if slot is not None:
            extra["slot"] = slot
        if cgroup is not None:
            try:
                cgroup.add(pid)  # normally a no-op: the launcher joined it before the command ran
                extra["cgroup"] = str(cgroup.path)
            except CgroupError as exc:
                log.warning("unit %s: not in its cgroup (%s): its stragglers are found by marks", name, exc)
                cgroup = None
        started: dict[str, Any] = {"pid": pid, "command": list(spec.command)}
        if ucage is not None:
            for ctrl in ucage.join(pid):  # normally none: the launcher joined them
                ucage.notices.append(f"not in its {ctrl} group: the limit does not hold")
            started["limits"] = dict(ucage.applied)
            if ucage.notices and name not in self._noticed:
                self._noticed.add(name)  # journaled once per unit: the host does not change between starts
                started["cage_notices"] = list(ucage.notices)
                for n in ucage.notices:
                    log.warning("unit %s: %s", name, n)
        identity = Identity(unit=name, backend=self.kind, pid=pid, create_time=create_time,
                            started_wall=self.clock.wall(), extra=extra)
        run = _Running(identity, pidfd, popen, proc, spec, self.clock.monotonic())
        run.cgroup = cgroup
        run.cage = ucage
        run.started = started
        self._capture(name, spec, {"stdout": out_r, "stderr": err_r})
        return run

    async def cage_for(self, name: str, spec: ProcessUnit, cgroup: Cgroup | None,
                       slot: str | None = None) -> UnitCage | None:
        """The unit's limits set up for this start (None: it asks for none, or no cage here); first waits
        for the removal of its previous instance's groups, so that never removes the new ones. ``slot``:
        a handover's second instance, in groups of its own (``enmei.visor.cage.unit_group``); it does not
        wait, the running instance's groups stay."""
        pending = self._releases.pop(name, None) if slot is None else None
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        limits = Limits.of(spec)
        if not limits.asked():
            return None
        if self.cage is None:
            ucage = UnitCage(name, notices=[f"{k} is not applied: cgroups are off for this backend"
                                            for k in limits.asked()])
            return ucage
        cage = self.cage
        return await asyncio.to_thread(lambda: cage.for_unit(name, limits, cgroup, slot=slot))

    async def _helper_cage(self) -> HelperCage | None:
        """The helper cage pre_start and stop commands run in (None: none here)."""
        cage = self.cage
        if cage is None:
            return None
        helpers = await asyncio.to_thread(lambda: cage.helpers)
        return helpers if helpers.groups else None

    def _release_later(self, name: str, run: _Running | None, ucage: UnitCage) -> None:
        """Remove the unit's limit groups once its processes are gone (its v2 cgroup empty, or the marks
        scan done), in the background; a next start of the unit waits for it."""
        cage = self.cage
        if cage is None or not ucage.v1:
            return

        before = self._releases.get(name)  # a handover's other instance's groups, still being removed

        async def release() -> None:
            if before is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(before)
            if run is not None and run.sweep is not None:
                await asyncio.shield(run.sweep)
            if run is not None and run.cgroup is not None:
                await asyncio.to_thread(run.cgroup.wait_empty, 5.0)
            try:
                await asyncio.to_thread(cage.release, ucage)
            except CgroupError as exc:
                log.warning("unit %s: %s", name, exc)

        self._releases[name] = asyncio.ensure_future(release())

    async def adopt(self, name: str, spec: Any, identity: Identity) -> bool:
        if not isinstance(spec, ProcessUnit) or name in self._units:
            return False
        if handover.record_path(self.state_dir, name).exists():
            # An enmei killed during a handover: keep exactly one instance (``enmei.visor.handover``).
            identity, end, drain, seen = handover.resolve_on_adopt(self, name, spec, identity)
            for other in end:
                log.warning("unit %s: ending pid %d, started by a handover that never completed", name, other.pid)
                handover.end_now(other)
            if drain is not None:
                log.warning("unit %s: a handover had swapped to pid %d: stopping the old pid %d", name,
                            identity.pid, drain.pid)
                self._drains.add(asyncio.ensure_future(
                    handover.stop_later(drain, signal.Signals[spec.stop_signal], float(spec.stop_timeout_s))))
            said = {"handover_record": seen, "ended": [o.pid for o in end], "draining": drain.pid if drain else None}
        else:
            said = {}
        pinned = self._pin(identity)
        if pinned is None:
            return False
        pidfd, proc = pinned
        self._loop = asyncio.get_running_loop()
        self._units[name] = run = _Running(identity, pidfd, None, proc, spec, self.clock.monotonic())
        run.legacy_logs = self._reattach(name, spec, identity)
        run.cgroup = self._adopted_cgroup(name, identity)
        if spec.sockets:
            self._take_sockets(name, spec, run)
        if self.cage is not None and Limits.of(spec).asked():
            run.cage = await asyncio.to_thread(self.cage.adopted, name, identity.pid)
        self._watch(name, run)
        self.emit(UnitEvent(name, UnitEventKind.ADOPTED, self.clock.monotonic(), {"pid": identity.pid, **said}))
        return True

    def _take_sockets(self, name: str, spec: ProcessUnit, run: _Running) -> None:
        """Hold the unit's sockets again from the adopted instance (``HeldSockets.take_from``); those it
        does not have are bound at the next start (while it runs they are in use: a handover is refused)."""
        held = self.held.get(name)
        if held is None or not held.fits(spec.sockets):
            if held is not None:
                held.close()
            held = self.held[name] = HeldSockets(name, tuple(spec.sockets), tuple(spec.socket_names()))
        got = held.take_from(run.identity.pid, run.pidfd, run.identity.extra.get("sockets"))
        if got < len(spec.sockets):
            log.warning("unit %s: took %d of its %d sockets back from pid %d; the others are bound at its "
                        "next start", name, got, len(spec.sockets), run.identity.pid)

    def _adopted_cgroup(self, name: str, identity: Identity) -> Cgroup | None:
        """The cgroup a saved identity names, if it is the one this supervisor's tree gives the unit and
        the adopted process is in it (a planted path or a moved process is not trusted)."""
        saved = identity.extra.get("cgroup")  # None: recovered by marks, or started by an older enmei
        tree = self.cgroups
        cgroup = tree.existing(name, str(saved) if saved else None) if tree else None
        try:
            if cgroup is not None and identity.pid in cgroup.procs():
                return cgroup
        except CgroupError:
            pass
        return None

    async def _end_leftovers(self, name: str, slot: Path | None = None) -> Cgroup | None:
        """Before a fresh start: end what a previous instance of ``name`` left running (processes in its
        cgroups or, without cgroups, carrying its marks), so no orphan outlives it or holds its ports.
        Returns the unit's cgroup, ready (None without cgroups). With ``slot`` (a handover's new instance,
        beside a running one): only that cgroup is emptied, and nothing is done without cgroups."""
        tree = self.cgroups
        if tree is not None and slot is None:
            other = tree.existing(name, str(tree.slots(name)[1]))  # where a handover left the last instance
            if other is not None:
                with contextlib.suppress(CgroupError):
                    other.kill()
                    await asyncio.to_thread(other.wait_empty, 5.0)
                    other.remove()
        try:
            cgroup = (Cgroup.create(slot) if slot is not None else tree.unit(name)) if tree is not None else None
        except CgroupError as exc:
            log.warning("unit %s: no cgroup (%s): its stragglers are found by marks", name, exc)
            cgroup = None
        ended: list[int] = []
        if cgroup is not None:
            try:
                ended = cgroup.procs()
                if ended or cgroup.populated():
                    cgroup.kill()
                    if not await asyncio.to_thread(cgroup.wait_empty, 5.0):
                        log.warning("unit %s: leftovers in %s survived SIGKILL for 5 s", name, cgroup.path)
            except CgroupError as exc:
                log.warning("unit %s: its cgroup is unusable (%s): its stragglers are found by marks", name, exc)
                cgroup = None
        if cgroup is None and slot is None:
            ended = await asyncio.to_thread(self._sweep_marked, name)
        if ended:
            log.warning("unit %s: ended %d process(es) left by its previous instance: %s", name, len(ended), ended)
        return cgroup

    def _reattach(self, name: str, spec: ProcessUnit, identity: Identity) -> tuple[str, ...]:
        """Capture an adopted unit's output again: a new read end of the pipes it was started with, found
        through ``/proc/<pid>/fd`` (the read end it holds, else its fd 1 / 2), checked by inode when the
        identity names them. Returns the streams it writes to a file itself (an older enmei's units)."""
        held = identity.extra.get("capture") or {}
        fds: dict[str, int] = {}
        legacy: list[str] = []
        for stream, std in (("stdout", 1), ("stderr", 2)):
            info = held.get(stream) if isinstance(held, dict) else None
            try:
                where, ino = (int(info[0]), int(info[1])) if info else (None, None)
            except (TypeError, ValueError, IndexError):
                where, ino = None, None
            fd = attach_existing(identity.pid, [std] if where is None else [where, std], ino)
            if fd is not None:
                fds[stream] = fd
            elif self._writes_file(name, stream, identity.pid, std):
                legacy.append(stream)
            else:
                log.warning("unit %s: its %s could not be captured again after adoption", name, stream)
        self._capture(name, spec, fds)
        return tuple(legacy)

    def _writes_file(self, name: str, stream: str, pid: int, fd: int) -> bool:
        """Whether ``pid``'s descriptor ``fd`` is the unit's log file itself (an older enmei's capture)."""
        try:
            return os.path.realpath(f"/proc/{pid}/fd/{fd}") == os.path.realpath(self._log_file(name, stream))
        except OSError:
            return False

    def _capture(self, name: str, spec: ProcessUnit, fds: dict[str, int]) -> None:
        """Hand ``fds`` (read ends, by stream) to the capture thread; a log that cannot be opened
        (unsafe path, full disk) leaves that stream uncaptured, with a warning, and the unit running."""
        for stream, fd in fds.items():
            try:
                self.capture.add(name, stream, fd, self._log_file(name, stream), max_bytes=int(spec.log.max_bytes),
                                 keep=spec.log.keep, rate=float(spec.log.max_bytes_per_s))
            except (OSError, EnmeiError) as exc:
                log.warning("unit %s: cannot capture %s: %s", name, stream, exc)

    def _on_capture_event(self, unit: str, stream: str, detail: dict[str, Any]) -> None:
        """From the capture thread: a flood episode began or ended; hand it to the loop as a ``UnitEvent``."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        event = UnitEvent(unit, UnitEventKind.LOG_FLOOD, self.clock.monotonic(), {"stream": stream, **detail})
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody to tell
            loop.call_soon_threadsafe(self.emit, event)

    async def recover(self, name: str, spec: Any) -> Identity | None:
        """Adopt the main process of an instance this supervisor's state dir started for ``name``, found
        by its environment marks (``ENMEI_MAIN_PID`` equal to its own pid: never a child or an orphan of
        the unit, which inherit the other marks). If there are several (a start repeated across a
        crash), the oldest is kept and the others are ended (SIGKILL to their groups)."""
        if not isinstance(spec, ProcessUnit) or name in self._units:
            return None
        found = self._find_marked(name)
        if not found:
            # No main process: whatever still carries the unit's marks is an orphan of an instance no
            # supervisor holds (D8: one was once "recovered" as the unit). End it before the real start.
            orphans = await asyncio.to_thread(self._sweep_marked, name)
            if orphans:
                log.warning("unit %s: ended %d orphan(s) of an earlier instance: %s", name, len(orphans), orphans)
            return None
        found.sort(key=lambda p: p[1])
        for pid, _ in found[1:]:
            log.warning("unit %s: a second instance (pid %d) from before a crash: ending it", name, pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        pid, ctime = found[0]
        identity = Identity(unit=name, backend=self.kind, pid=pid, create_time=ctime, started_wall=ctime,
                            extra={"pgid": pid, "recovered": True, "duplicates_ended": [p for p, _ in found[1:]]})
        return identity if await self.adopt(name, spec, identity) else None

    def _find_marked(self, name: str) -> list[tuple[int, float]]:
        """(pid, create time) of main processes carrying this supervisor's marks for ``name``."""
        out: list[tuple[int, float]] = []
        for proc in psutil.process_iter(["pid"]):
            try:
                pid = proc.pid
                if os.getsid(pid) != pid:
                    continue  # not a leader: a child of a unit carries the marks too
                env = proc.environ()
                ours = env.get(ENV_UNIT) == name and env.get(ENV_SUPERVISOR) == self.instance
                # A child that called setsid is a leader with our marks, but its ENMEI_MAIN_PID is the
                # pid of the main process it descends from, not its own.
                if ours and env.get(ENV_MAIN_PID) == str(pid) and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append((pid, proc.create_time()))
            except (psutil.Error, OSError):
                continue
        return out

    def _sweep_marked(self, name: str, keep: int | None = None, slot: str | None = None) -> list[int]:
        """SIGKILL every process carrying this supervisor's marks for ``name`` except ``keep`` (its main
        process), and wait until they are gone: the fallback for stragglers without a cgroup. Blocking (a
        scan of all processes). A SIGKILLed process lingers for a moment, and one may fork while the scan
        passes it, so the scan repeats (at most ``_SWEEP_PASSES`` times) until it finds none left."""
        ended: list[int] = []
        for _ in range(_SWEEP_PASSES):
            killed: list[psutil.Process] = []
            for proc in psutil.process_iter(["pid"]):
                try:
                    if proc.pid in (keep, os.getpid()):
                        continue
                    env = proc.environ()
                    if env.get(ENV_UNIT) != name or env.get(ENV_SUPERVISOR) != self.instance:
                        continue
                    if slot is not None and env.get(ENV_SLOT, "a") != slot:
                        continue  # the other instance of a handover
                    if proc.status() == psutil.STATUS_ZOMBIE:
                        continue
                    proc.kill()  # psutil re-checks the create time: never a recycled pid
                    killed.append(proc)
                except (psutil.Error, OSError):
                    continue
            if not killed:
                break
            ended.extend(p.pid for p in killed)
            _, alive = psutil.wait_procs(killed, timeout=_SWEEP_WAIT_S)
            # wait_procs counts a process as gone once it is reaped; one that is not our child stays a
            # zombie until its parent reaps it: dead all the same.
            for p in alive:
                with contextlib.suppress(psutil.Error):
                    if p.status() != psutil.STATUS_ZOMBIE:
                        log.warning("unit %s: pid %d survived SIGKILL for %.1f s", name, p.pid, _SWEEP_WAIT_S)
        return sorted(set(ended))

    async def stop(self, name: str, *, timeout_s: float) -> None:
        """Stop in bounded phases: the unit's ``stop_command`` if it has one (within
        ``stop_command_timeout_s``), then — if the unit is still there — its ``stop_signal`` to whom its
        ``kill_mode`` names and SIGCONT to all of it (a stopped process handles its signal), ``timeout_s``,
        then SIGKILL to all of it, then ``StopError`` after 5 s more."""
        run = self._units.get(name)
        if run is None:
            return
        await self.stop_instance(run, timeout_s)

    async def stop_instance(self, run: _Running, timeout_s: float) -> None:
        """``stop`` for one instance, the unit's or one beside it (a handover's old or new one)."""
        name = run.identity.unit
        run.stopping = True
        spec = run.spec
        if spec.stop_command and not run.done.done():
            await self._run_stop_command(run)
        if run.done.done():
            await self._stragglers_gone(run)
            return
        sig = signal.Signals[spec.stop_signal]
        if spec.kill_mode == "main-then-group":
            self._signal_main(run, sig)
        else:
            self._signal_group(run, sig, cgroup=spec.kill_mode == "all")
        # A stopped (SIGSTOPped, hung) process keeps the signal pending and would sit out the whole
        # timeout for SIGKILL: continue all of the unit, so it stops gracefully now (systemd does so too).
        self._signal_group(run, signal.SIGCONT)
        if not await self._wait_done(run, timeout_s):
            log.warning("unit %s did not stop within %.1fs of %s: SIGKILL", name, timeout_s, sig.name)
            self._signal_group(run, signal.SIGKILL)
            if not await self._wait_done(run, 5.0):
                raise StopError(name, "stop", f"pid {run.identity.pid} survived SIGKILL for 5 s")
        await self._stragglers_gone(run)

    async def _pre_start(self, name: str, spec: ProcessUnit, argv: list[str], cwd: Path, env: dict[str, str],
                         run_as: RunAs) -> None:
        """Run one ``pre_start`` command as the unit would run (cwd, environment, identity) within
        ``pre_start_timeout_s``; its failure (exit status, timeout — its group is then killed — or a
        command that cannot start) is a ``StartError`` marked ``config_error``, with its last stderr line."""
        bound = float(spec.pre_start_timeout_s)
        shown = " ".join(argv)
        helpers = await self._helper_cage()
        try:
            proc = await asyncio.create_subprocess_exec(
                *(helpers.argv(argv) if helpers else argv), cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, **popen_kwargs(run_as))
        except OSError as exc:
            raise StartError(name, "start", f"pre_start {shown!r} could not run: {exc}", config_error=True) from exc
        if helpers is not None:
            helpers.enter(proc.pid)  # run as the unit's user, the launcher could not join the cage itself
        try:
            _, err = await within(self.clock, proc.communicate(), bound)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise StartError(name, "start", f"pre_start {shown!r} did not finish within {bound:g}s",
                             config_error=True) from None
        rc = proc.returncode or 0
        if rc != 0:
            lines = err.decode(errors="replace").strip().splitlines() if err else []
            said = f": {lines[-1][:300]}" if lines else ""
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            raise StartError(name, "start", f"pre_start {shown!r} {how}{said}", config_error=True)

    async def _run_stop_command(self, run: _Running) -> None:
        """Run the unit's ``stop_command`` (the unit's cwd and environment, ``MAINPID`` = its main pid, in a
        session of its own) and wait for it up to ``stop_command_timeout_s``, then for the unit as long
        again as is left; a command that fails, cannot start or overruns (its group is killed) is logged
        and the signal path goes on. Never raises for the command."""
        spec, name = run.spec, run.identity.unit
        assert spec.stop_command is not None
        cwd = (self.base_dir / spec.cwd).resolve() if spec.cwd else self.base_dir
        env = dict(os.environ) if spec.inherit_env else {}
        env.update(spec.env)
        env["MAINPID"] = str(run.identity.pid)
        bound = float(spec.stop_command_timeout_s)
        t0 = self.clock.monotonic()
        helpers = await self._helper_cage()
        argv = helpers.argv(spec.stop_command) if helpers else spec.stop_command
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE, start_new_session=True, **popen_kwargs(_run_as(name, spec)))
        except (OSError, StartError) as exc:
            log.warning("unit %s: stop_command %r could not start: %s", name, spec.stop_command[0], exc)
            return
        if helpers is not None:
            helpers.enter(proc.pid)
        try:
            _, err = await within(self.clock, proc.communicate(), bound)
            if proc.returncode != 0:
                tail = err.decode(errors="replace").strip().splitlines()[-1:] if err else []
                log.warning("unit %s: stop_command exited with %s%s", name, proc.returncode,
                            f": {tail[0]}" if tail else "")
        except TimeoutError:
            log.warning("unit %s: stop_command did not finish within %.1fs: killed", name, bound)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return
        left = bound - (self.clock.monotonic() - t0)
        if left > 0:
            await self._wait_done(run, left)  # the command asked: give the unit the rest to finish

    async def _stragglers_gone(self, run: _Running) -> None:
        """After a stop: wait until the unit's cgroup is empty (its stragglers were killed when the main
        process ended) and remove it, or until the marks scan has ended them. ``StopError`` if a process
        survives SIGKILL for 5 s."""
        if run.sweep is not None:
            await asyncio.shield(run.sweep)
        pending = self._releases.get(run.identity.unit)
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        cgroup = run.cgroup
        if cgroup is None:
            return
        if not await asyncio.to_thread(cgroup.wait_empty, 5.0):
            raise StopError(run.identity.unit, "stop", f"processes left in {cgroup.path} survived SIGKILL for 5 s")
        if run.identity.unit not in self._units:  # not started again meanwhile
            with contextlib.suppress(CgroupError):
                cgroup.remove()

    # -- socket handover (``enmei.visor.handover``) --------------------------------------------------

    async def handover_begin(self, name: str, spec: Any) -> handover.Beside:
        """Start ``spec`` beside the unit's running instance on its held sockets (``handover.begin``)."""
        if not isinstance(spec, ProcessUnit):
            raise StartError(name, "update", f"not a process unit: {type(spec).__name__}")
        return await handover.begin(self, name, spec)

    def handover_commit(self, beside: handover.Beside) -> None:
        handover.commit(self, beside)

    async def handover_retire(self, beside: handover.Beside, timeout_s: float) -> dict[str, Any]:
        return await handover.retire(self, beside, timeout_s)

    async def handover_abandon(self, beside: handover.Beside, timeout_s: float) -> dict[str, Any]:
        return await handover.abandon(self, beside, timeout_s)

    def alive(self, name: str) -> bool:
        run = self._units.get(name)
        return run is not None and not run.done.done()

    def identity(self, name: str) -> Identity | None:
        run = self._units.get(name)
        return run.identity if run else None

    async def close(self) -> None:
        for run in list(self._units.values()):
            self._unwatch(run)
        self._units.clear()
        for held in self.held.values():
            held.close()  # a unit still running keeps its own copies: the next enmei takes them back
        self.held.clear()
        # Units still running keep their pipes (they hold a read end): the next enmei attaches again.
        await asyncio.to_thread(self.capture.close)
        for pending in list(self._releases.values()):
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        self._releases.clear()
        if self.cage is not None:
            await asyncio.to_thread(self.cage.remove)  # only what is empty: running units keep their groups
            if current_cage_owner() is self.cage:
                install_cage(None)
        if self._tree is not None:
            self._tree.remove()  # only what is empty: running units keep their cgroups

    # -- monitor API -------------------------------------------------------------------------------

    async def stats(self, name: str) -> dict[str, float]:
        run = self._units.get(name)
        if run is None:
            raise VisorError(name, "stats", "not running")
        return self._stats(run)

    def log_path(self, name: str, stream: str) -> Path | None:
        if stream not in ("stdout", "stderr"):
            return None
        return self._log_file(name, stream)

    def maintain(self) -> None:
        """Rotate the logs of units adopted from an enmei without pipe capture, which write the file
        themselves (copy, then truncate: the writer keeps its O_APPEND fd). Captured logs rotate as
        they are written, in the capture thread."""
        for name, run in list(self._units.items()):
            for stream in run.legacy_logs:
                rotate(self._log_file(name, stream), int(run.spec.log.max_bytes), run.spec.log.keep)
        self.reap_orphans()

    def reap_orphans(self) -> list[tuple[int, int | None, int | None]]:
        """Where enmei is a child subreaper (``enmei up``) and has a cgroup tree: reap the zombies of its
        units' orphans (``enmei.visor.reaper``); returns (pid, code, signal) of those reaped now."""
        if self._orphans is None:
            tree = self.cgroups
            if tree is None or not is_subreaper():
                return []
            try:
                mount = parse_cgroup2_mount(Path("/proc/self/mountinfo").read_text())
            except OSError:
                mount = None
            if mount is None or not tree.root.is_relative_to(mount):
                return []
            # The tree as /proc/PID/cgroup names it (enmei may have moved itself into a leaf of it since).
            self._orphans = Orphans("/" + str(tree.root.relative_to(mount)).strip("/"))
        done = self._orphans.reap(run.identity.pid for run in self._units.values())
        for pid, code, sig in done:
            log.info("reaped orphan %d of a unit (%s)", pid,
                     f"code {code}" if sig is None else f"signal {signal.Signals(sig).name}")
        return done

    # -- internals ---------------------------------------------------------------------------------

    def _log_file(self, name: str, stream: str) -> Path:
        return self.log_dir / f"{name}.{stream}.log"

    def _on_exit(self, name: str, run: _Running) -> None:
        """The unit's leader ended: reap it, end its stragglers, tell the engine."""
        code, sig = self._reap(run)  # before the pidfd closes: an adopted child is waited for through it
        self._unwatch(run)
        if self._units.get(name) is run:
            del self._units[name]
        self._end_group(run)
        self.capture.remove(run.capture_key or name)  # drains first: the files hold the unit's last words
        uptime = self.clock.monotonic() - run.started_mono
        detail: dict[str, Any] = {"pid": run.identity.pid, "code": code,
                                  "signal": signal.Signals(sig).name if sig else None,
                                  "uptime_s": round(uptime, 3)}
        if run.cage is not None:
            if run.cage.oomed():  # the kernel counted an OOM kill in its memory group: past memory_max
                detail["reason"] = "oom"
                detail["memory_max"] = run.cage.applied.get("memory_max")
            self._release_later(name, run, run.cage)
        if not run.stopping:
            detail["stderr_tail"] = tail_lines(self._log_file(name, "stderr"), 5)
        if not run.done.done():
            run.done.set_result(detail)
        if run.retired:
            return  # an instance beside the unit's (a handover's): its end is the handover's to tell
        kind = UnitEventKind.STOPPED if run.stopping else UnitEventKind.EXITED
        self.emit(UnitEvent(name, kind, self.clock.monotonic(), detail))

    async def _wait_done(self, run: _Running, timeout_s: float) -> bool:
        try:
            await within(self.clock, asyncio.shield(run.done), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- the operating-system edge (a fake backend overrides only these) ---------------------------

    def _make_cage(self) -> ResourceCage | None:
        """This supervisor's Resource Cage (it touches no cgroup until first used)."""
        return ResourceCage(self.instance, lambda: self.cgroups)

    def _spawn(self, name: str, spec: ProcessUnit, cwd: Path, env: dict[str, str], out_fd: int,
               err_fd: int, launch: Launch
               ) -> tuple[int, subprocess.Popen[bytes] | None, int, psutil.Process | None, float]:
        """Start the command in a new session, through the launcher (cgroup, main mark); returns (pid,
        popen, pidfd, psutil handle, create time)."""
        _check_command(name, spec.command[0], cwd, env)
        # The launcher joins the cgroup with enmei's rights, then drops to the unit's identity (setpriv)
        # and execs the command: the umask is set before the launcher runs.
        try:
            prefix = launcher_prefix(launch.run_as)
        except FileNotFoundError as exc:
            raise StartError(name, "start", str(exc)) from exc
        umask = launch.run_as.umask
        try:
            popen = subprocess.Popen(
                launcher_argv([*prefix, *spec.command], launch.cgroup_procs, launch.join, launch.listen), cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL, stdout=out_fd, stderr=err_fd, start_new_session=True, close_fds=True,
                pass_fds=launch.pass_fds, umask=-1 if umask is None else umask,
            )
        except FileNotFoundError as exc:
            raise StartError(name, "start", f"command {spec.command[0]!r} not found ({exc.strerror})") from exc
        except PermissionError as exc:
            raise StartError(name, "start", f"command {spec.command[0]!r} is not executable") from exc
        except OSError as exc:
            raise StartError(name, "start", f"{spec.command[0]!r}: {exc}") from exc
        try:
            pidfd = os.pidfd_open(popen.pid)
            proc = psutil.Process(popen.pid)
            create_time = proc.create_time()
        except (OSError, psutil.Error) as exc:  # already gone: keep the exit code
            popen.wait()
            raise StartError(name, "start", f"exited at once with code {popen.returncode}") from exc
        return popen.pid, popen, pidfd, proc, create_time

    def _pin(self, identity: Identity) -> tuple[int, psutil.Process | None] | None:
        """A pidfd and psutil handle for a saved identity, or None if that process is gone or not ours."""
        try:
            proc = psutil.Process(identity.pid)
            if abs(proc.create_time() - identity.create_time) > _CREATE_TIME_TOLERANCE_S:
                return None  # the pid was recycled: not ours
            pidfd = os.pidfd_open(identity.pid)
            # Re-check after opening: from here on the pidfd pins this exact process.
            same = abs(psutil.Process(identity.pid).create_time() - identity.create_time) <= _CREATE_TIME_TOLERANCE_S
            if not same or proc.status() == psutil.STATUS_ZOMBIE:
                os.close(pidfd)
                return None
        except (psutil.Error, OSError):
            return None
        return pidfd, proc

    def _watch(self, name: str, run: _Running) -> None:
        """Call ``_on_exit`` when the process ends (the pidfd becomes readable)."""
        asyncio.get_running_loop().add_reader(run.pidfd, self._on_exit, name, run)

    def _unwatch(self, run: _Running) -> None:
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_reader(run.pidfd)
        with contextlib.suppress(OSError):
            os.close(run.pidfd)

    def _reap(self, run: _Running) -> tuple[int | None, int | None]:
        """(exit code, signal number) of an ended process. An adopted one has them only if it is this
        process's child (an engine made again in the same enmei, an in-place re-exec; waited for through
        its pidfd); a unit adopted from an enmei that is gone was its child, never ours: both None."""
        if run.popen is None:
            try:
                res = os.waitid(os.P_PIDFD, run.pidfd, os.WEXITED | os.WNOHANG)
            except (ChildProcessError, OSError, AttributeError):
                return None, None
            if res is None:
                return None, None
            if res.si_code == os.CLD_EXITED:
                return res.si_status, None
            return None, res.si_status
        rc = run.popen.wait()
        return (None, -rc) if rc < 0 else (rc, None)

    def _end_group(self, run: _Running) -> None:
        """End what the main process left: its group, and its cgroup (every process it started, also
        those that left the group) — or, without a cgroup, every process with its marks (a scan, in a
        thread; ``stop`` waits for it)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.identity.pid, signal.SIGKILL)
        if run.cgroup is not None:
            try:
                run.cgroup.kill()
                return
            except CgroupError as exc:
                log.warning("unit %s: %s: ending its stragglers by marks", run.identity.unit, exc)
        # During a handover two instances carry the unit's marks: end only this one's (its slot).
        name = run.identity.unit
        slot = str(run.identity.extra.get("slot", "a")) if run.retired or name in self.beside else None
        run.sweep = asyncio.ensure_future(asyncio.to_thread(self._sweep_marked, name, None, slot))

    def _stats(self, run: _Running) -> dict[str, float]:
        assert run.proc is not None
        try:
            return process_stats(run.proc)
        except psutil.Error as exc:
            raise VisorError(run.identity.unit, "stats", str(exc)) from exc

    def _signal_main(self, run: _Running, sig: signal.Signals) -> None:
        """Signal the unit's main process alone, through its pidfd (never a recycled pid)."""
        if run.done.done():
            return
        try:
            signal.pidfd_send_signal(run.pidfd, sig)
        except ProcessLookupError:
            return
        except OSError as exc:
            raise IdentityError(run.identity.unit, f"signal {sig.name}", str(exc)) from exc

    def _signal_group(self, run: _Running, sig: signal.Signals, *, cgroup: bool = True) -> None:
        """Signal the unit's process group, after checking through the pidfd that the leader is ours,
        and (``cgroup``) every other process in the unit's cgroup."""
        if run.done.done():
            return
        try:
            # pidfd_send_signal with signal 0 fails if the pinned process has exited: the group id
            # (= leader pid) cannot have been reused while that pidfd is open and the leader alive.
            signal.pidfd_send_signal(run.pidfd, 0)
        except ProcessLookupError:
            return
        except OSError as exc:
            raise IdentityError(run.identity.unit, f"signal {sig.name}", str(exc)) from exc
        try:
            os.killpg(run.identity.pid, sig)
        except ProcessLookupError:
            return
        except PermissionError:
            # Not a group leader any more (setsid in the child?): signal the pinned process alone.
            signal.pidfd_send_signal(run.pidfd, sig)
        if cgroup and run.cgroup is not None:
            # Those that left the group (setsid, double fork) are asked to stop too, as the group is.
            with contextlib.suppress(CgroupError):
                for pid in run.cgroup.procs():
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, sig)


def process_stats(proc: psutil.Process) -> dict[str, float]:
    """Resource use of one process; names carry units. Missing counters are left out."""
    out: dict[str, float] = {}
    with proc.oneshot():
        try:
            mem = proc.memory_info()
            out["rss_bytes"] = float(mem.rss)
            out["vms_bytes"] = float(mem.vms)
            out["cpu_percent"] = proc.cpu_percent(None)
            cpu = proc.cpu_times()
            out["cpu_seconds"] = float(cpu.user + cpu.system)
            out["num_threads"] = float(proc.num_threads())
            out["num_fds"] = float(proc.num_fds())
            io = proc.io_counters()
            out["read_bytes"] = float(io.read_bytes)
            out["write_bytes"] = float(io.write_bytes)
        except (psutil.AccessDenied, AttributeError):
            pass
    return out


def _run_as(name: str, spec: ProcessUnit) -> RunAs:
    """The unit's identity in numbers; a user or group missing on this machine is a config error."""
    try:
        return resolve(spec.user, spec.group, spec.groups, spec.umask)
    except LookupError as exc:
        key, message = exc.args
        raise StartError(name, "start", f"{key}: {message}", config_error=True) from None


def _check_command(name: str, prog: str, cwd: Path, env: dict[str, str]) -> None:
    """``StartError`` unless ``prog`` names an executable (as ``exec`` would find it with ``env``'s PATH):
    the launcher execs it after the fork, where a missing command is only an exit status."""
    if "/" in prog:
        path = Path(prog) if os.path.isabs(prog) else cwd / prog
        if not path.exists():
            raise StartError(name, "start", f"command {prog!r} not found (No such file or directory)")
        if path.is_dir() or not os.access(path, os.X_OK):
            raise StartError(name, "start", f"command {prog!r} is not executable")
    elif shutil.which(prog, path=env.get("PATH", os.defpath)) is None:
        raise StartError(name, "start", f"command {prog!r} not found (No such file or directory in PATH)")


def _above(fd: int, low: int) -> int:
    """``fd`` itself if it is at least ``low``, else a copy numbered from ``low`` (``fd`` is closed)."""
    if fd >= low:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, low)
    finally:
        os.close(fd)


def _check_free(name: str, addr: str) -> None:
    """Raise ``StartError`` naming the owner if ``addr`` (HOST:PORT) is already bound."""
    host, _, port_s = addr.rpartition(":")
    host = host.strip("[]")
    port = int(port_s)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise StartError(name, "start", f"cannot bind {addr}: {exc.strerror}") from exc
            owner = port_owner(port)
            who = f" by pid {owner[0]} ({owner[1]})" if owner else ""
            raise StartError(name, "start", f"port {addr} is already in use{who}") from exc
