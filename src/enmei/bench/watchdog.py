"""``enmei bench watchdog``: kill -9 the watched enmei at random moments; ``enmei watch`` brings it back.

The rig of ``enmei bench crash`` (two demo services probed every 0.2 s and a unit that crashes every
0.1–0.8 s, so restarts are always under way) runs under a real ``enmei up``, watched by a real
``python -m enmei.watch``. At each of ``kills`` random moments (every other one just after a service
was killed, so the supervisor dies in the middle of its repair) the bench SIGKILLs whichever enmei holds
the state dir — nobody but the watcher starts it again. Measured for each kill:

* ``detected_s``: from the kill to the watcher's decision to restart (``detected_wall`` of its report,
  as the new enmei journals it);
* ``relocked_s``: from the kill to a new enmei holding the state dir's lock (its Python start-up);
* ``restored_s``: from the kill to a new enmei answering ``status`` on its ctl socket with every unit
  adopted or started.

Counted over the run (as ``enmei bench crash`` counts them): ``lost_records`` (durable when the enmei
died, missing or changed afterwards), ``duplicate_remedies`` (a decision whose remedy started twice, or
two instances of a unit), ``unadopted_units``, ``verify_failures``, and ``missing_reports`` (a restart
the new enmei did not journal as the watcher's).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from enmei.bench.crash import _UNITS, _Run
from enmei.box import Reader
from enmei.ctl.client import request
from enmei.ctl.protocol import CtlError
from enmei.watch.files import lock_holder, read_json

__all__ = ["GOALS", "run"]

GOALS = {"detected_median_s": 2.0, "lost_records": 0, "duplicate_remedies": 0}


class _Watched(_Run):
    """``enmei bench crash``'s rig, where a watcher, not the bench, restarts the supervisor."""

    def __init__(self, workdir: Path, rng: random.Random) -> None:
        super().__init__(workdir, rng)
        self.lock = self.loaded.state_dir / "enmei.lock"
        self.watcher: subprocess.Popen[bytes] | None = None

    def watch(self) -> None:
        log = open(self.workdir / "watch.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.watcher = subprocess.Popen([sys.executable, "-m", "enmei.watch", str(self.cfg), "--name", "bench"],
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def follows(self, pid: int) -> bool:
        reg = read_json(self.loaded.state_dir / "watch" / "bench.json") or {}
        return reg.get("enmei_pid") == pid

    def restored(self, old: int) -> bool:
        """A new enmei answers status with every unit it should run (adopted or started)."""
        pid = lock_holder(self.lock)
        if pid is None or pid == old:
            return False
        try:
            answer = request(self.loaded.state_dir, {"op": "status"}, timeout_s=2.0)
        except CtlError:
            return False
        units = {u["name"]: u for u in answer.get("units", [])}
        return answer.get("pid") == pid and all(units.get(u, {}).get("pid") for u in _UNITS)

    def report_for(self, old: int) -> dict[str, Any] | None:
        with Reader(self.journal) as r:
            for rec in reversed(r.tail(200, kinds=["supervisor"])):
                d = rec.data()
                if d.get("event") == "watch.report" and d.get("old_pid") == old and d.get("action") == "restarted":
                    return d
        return None

    def stop(self) -> None:
        if self.watcher is not None and self.watcher.poll() is None:
            self.watcher.terminate()
            try:
                self.watcher.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.watcher.kill()
                self.watcher.wait()
        super().stop()  # the first enmei (ours), if it still runs
        pid = lock_holder(self.lock)  # the one the watcher started
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + 30
            while lock_holder(self.lock) == pid and time.monotonic() < end:
                time.sleep(0.05)
            if lock_holder(self.lock) == pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def _wait(pred: Any, timeout_s: float, every_s: float = 0.01) -> bool:
    end = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(every_s)
    return True


def _median(xs: list[float]) -> float | None:
    return round(statistics.median(xs), 3) if xs else None


def run(kills: int = 20, seed: int = 0, keep: bool = False) -> dict[str, Any]:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="enmei-bench-watchdog-"))
    bench = _Watched(tmp, rng)
    t0 = time.monotonic()
    detected: list[float] = []
    restored: list[float] = []
    relocked: list[float] = []
    mid_remedy = missing = 0
    try:
        bench.start()
        pid = int(lock_holder(bench.lock) or 0)
        bench.watch()
        if not _wait(lambda: bench.follows(pid), 60, 0.05):
            raise RuntimeError(f"the watcher does not follow enmei pid {pid}; see {tmp / 'watch.log'}")
        for i in range(kills):
            time.sleep(rng.uniform(0.3, 1.5))
            if i % 2 == 0:  # a service killed: the supervisor dies while it repairs it
                bench.kill_a_unit()
                time.sleep(rng.uniform(0.0, 0.25))
                mid_remedy += 1
            old = int(lock_holder(bench.lock) or 0)
            t_kill = time.time()
            os.kill(old, signal.SIGKILL)
            if bench.proc is not None and bench.proc.pid == old:
                bench.proc.wait()  # our child: reaped (the watcher reaps the ones it starts)
            bench.snapshot_durable()  # what a reader sees now was committed before the death
            if _wait(lambda o=old: lock_holder(bench.lock) not in (None, o), 120, 0.01):
                relocked.append(time.time() - t_kill)
            if not _wait(lambda o=old: bench.restored(o), 120, 0.02):
                bench.notes.append(f"kill {i}: no enmei back within 120 s")
                break
            restored.append(time.time() - t_kill)
            new = int(lock_holder(bench.lock) or 0)
            if not _wait(lambda o=old: bench.report_for(o) is not None, 30, 0.05):
                missing += 1
                bench.notes.append(f"kill {i}: the new enmei journaled no report of the watcher's restart")
            else:
                report = bench.report_for(old) or {}
                detected.append(float(report["detected_wall"]) - t_kill)
            _wait(lambda n=new: bench.follows(n), 30, 0.02)
            bench.check_durable()
            bench.check_verify()
            bench.check_adoption()
        bench.stop()
        bench.snapshot_durable()
        bench.check_durable()
        bench.check_verify()
        bench.check_remedies()
        with Reader(bench.journal) as r:
            records = r.count()
        result: dict[str, Any] = {
            "kills": len(restored), "detected_median_s": _median(detected),
            "detected_max_s": round(max(detected), 3) if detected else None,
            "relocked_median_s": _median(relocked),
            "restored_median_s": _median(restored), "restored_max_s": round(max(restored), 3) if restored else None,
            **bench.counts, "missing_reports": missing, "mid_remedy_kills": mid_remedy,
            "journal_records": records, "seconds": round(time.monotonic() - t0, 1), "notes": bench.notes[:20]}
        result["goals_met"] = bool(
            result["kills"] == kills and result["detected_median_s"] is not None
            and result["detected_median_s"] <= GOALS["detected_median_s"]
            and result["lost_records"] == 0 and result["duplicate_remedies"] == 0 and missing == 0)
        return result
    finally:
        bench.cleanup()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
