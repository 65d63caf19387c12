"""What ``enmei bench daemons`` watches: a daemon's processes in /proc, a supervisor's log as it is
written, and the client's requests — each a thread that ``stop()`` ends (bounded).

Processes are known by (pid, start time), never by a pid alone: a recycled pid is never taken for the
daemon's nor signalled (``alive`` re-checks the start time first).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enmei.daemons import RequestFailed

__all__ = ["REQUEST_EVERY_S", "REQUEST_TIMEOUT_S", "STALE", "Client", "LogTail", "Loop", "Proc", "ProcWatch", "alive",
           "main_process", "reap_orphans", "scan", "signal_proc", "subreaper"]

REQUEST_EVERY_S = 0.05
REQUEST_TIMEOUT_S = 1.0
SCAN_EVERY_S = 0.1
TAIL_EVERY_S = 0.02


# -- processes of a daemon -------------------------------------------------------------------------

@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # start time in clock ticks since boot: (pid, start) is the identity, never a recycled pid
    ppid: int
    comm: str
    state: str


def _stat(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    comm = raw[raw.index("(") + 1:raw.rindex(")")]
    rest = raw[raw.rindex(")") + 2:].split()
    return Proc(pid, int(rest[19]), int(rest[1]), comm, rest[0])


def scan(root: Path, comms: frozenset[str]) -> dict[int, Proc]:
    """The live processes named one of ``comms`` whose command line or working directory holds ``root``."""
    out: dict[int, Proc] = {}
    needle = str(root)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        p = _stat(int(entry))
        if p is None or p.comm not in comms or p.state in ("Z", "X"):
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            mine = needle in cmdline or os.readlink(f"/proc/{entry}/cwd").startswith(needle)
        except OSError:
            continue
        if mine:
            out[p.pid] = p
    return out


def alive(p: Proc) -> bool:
    """Whether the process ``p`` (the same pid *and* start time) still runs (a zombie does not)."""
    now = _stat(p.pid)
    return now is not None and now.start == p.start and now.state not in ("Z", "X")


def main_process(procs: dict[int, Proc], program: str) -> Proc | None:
    """The daemon's main process: named ``program``, its parent not one of the daemon's (the oldest)."""
    cands = [p for p in procs.values() if p.comm == program and p.ppid not in procs]
    return min(cands, key=lambda p: p.start) if cands else None


_ORPHANS = frozenset({"sleep"})  # the start wrapper's sleep, orphaned when the wrapper is killed


def reap_orphans(comms: frozenset[str]) -> int:
    """Reap the zombies among this process's children named one of ``comms`` (or the wrapper's sleep):
    daemons orphaned to the bench (it is a child subreaper during ``run``, as init is for a daemonized
    process on a real host). Only those names: never a child some ``subprocess`` call waits for."""
    reaped = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for pid in kids:
            p = _stat(pid)
            if p is not None and p.state == "Z" and (p.comm in comms or p.comm in _ORPHANS):
                with contextlib.suppress(ChildProcessError, OSError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        reaped += 1
    return reaped


@contextlib.contextmanager
def subreaper() -> Iterator[None]:
    """This process is a child subreaper (``PR_SET_CHILD_SUBREAPER``) inside the block, and no more
    after it. Without it a daemon that Monit's start script daemonized is reparented to PID 1, which on
    the machines this was measured on reaps late: a SIGKILLed redis-server stayed a zombie for ~10 s,
    and Monit (``kill -0`` on its pid) took it for running. Where prctl fails this does nothing."""
    libc: Any = None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        ok = libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        ok = False
    try:
        yield
    finally:
        if ok:
            libc.prctl(36, 0, 0, 0, 0)


def signal_proc(p: Proc, sig: int) -> None:
    """Send ``sig`` to ``p`` if it is still that process (pid and start time)."""
    if alive(p):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, sig)


# -- the watchers ----------------------------------------------------------------------------------

class Loop:
    """A daemon thread calling ``step`` every ``every_s`` until ``stop()``."""

    def __init__(self, every_s: float, name: str) -> None:
        self.every_s = every_s
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        nxt = time.monotonic()
        while not self.halt.is_set():
            self.step()
            nxt += self.every_s
            self.halt.wait(max(0.0, nxt - time.monotonic()))
            nxt = max(nxt, time.monotonic() - self.every_s)  # after a slow step: no burst to catch up

    def step(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self.halt.set()
        self.thread.join(timeout=30)


class ProcWatch(Loop):
    """Scans the daemon's processes; remembers every one seen and, after ``mark``, the first new one and
    the first change of a stopped one."""

    def __init__(self, root: Path, comms: frozenset[str]) -> None:
        super().__init__(SCAN_EVERY_S, "enmei-bench-procs")
        self.root, self.comms = root, comms
        self.lock = threading.Lock()
        self.seen: dict[tuple[int, int], Proc] = {}
        self.before: set[tuple[int, int]] = set()
        self.stopped: set[tuple[int, int]] = set()
        self.seen_stopped: set[tuple[int, int]] = set()
        self.first_new: float | None = None
        self.first_changed: float | None = None
        self.marked = False

    def step(self) -> None:
        reap_orphans(self.comms)
        now = scan(self.root, self.comms)
        t = time.monotonic()
        with self.lock:
            for p in now.values():
                self.seen[(p.pid, p.start)] = p
            if not self.marked:
                return
            ids = {(p.pid, p.start): p for p in now.values()}
            if self.first_new is None and any(k not in self.before for k in ids):
                self.first_new = t
            for k in self.stopped:
                if k in ids and ids[k].state in ("T", "t"):
                    self.seen_stopped.add(k)
            # a stopped process is changed once it is gone, or running again after it was seen stopped
            # (a SIGSTOP takes effect when the process next runs: "not stopped yet" is no reaction)
            if self.first_changed is None and any(
                    k not in ids or (k in self.seen_stopped and ids[k].state not in ("T", "t"))
                    for k in self.stopped):
                self.first_changed = t

    def mark(self, before: dict[int, Proc], stopped: Sequence[Proc] = ()) -> None:
        """From now on, a process not in ``before`` is a reaction, and so is one of ``stopped`` changed."""
        with self.lock:
            self.before = {(p.pid, p.start) for p in before.values()}
            self.stopped = {(p.pid, p.start) for p in stopped}
            self.seen_stopped = set()
            self.first_new = self.first_changed = None
            self.marked = True

    def reaction(self) -> float | None:
        with self.lock:
            times = [t for t in (self.first_new, self.first_changed) if t is not None]
        return min(times) if times else None

    def every_seen(self) -> list[Proc]:
        with self.lock:
            return list(self.seen.values())


class LogTail(Loop):
    """Reads ``path`` as it grows; the arrival time of the first line naming ``unit`` after ``mark``."""

    def __init__(self, path: Path, unit: str) -> None:
        super().__init__(TAIL_EVERY_S, "enmei-bench-log")
        self.path, self.unit = path, unit
        self.offset = 0
        self.partial = b""
        self.since: float | None = None
        self.first: float | None = None
        self.first_line = ""

    def step(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        if not data:
            return
        t = time.monotonic()
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if self.since is None or self.first is not None:
            return
        for raw in lines:
            line = raw.decode(errors="replace")
            if self.unit in line:
                self.first, self.first_line = t, line.strip()[:200]
                return

    def mark(self) -> None:
        self.step()  # what is written before the fault is not a reaction to it
        self.since, self.first, self.first_line = time.monotonic(), None, ""


STALE = "answered by the instance from before the fault"


class Client(Loop):
    """One request every ``REQUEST_EVERY_S``: (sent, done, ok, error) of each."""

    def __init__(self, request: Callable[[float], None]) -> None:
        super().__init__(REQUEST_EVERY_S, "enmei-bench-client")
        self.request = request
        self.lock = threading.Lock()
        self.results: list[tuple[float, float, bool, str]] = []
        self.accept: Callable[[], bool] = lambda: True

    def step(self) -> None:
        t0 = time.monotonic()
        try:
            self.request(REQUEST_TIMEOUT_S)
            ok, err = self.accept(), ""
            if not ok:
                err = STALE
        except RequestFailed as exc:
            ok, err = False, str(exc)[:200]
        except Exception as exc:  # a client's failure of any kind is a failed request
            ok, err = False, f"{type(exc).__name__}: {exc}"[:200]
        with self.lock:
            self.results.append((t0, time.monotonic(), ok, err))

    def since(self, t: float) -> list[tuple[float, float, bool, str]]:
        with self.lock:
            return [r for r in self.results if r[0] >= t]

    def ok_streak(self, n: int) -> bool:
        with self.lock:
            tail = self.results[-n:]
        return len(tail) == n and all(r[2] for r in tail)


