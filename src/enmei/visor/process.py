"""The process backend, enmei's embedded default: any command as a unit.

Promises:

* Each unit runs in its own session and process group; a stop reaches the whole group.
* stdout and stderr go straight to files opened ``O_APPEND`` (``<state>/logs/<unit>.<stream>.log``), so
  output survives a supervisor crash; rotation is copy-then-truncate by size, ``keep`` old files.
* Identity is pid + create time, checked when a pidfd is opened; every signal goes through that pidfd
  (``pidfd_send_signal``) or to a process group whose leader was just re-checked, so a recycled pid is
  never signalled.
* An exit is seen at once: the pidfd becomes readable and ``EXITED`` is emitted with the exit code (for
  our own children), the signal, the uptime and the last lines of stderr.
* Stop is SIGTERM to the group, ``timeout_s``, then SIGKILL to the group, then a typed ``StopError``.
* Units still running when the supervisor restarts are adopted again from their saved ``Identity``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from enmei.clock import within
from enmei.config.model import ProcessUnit
from enmei.errors import IdentityError, StartError, StopError, VisorError
from enmei.model import UnitEvent, UnitEventKind
from enmei.visor.base import Backend, Capability, Identity
from enmei.visor.logs import rotate, tail_lines

__all__ = ["ENV_SUPERVISOR", "ENV_UNIT", "ProcessBackend", "port_owner"]

ENV_UNIT = "ENMEI_UNIT"
ENV_SUPERVISOR = "ENMEI_SUPERVISOR"

log = logging.getLogger(__name__)

_CREATE_TIME_TOLERANCE_S = 0.05


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
    done: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class ProcessBackend(Backend):
    kind: ClassVar[str] = "process"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS, Capability.LOGS})

    def __init__(self, *, clock: Any, state_dir: Path, emit: Any, base_dir: Path | None = None) -> None:
        super().__init__(clock=clock, state_dir=state_dir, emit=emit)
        self.base_dir = base_dir or Path.cwd()
        self.log_dir = state_dir / "logs"
        self._units: dict[str, _Running] = {}
        self.instance = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:16]

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self, name: str, spec: Any) -> Identity:
        if not isinstance(spec, ProcessUnit):
            raise StartError(name, "start", f"not a process unit: {type(spec).__name__}")
        if name in self._units:
            raise StartError(name, "start", f"already running as pid {self._units[name].identity.pid}")
        for addr in spec.listen:
            _check_free(name, addr)
        cwd = (self.base_dir / spec.cwd).resolve() if spec.cwd else self.base_dir
        env = dict(os.environ) if spec.inherit_env else {}
        env.update(spec.env)
        # Marks of origin, inherited by the whole group: a supervisor killed before it saved this
        # unit's identity finds it again by them (``recover``), instead of starting a duplicate.
        env[ENV_UNIT] = name
        env[ENV_SUPERVISOR] = self.instance
        self.log_dir.mkdir(parents=True, exist_ok=True)
        out_fd = os.open(self._log_file(name, "stdout"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        err_fd = os.open(self._log_file(name, "stderr"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            pid, popen, pidfd, proc, create_time = self._spawn(name, spec, cwd, env, out_fd, err_fd)
        finally:
            os.close(out_fd)
            os.close(err_fd)
        identity = Identity(unit=name, backend=self.kind, pid=pid, create_time=create_time,
                            started_wall=self.clock.wall(), extra={"pgid": pid})
        self._units[name] = run = _Running(identity, pidfd, popen, proc, spec, self.clock.monotonic())
        self._watch(name, run)
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(),
                            {"pid": pid, "command": list(spec.command)}))
        return identity

    async def adopt(self, name: str, spec: Any, identity: Identity) -> bool:
        if not isinstance(spec, ProcessUnit) or name in self._units:
            return False
        pinned = self._pin(identity)
        if pinned is None:
            return False
        pidfd, proc = pinned
        self._units[name] = run = _Running(identity, pidfd, None, proc, spec, self.clock.monotonic())
        self._watch(name, run)
        self.emit(UnitEvent(name, UnitEventKind.ADOPTED, self.clock.monotonic(), {"pid": identity.pid}))
        return True

    async def recover(self, name: str, spec: Any) -> Identity | None:
        """Adopt the leader of a group this supervisor's state dir started for ``name``, found by its
        environment marks. If there are several (a start repeated across a crash), the oldest is kept
        and the others are ended (SIGKILL to their groups)."""
        if not isinstance(spec, ProcessUnit) or name in self._units:
            return None
        found = self._find_marked(name)
        if not found:
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
        """(pid, create time) of session leaders carrying this supervisor's marks for ``name``."""
        out: list[tuple[int, float]] = []
        for proc in psutil.process_iter(["pid"]):
            try:
                pid = proc.pid
                if os.getsid(pid) != pid:
                    continue  # not a leader: a child of a unit carries the marks too
                env = proc.environ()
                ours = env.get(ENV_UNIT) == name and env.get(ENV_SUPERVISOR) == self.instance
                if ours and proc.status() != psutil.STATUS_ZOMBIE:
                    out.append((pid, proc.create_time()))
            except (psutil.Error, OSError):
                continue
        return out

    async def stop(self, name: str, *, timeout_s: float) -> None:
        run = self._units.get(name)
        if run is None:
            return
        run.stopping = True
        self._signal_group(run, signal.SIGTERM)
        if await self._wait_done(run, timeout_s):
            return
        log.warning("unit %s did not stop within %.1fs of SIGTERM: SIGKILL", name, timeout_s)
        self._signal_group(run, signal.SIGKILL)
        if await self._wait_done(run, 5.0):
            return
        raise StopError(name, "stop", f"pid {run.identity.pid} survived SIGKILL for 5 s")

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
        """Rotate log files past their size (copy, then truncate: the writer keeps its O_APPEND fd)."""
        for name, run in list(self._units.items()):
            for stream in ("stdout", "stderr"):
                rotate(self._log_file(name, stream), int(run.spec.log.max_bytes), run.spec.log.keep)

    # -- internals ---------------------------------------------------------------------------------

    def _log_file(self, name: str, stream: str) -> Path:
        return self.log_dir / f"{name}.{stream}.log"

    def _on_exit(self, name: str, run: _Running) -> None:
        """The unit's leader ended: reap it, end its stragglers, tell the engine."""
        self._unwatch(run)
        code, sig = self._reap(run)
        if self._units.get(name) is run:
            del self._units[name]
        self._end_group(run)
        uptime = self.clock.monotonic() - run.started_mono
        detail: dict[str, Any] = {"pid": run.identity.pid, "code": code,
                                  "signal": signal.Signals(sig).name if sig else None,
                                  "uptime_s": round(uptime, 3)}
        if not run.stopping:
            detail["stderr_tail"] = tail_lines(self._log_file(name, "stderr"), 5)
        if not run.done.done():
            run.done.set_result(detail)
        kind = UnitEventKind.STOPPED if run.stopping else UnitEventKind.EXITED
        self.emit(UnitEvent(name, kind, self.clock.monotonic(), detail))

    async def _wait_done(self, run: _Running, timeout_s: float) -> bool:
        try:
            await within(self.clock, asyncio.shield(run.done), timeout_s)
        except TimeoutError:
            return False
        return True

    # -- the operating-system edge (a fake backend overrides only these) ---------------------------

    def _spawn(self, name: str, spec: ProcessUnit, cwd: Path, env: dict[str, str], out_fd: int,
               err_fd: int) -> tuple[int, subprocess.Popen[bytes] | None, int, psutil.Process | None, float]:
        """Start the command in a new session; returns (pid, popen, pidfd, psutil handle, create time)."""
        try:
            popen = subprocess.Popen(
                spec.command, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out_fd, stderr=err_fd,
                start_new_session=True, close_fds=True,
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
        """(exit code, signal number) of an ended process; both None for an adopted one."""
        if run.popen is None:
            return None, None
        rc = run.popen.wait()
        return (None, -rc) if rc < 0 else (rc, None)

    def _end_group(self, run: _Running) -> None:
        """End what the leader left in its group (a unit is its whole group)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.identity.pid, signal.SIGKILL)

    def _stats(self, run: _Running) -> dict[str, float]:
        assert run.proc is not None
        try:
            return process_stats(run.proc)
        except psutil.Error as exc:
            raise VisorError(run.identity.unit, "stats", str(exc)) from exc

    def _signal_group(self, run: _Running, sig: signal.Signals) -> None:
        """Signal the unit's process group, after checking through the pidfd that the leader is ours."""
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


def process_stats(proc: psutil.Process) -> dict[str, float]:
    """Resource use of one process; names carry units. Missing counters are left out."""
    out: dict[str, float] = {}
    with proc.oneshot():
        try:
            mem = proc.memory_info()
            out["rss_bytes"] = float(mem.rss)
            out["vms_bytes"] = float(mem.vms)
            out["cpu_percent"] = proc.cpu_percent(None)
            out["num_threads"] = float(proc.num_threads())
            out["num_fds"] = float(proc.num_fds())
            io = proc.io_counters()
            out["read_bytes"] = float(io.read_bytes)
            out["write_bytes"] = float(io.write_bytes)
        except (psutil.AccessDenied, AttributeError):
            pass
    return out


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


def port_owner(port: int) -> tuple[int, str] | None:
    """(pid, name) of the process listening on ``port``, if it can be found."""
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                try:
                    return conn.pid, psutil.Process(conn.pid).name()
                except psutil.Error:
                    return conn.pid, "?"
    except (psutil.AccessDenied, OSError):
        return None
    return None
