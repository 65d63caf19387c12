"""A fake process backend for unit tests: the real ``ProcessBackend`` with only its OS edge simulated.

Everything above the edge — identities, the exit path, stop with SIGTERM then SIGKILL, adoption, the
events it emits — is the real code. Simulated processes live in ``world`` (shared by every instance, so
a new backend can adopt what an old one started, as after a supervisor restart). Time is the injected
clock's, so tests drive it with ``FakeClock``.

Fault hooks: ``crash(name, code=, sig=)``, ``fail_starts`` (the next N starts fail), ``die_after_s`` (each
new instance dies that long after starting), ``ignore_term`` (SIGTERM does nothing), ``leak_bytes_per_s``.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from enmei.config.model import ProcessUnit
from enmei.errors import StartError
from enmei.visor.base import Identity
from enmei.visor.cage import ResourceCage
from enmei.visor.process import Launch, ProcessBackend, _Running

__all__ = ["FakeBackend", "SimProcess"]


#: signals whose default action does not end a process (a stop sends SIGCONT after its stop signal)
_HARMLESS = frozenset({signal.SIGCONT, signal.SIGCHLD, signal.SIGWINCH, signal.SIGURG})


@dataclass
class SimProcess:
    pid: int
    create_time: float
    started_mono: float
    alive: bool = True
    code: int | None = None
    sig: int | None = None
    ignore_term: bool = False
    rss: float = 50e6
    unit: str = ""
    instance: str = ""


class FakeBackend(ProcessBackend):
    world: ClassVar[dict[int, SimProcess]] = {}
    _pids: ClassVar[itertools.count[int]] = itertools.count(100_000)

    def __init__(self, *, clock: Any, state_dir: Path, emit: Any, base_dir: Path | None = None) -> None:
        super().__init__(clock=clock, state_dir=state_dir, emit=emit, base_dir=base_dir)
        self.fail_starts = 0
        self.die_after_s: float | None = None
        self.ignore_term = False
        self.leak_bytes_per_s = 0.0
        self.spawned: list[int] = []
        self._timers: set[asyncio.Task[None]] = set()

    # -- fault hooks -------------------------------------------------------------------------------

    def crash(self, name: str, *, code: int | None = None, sig: int | None = signal.SIGKILL) -> None:
        """The unit's process dies now (by ``sig``, or exits with ``code`` if given)."""
        run = self._units.get(name)
        if run is None:
            return
        proc = self.world[run.identity.pid]
        self._die(proc, code=code, sig=None if code is not None else sig)
        asyncio.get_running_loop().call_soon(self._on_exit, name, run)

    # -- the simulated OS edge ---------------------------------------------------------------------

    def _spawn(self, name: str, spec: ProcessUnit, cwd: Path, env: dict[str, str], out_fd: int,
               err_fd: int, launch: Launch) -> tuple[int, None, int, psutil.Process | None, float]:
        if self.fail_starts > 0:
            self.fail_starts -= 1
            raise StartError(name, "start", f"command {spec.command[0]!r} not found (simulated)")
        pid = next(self._pids)
        proc = SimProcess(pid, self.clock.wall(), self.clock.monotonic(), ignore_term=self.ignore_term, unit=name,
                          instance=self.instance)
        self.world[pid] = proc
        self.spawned.append(pid)
        if self.die_after_s is not None:
            self._later(self.die_after_s, name, pid)
        return pid, None, -1, None, proc.create_time

    def _pin(self, identity: Identity) -> tuple[int, psutil.Process | None] | None:
        proc = self.world.get(identity.pid)
        if proc is None or not proc.alive or abs(proc.create_time - identity.create_time) > 0.05:
            return None
        return -1, None

    def _find_marked(self, name: str) -> list[tuple[int, float]]:
        return [(p.pid, p.create_time) for p in self.world.values()
                if p.alive and p.unit == name and p.instance == self.instance]

    def _watch(self, name: str, run: _Running) -> None:
        pass  # exits are delivered by crash() and _signal_group()

    def _unwatch(self, run: _Running) -> None:
        pass

    def _reap(self, run: _Running) -> tuple[int | None, int | None]:
        proc = self.world[run.identity.pid]
        if run.popen is None and proc.pid not in self.spawned:
            return None, None  # adopted: not our child, no exit status
        return proc.code, proc.sig

    def _end_group(self, run: _Running) -> None:
        pass

    def _make_cage(self) -> ResourceCage | None:
        return None  # simulated processes join no cgroup, and helpers of the tests stay uncaged

    async def _end_leftovers(self, name: str, slot: Path | None = None) -> None:
        return None  # simulated processes leave nothing behind (and no cgroup is made)

    def _sweep_marked(self, name: str, keep: int | None = None, slot: str | None = None) -> list[int]:
        return []

    def _stats(self, run: _Running) -> dict[str, float]:
        proc = self.world[run.identity.pid]
        age = self.clock.monotonic() - proc.started_mono
        return {"rss_bytes": proc.rss + self.leak_bytes_per_s * age, "cpu_percent": 1.0, "num_fds": 8.0,
                "num_threads": 2.0}

    def _signal_main(self, run: _Running, sig: signal.Signals) -> None:
        self._signal_group(run, sig)  # a simulated unit is one process

    def _signal_group(self, run: _Running, sig: signal.Signals, *, cgroup: bool = True) -> None:
        proc = self.world.get(run.identity.pid)
        if proc is None or not proc.alive or run.done.done():
            return
        if sig in _HARMLESS or (sig == signal.SIGTERM and proc.ignore_term):
            return
        self._die(proc, code=None, sig=int(sig))
        asyncio.get_running_loop().call_soon(self._on_exit, run.identity.unit, run)

    # -- internals ---------------------------------------------------------------------------------

    @staticmethod
    def _die(proc: SimProcess, *, code: int | None, sig: int | None) -> None:
        proc.alive = False
        proc.code = code
        proc.sig = sig

    def _later(self, delay: float, name: str, pid: int) -> None:
        async def die() -> None:
            await self.clock.sleep(delay)
            run = self._units.get(name)
            if run is not None and run.identity.pid == pid:
                self.crash(name, code=1)

        task = asyncio.get_running_loop().create_task(die())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    async def close(self) -> None:
        for t in list(self._timers):
            t.cancel()
        await super().close()
