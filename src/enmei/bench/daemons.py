"""``enmei bench daemons``: real nginx, Redis and PostgreSQL under enmei, supervisord and Monit (issue 12).

For each daemon × fault × supervisor, ``repeats`` times (interleaved: each repeat runs every supervisor
once, in an order turned by one each repeat), a fresh daemon (``enmei.daemons.prepare``, a
new temp dir and port) is run by a fresh supervisor (``enmei.bench.daemons_peers``); once the supervisor
holds it up and the client is answered, one fault is made:

* ``kill``: SIGKILL of the daemon's main process (nginx's master, the postmaster, redis-server).
* ``hang``: SIGSTOP of every process of the daemon (it accepts connections into the backlog, answers none).
* ``slow_start_crash``: the start wrapper is made slow (4 s of sleep before the daemon, under every
  supervisor the same), the main process is SIGKILLed (not timed), and once the supervisor's new start
  has been sleeping 1.5 s, that starting process is SIGKILLed: the fault. The next start is slow too.
* ``broken_config``: the daemon's config is made invalid (``Daemon.break_config``) and its main process
  SIGKILLed: every restart fails. ``FIX_AFTER_S`` after the fault the operator puts the config back and
  starts it the natural way of the tool (``EnmeiDriver.operator_start`` etc.).

Throughout, a client makes one request every 50 ms (``Daemon.request``, timeout 1 s; a request that
takes longer delays the next). Figures of one repeat:

* ``detect_s``: fault → the supervisor's first reaction: the first new line naming the unit in its
  log (enmei's ``--plain`` journal lines, supervisord's and Monit's log files, each read as it is
  written, every 20 ms) or, seen by a /proc scan every 100 ms, a new process of the daemon (a restart)
  or, for a hang, one of the stopped processes continued or gone.
* ``back_s``: fault → the first successful request after it. After ``kill``, ``slow_start_crash`` and
  ``broken_config`` a success counts only while no process of the instance from before the fault is
  alive: a SIGKILLed nginx master leaves its workers serving on the inherited socket, which is not a
  recovery (the supervisor's new master cannot even bind then). None if not back within ``WAIT_S``.
* ``failed_requests``: failed requests from the fault until 1 s after ``back_s`` (or ``WAIT_S``);
  ``stale_answers``: those answered while the instance from before the fault was still alive (not
  counted as failed, nor as back).
* ``leftover_processes``: processes of the daemon alive once the supervisor has been stopped its natural
  way: found by a /proc scan for the daemon's program names (and the wrapper) with the temp dir in the
  command line or working directory, and by every (pid, start time) seen during the repeat. The bench
  then kills them (SIGCONT, SIGKILL by pid) so that the next repeat starts clean.

Summary (``summarize``): ``cells``, ``all_recovered`` (enmei recovered in every repeat of every cell),
``leftover_processes`` (enmei's total; every supervisor's in ``leftover_processes_by_supervisor``),
``cells_peer_recovered`` (cells where supervisord or Monit recovered in every repeat),
``enmei_not_slower_cells`` (of those, the cells where enmei's median ``back_s`` ≤ the best such peer's
median), ``enmei_not_slower_within_resolution_cells`` (≤ the best peer's median + ``resolution_s``, the
client's request interval: ``back_s`` is the first answered request, so two supervisors whose daemons come
back within one interval of each other cannot be told apart by it),
``postgres_hang_back_s_max`` (enmei; None if a repeat did not recover). Every supervisor,
daemon and temp dir is removed at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from enmei.bench.daemons_peers import DRIVERS, Driver, write_wrapper
from enmei.bench.daemons_watch import (
    REQUEST_EVERY_S,
    REQUEST_TIMEOUT_S,
    STALE,
    Client,
    LogTail,
    Loop,
    Proc,
    ProcWatch,
    alive,
    main_process,
    reap_orphans,
    scan,
    signal_proc,
    subreaper,
)
from enmei.daemons import Daemon, kinds, prepare

__all__ = ["DAEMONS", "FAULTS", "FIX_AFTER_S", "GOAL_PG_HANG_S", "SUPERVISORS", "WAIT_S", "Repeat", "run",
           "run_cell", "summarize"]

DAEMONS = ("nginx", "redis", "postgresql")
FAULTS = ("kill", "hang", "slow_start_crash", "broken_config")
SUPERVISORS = ("enmei", "supervisord", "monit")
PEERS = ("supervisord", "monit")
WAIT_S = 30.0  # fault -> back; not back by then: not recovered
FIX_AFTER_S = 10.0  # broken_config: the operator's fix and start this long after the fault
STEADY_S = 90.0  # a fresh supervisor must hold its daemon up within this
GOAL_PG_HANG_S = 5.0


# -- one repeat ------------------------------------------------------------------------------------

@dataclass
class Repeat:
    """The figures of one repeat (see the module docstring); ``error`` if it could not be measured."""

    detect_s: float | None = None
    back_s: float | None = None
    failed_requests: int = 0
    stale_answers: int = 0
    leftover_processes: int = 0
    detect_by: str = ""  # "log" (the supervisor's first line naming the unit) or "processes" (/proc)
    reaction: str = ""
    operator: str = ""
    error: str = ""
    config: str = ""

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"detect_s": self.detect_s, "back_s": self.back_s,
                               "failed_requests": self.failed_requests, "stale_answers": self.stale_answers,
                               "leftover_processes": self.leftover_processes}
        for k in ("detect_by", "reaction", "operator", "error"):
            if getattr(self, k):
                out[k] = getattr(self, k)
        return out


def _wait(cond: Callable[[], bool], timeout_s: float, every_s: float = 0.05) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(every_s)
    return cond()


@dataclass
class _Rig:
    d: Daemon
    driver: Driver
    program: str
    comms: frozenset[str]
    watch: ProcWatch
    tail: LogTail
    client: Client
    loops: list[Loop] = field(default_factory=list)

    def procs(self) -> dict[int, Proc]:
        return scan(self.d.root, self.comms)


@contextlib.contextmanager
def _rig(daemon: str, supervisor: str, parent: Path) -> Iterator[_Rig]:
    d = prepare(daemon, parent)
    # The kit's PostgreSQL cluster is made with initdb --no-sync: ~40 MB of it would still be dirty in the
    # page cache, and the crash recovery after a kill fsyncs the whole data dir — 0.3 to 3 s by how much
    # the kernel happened to write back meanwhile. Written out here, before any supervisor runs, so every
    # supervisor's daemon recovers from the same state (not timed).
    os.sync()
    rig: _Rig | None = None
    try:
        wrapper = write_wrapper(d)
        driver = DRIVERS[supervisor](d, wrapper)
        program = Path(d.argv[0]).name
        comms = frozenset({program[:15], wrapper.name[:15]})
        rig = _Rig(d, driver, program, comms, ProcWatch(d.root, comms),
                   LogTail(driver.reaction_log(), d.kind), Client(d.request))
        yield rig
    finally:
        if rig is not None:
            for loop in rig.loops:
                loop.stop()
            rig.driver.stop()
            _kill_all(rig)
            reap_orphans(rig.comms)
        d.cleanup()


def _leftovers(rig: _Rig) -> list[Proc]:
    found = {(p.pid, p.start): p for p in rig.procs().values()}
    for p in rig.watch.every_seen():
        if alive(p):
            found[(p.pid, p.start)] = p
    return list(found.values())


def _kill_all(rig: _Rig) -> None:
    """SIGCONT and SIGKILL, by pid, whatever of the daemon is left; wait (bounded) until it is gone."""
    for _ in range(5):
        left = _leftovers(rig)
        if not left:
            return
        for p in left:
            signal_proc(p, signal.SIGCONT)
            signal_proc(p, signal.SIGKILL)
        reap_orphans(rig.comms)
        _wait(lambda left=left: not any(alive(p) for p in left), 10.0)  # type: ignore[misc]


def _arm(rig: _Rig, procs: dict[int, Proc]) -> None:
    """Before a fault that ends the daemon's instance: from now on a success counts only once none of
    ``procs`` is alive (armed before the fault: a request answered an instant after it must not count)."""
    old = list(procs.values())
    rig.client.accept = lambda: not any(alive(p) for p in old)
    rig.watch.mark(procs)
    rig.tail.mark()


def _fault(rig: _Rig, fault: str, r: Repeat) -> float:
    """Make ``fault``; its instant (monotonic)."""
    procs = rig.procs()
    main = main_process(procs, rig.program)
    if main is None:
        raise RuntimeError(f"no main {rig.program} process among {sorted(procs)}")
    if fault == "kill":
        _arm(rig, procs)
        t0 = time.monotonic()
        os.kill(main.pid, signal.SIGKILL)
        return t0
    if fault == "hang":
        rig.watch.mark(procs, list(procs.values()))
        rig.tail.mark()
        t0 = time.monotonic()
        for p in procs.values():
            signal_proc(p, signal.SIGSTOP)
        return t0
    if fault == "slow_start_crash":
        (rig.d.root / "slow").touch()
        os.kill(main.pid, signal.SIGKILL)
        wrapper = rig.driver.wrapper.name[:15]
        starting: list[Proc] = []

        def restarted() -> bool:
            starting[:] = [p for p in rig.procs().values() if p.comm == wrapper]
            return bool(starting)

        if not _wait(restarted, WAIT_S):
            raise RuntimeError(f"the supervisor did not start {rig.d.kind} again within {WAIT_S:g} s "
                               "of the first kill (before the timed crash)")
        time.sleep(1.5)  # well inside the 4 s slow start
        procs = rig.procs()
        _arm(rig, procs)
        t0 = time.monotonic()
        for p in starting:
            signal_proc(p, signal.SIGKILL)
        return t0
    if fault == "broken_config":
        rig.d.break_config()
        _arm(rig, procs)
        t0 = time.monotonic()
        os.kill(main.pid, signal.SIGKILL)
        return t0
    raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")


def run_cell(daemon: str, fault: str, supervisor: str, parent: Path) -> Repeat:
    """One repeat of one cell in a new directory beneath ``parent``; never raises for a failed measurement
    (``Repeat.error`` says what went wrong); everything it started is gone when it returns."""
    r = Repeat()
    try:
        with _rig(daemon, supervisor, parent) as rig:
            r.config = rig.driver.shown_config()
            _measure(rig, fault, r)
    except Exception as exc:  # one cell's failure is a figure, the others go on
        r.error = r.error or f"{type(exc).__name__}: {exc}"[:600]
    return r


def _measure(rig: _Rig, fault: str, r: Repeat) -> None:
    rig.driver.start()
    rig.loops = [rig.watch, rig.tail, rig.client]
    for loop in rig.loops:
        loop.start()
    def steady() -> bool:
        if not rig.driver.alive():
            raise RuntimeError(f"{rig.driver.name} ended before it held {rig.d.kind} up: {rig.driver.log_tail(600)}")
        return rig.client.ok_streak(5) and rig.driver.steady()

    if not _wait(steady, STEADY_S, 0.2):
        r.error = (f"{rig.driver.name} did not hold {rig.d.kind} up within {STEADY_S:g} s: "
                   f"{rig.driver.log_tail(600)}")
        return
    time.sleep(0.5)
    t0 = _fault(rig, fault, r)
    fixed = False
    end = t0 + WAIT_S
    back: float | None = None
    while time.monotonic() < end:
        if fault == "broken_config" and not fixed and time.monotonic() >= t0 + FIX_AFTER_S:
            rig.d.fix_config()
            r.operator = f"at {time.monotonic() - t0:.2f} s: {rig.driver.operator_start()}"[:400]
            fixed = True
        oks = [x for x in rig.client.since(t0) if x[2]]
        if oks:
            back = oks[0][1]
            break
        # the operator's fix comes FIX_AFTER_S after the fault to the millisecond under every supervisor
        wake = 0.05 if fixed or fault != "broken_config" else min(0.05, t0 + FIX_AFTER_S - time.monotonic())
        time.sleep(max(0.0, wake))
    if back is not None:
        time.sleep(1.0)
    done = rig.client.since(t0)
    until = (back + 1.0) if back is not None else end
    r.back_s = None if back is None else round(back - t0, 3)
    r.failed_requests = sum(1 for x in done if not x[2] and x[3] != STALE and x[0] <= until)
    r.stale_answers = sum(1 for x in done if x[3] == STALE and x[0] <= until)
    detect = [(t, by) for t, by in ((rig.tail.first, "log"), (rig.watch.reaction(), "processes")) if t is not None]
    if detect:
        t, r.detect_by = min(detect)
        r.detect_s = round(t - t0, 3)
    r.reaction = rig.tail.first_line
    with contextlib.suppress(FileNotFoundError):
        (rig.d.root / "slow").unlink()
    if fault == "broken_config" and not fixed:
        rig.d.fix_config()
    rig.client.stop()
    rig.tail.stop()
    rig.driver.stop()  # the watch goes on meanwhile: it reaps what is orphaned to the bench, as init would
    rig.watch.stop()
    reap_orphans(rig.comms)
    left = _leftovers(rig)
    r.leftover_processes = len(left)
    if left:
        r.reaction = (r.reaction + f" | left: {', '.join(f'{p.pid} {p.comm} {p.state}' for p in left)}")[:600]


# -- the summary -----------------------------------------------------------------------------------

def _median(xs: Sequence[float | int | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 3) if vals else None


def cell_summary(daemon: str, fault: str, supervisor: str, repeats: Sequence[Repeat]) -> dict[str, Any]:
    """One row of the table: every repeat's figures and their medians; ``recovered`` only if every
    repeat came back (a repeat that could not be measured counts as not recovered)."""
    back = [x.back_s for x in repeats]
    recovered = bool(repeats) and all(b is not None and not x.error for b, x in zip(back, repeats, strict=True))
    return {"daemon": daemon, "fault": fault, "supervisor": supervisor, "repeats": len(repeats),
            "recovered": recovered,
            "median_detect_s": _median([x.detect_s for x in repeats]),
            "median_back_s": _median(back) if recovered else None,
            "median_failed_requests": _median([x.failed_requests for x in repeats]),
            "leftover_processes": sum(x.leftover_processes for x in repeats),
            "detect_s": [x.detect_s for x in repeats], "back_s": back,
            "failed_requests": [x.failed_requests for x in repeats],
            "stale_answers": [x.stale_answers for x in repeats],
            "leftovers": [x.leftover_processes for x in repeats],
            "runs": [x.as_dict() for x in repeats]}


def summarize(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The summary of the table ``cells`` (rows of ``cell_summary``); see the module docstring.

    A cell here is one (daemon, fault): enmei's row is compared with the rows of the peers that
    recovered in every repeat (``back_s`` medians; a tie counts as not slower)."""
    by_sup: dict[str, int] = {}
    for c in cells:
        by_sup[c["supervisor"]] = by_sup.get(c["supervisor"], 0) + int(c["leftover_processes"])
    enmei = {(c["daemon"], c["fault"]): c for c in cells if c["supervisor"] == "enmei"}
    peer_recovered: list[str] = []
    not_slower: list[str] = []
    slower: list[str] = []
    within: list[str] = []
    for key, e in enmei.items():
        peers = [c for c in cells if (c["daemon"], c["fault"]) == key and c["supervisor"] in PEERS and c["recovered"]]
        if not peers:
            continue
        name = f"{key[0]}/{key[1]}"
        peer_recovered.append(name)
        best = min(float(c["median_back_s"]) for c in peers)
        if e["recovered"] and e["median_back_s"] is not None and e["median_back_s"] <= best:
            not_slower.append(name)
        else:
            slower.append(name)
        if e["recovered"] and e["median_back_s"] is not None and e["median_back_s"] <= best + REQUEST_EVERY_S:
            within.append(name)
    pg_hang = [b for c in enmei.values() if c["daemon"] == "postgresql" and c["fault"] == "hang" for b in c["back_s"]]
    pg_max = None if not pg_hang or any(b is None for b in pg_hang) else max(pg_hang)
    all_recovered = bool(enmei) and all(c["recovered"] for c in enmei.values())
    leftovers = by_sup.get("enmei", 0)
    return {"cells": list(cells), "all_recovered": all_recovered, "leftover_processes": leftovers,
            "leftover_processes_by_supervisor": by_sup,
            "cells_peer_recovered": len(peer_recovered), "enmei_not_slower_cells": len(not_slower),
            "resolution_s": REQUEST_EVERY_S, "enmei_not_slower_within_resolution_cells": len(within),
            "peer_recovered": peer_recovered, "enmei_slower": slower,
            "postgres_hang_back_s_max": pg_max,
            "goals_met": {"all_recovered": all_recovered, "not_slower": not slower and bool(enmei),
                          "not_slower_within_resolution": len(within) == len(peer_recovered) and bool(enmei),
                          "no_leftovers": leftovers == 0,
                          "postgres_hang_le_5s": pg_max is not None and pg_max <= GOAL_PG_HANG_S}}


# -- the run ---------------------------------------------------------------------------------------

def _pick(given: Sequence[str] | None, known: Sequence[str], what: str) -> tuple[str, ...]:
    if not given:
        return tuple(known)
    unknown = [g for g in given if g not in known]
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return tuple(dict.fromkeys(given))  # in the order given (a run can start with the slowest daemon)


def run(repeats: int = 3, daemons: Sequence[str] | None = None, faults: Sequence[str] | None = None,
        supervisors: Sequence[str] | None = None,
        progress: Callable[[str], None] | None = None, parent: Path | None = None) -> dict[str, Any]:
    """The whole table (or the subset asked for) and its summary; its temp dir is made beneath ``parent``
    (default: the system's temp dir; it must be open to the daemons' users) and removed at the end.
    ``ValueError`` for an unknown name or ``repeats`` < 1. A SIGTERM ends it like Ctrl-C: the repeat
    under way is cleaned up, then it raises ``KeyboardInterrupt``."""
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, not {repeats}")
    ds = _pick(daemons, [k for k in DAEMONS if k in kinds()], "daemons")
    fs = _pick(faults, FAULTS, "faults")
    ss = _pick(supervisors, SUPERVISORS, "supervisors")
    for s in ss:
        if s != "enmei" and shutil.which(s) is None:
            raise ValueError(f"{s} is not installed (Debian package {'supervisor' if s == 'supervisord' else s})")
    old = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        old = signal.signal(signal.SIGTERM, _term)
    # The daemon's user must reach its files: a parent open to others (not a 0700 pytest tmp_path).
    tmp = Path(tempfile.mkdtemp(prefix="enmei-bench-daemons-", dir=parent))
    tmp.chmod(0o755)
    t_start = time.monotonic()
    try:
        with subreaper():
            return _run(tmp, repeats, ds, fs, ss, progress, t_start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _run(tmp: Path, repeats: int, ds: Sequence[str], fs: Sequence[str], ss: Sequence[str],
         progress: Callable[[str], None] | None, t_start: float) -> dict[str, Any]:
    cells: list[dict[str, Any]] = []
    configs: dict[str, dict[str, str]] = {}
    for daemon in ds:
        for fault in fs:
            reps: dict[str, list[Repeat]] = {sup: [] for sup in ss}
            # Interleaved, the order turned by one each repeat: a slow spell of the machine falls on every
            # supervisor alike, not on whichever ran its three repeats then.
            for i in range(repeats):
                for sup in [*ss[i % len(ss):], *ss[:i % len(ss)]]:
                    rep = run_cell(daemon, fault, sup, tmp)
                    reps[sup].append(rep)
                    configs.setdefault(daemon, {}).setdefault(sup, rep.config)
                    if progress is not None:
                        progress(f"{daemon} {fault} {sup} #{i + 1}: back_s={rep.back_s} detect_s={rep.detect_s}"
                                 f" failed={rep.failed_requests} left={rep.leftover_processes}"
                                 + (f" error={rep.error[:200]}" if rep.error else ""))
            cells.extend(cell_summary(daemon, fault, sup, reps[sup]) for sup in ss)
    out = summarize(cells)
    out.update({"repeats": repeats, "wait_s": WAIT_S, "fix_after_s": FIX_AFTER_S,
                "request_every_s": REQUEST_EVERY_S, "request_timeout_s": REQUEST_TIMEOUT_S,
                "configs": configs, "seconds": round(time.monotonic() - t_start, 1)})
    return out
