"""enmei's side of ``enmei watch``: its heartbeat, the watchers' reports journaled, a ``--mutual`` watcher
restarted (started next to the engine by ``enmei.engine.run``; see ``enmei.watch.files`` for the files).

Promises:

* **Heartbeat.** ``<state_dir>/heartbeat`` is rewritten in place every ``BEAT_EVERY_S`` (one ``pwrite``
  of 256 bytes, no fsync: a watcher reads it from the page cache; measured 7.5 µs median against
  11.8 ms for a durable journal record on the same loaded machine), and its ``beat`` counts up only
  while the engine's loop makes progress (its queue drained, or an event handled since the last
  beat): a loop stuck in one handler, or a process stopped, stops the count. ``state`` says
  ``stopping`` once a stop was asked for and ``stopped`` when it ended on request, so a watcher tells a
  stop from a death.
* **Reports.** Once the units are adopted, every report a watcher left in ``watch/reports/`` (it
  restarted this enmei, it found the config broken, ...) becomes a ``supervisor`` record
  ``{"event": "watch.report", ...}`` naming the watcher and what it saw, and an alert (the engine's
  alert channels: journal and ``alert_command``); the file is removed only once the record is durable.
  A report is claimed (renamed) before it is read and journaled, so a watcher rewriting it meanwhile
  makes a new file, never one that is deleted unread; one that says ``restarting`` is left alone while
  its watcher runs (it rewrites it as ``restarted`` once this enmei holds the lock), so each restart is
  one record. A report that is not JSON, or over 64 KiB, is journaled as such (its name and size) and removed; at
  most 16 reports a scan.
* **Mutual watching.** A watcher registered with ``mutual`` whose lock is free (it died: its ``flock``
  went with it) and that did not stop on request is started again with its own command line, in a
  session of its own, its output appended to ``watch/<name>.log`` (kept at most 2 × 8 MiB) — at most
  once per ``_RESTART_MIN_S`` doubling to ``_RESTART_MAX_S`` while it keeps dying within ``_SETTLE_S``;
  each restart is a
  ``supervisor`` record ``{"event": "watcher.restarted"}`` and an alert. Nothing here raises into the
  engine: a failure is logged and tried again at the next scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enmei.fsafe import UnsafePathError, check_dir, open_append, open_nofollow
from enmei.model import RecordKind, Severity
from enmei.watch.files import BEAT_EVERY_S, BEAT_NAME, BEAT_SIZE, REPORTS, lock_holder, read_json, watch_dir

if TYPE_CHECKING:
    from enmei.engine.loop import Engine

__all__ = ["Heartbeat", "watch_tasks"]

log = logging.getLogger(__name__)

_SCAN_S = 1.0
_RESTART_MIN_S = 1.0
_RESTART_MAX_S = 60.0
_SETTLE_S = 10.0  # a restarted watcher that lives this long resets the backoff
_MAX_REPORTS = 16  # per scan: a folder flooded with reports costs the loop a bounded amount each second
_MAX_REPORT_BYTES = 64 * 1024
_MAX_LOG_BYTES = 8 * 2**20
_WRITING_S = 120.0  # above a watcher's start_timeout_s: a restart it has not confirmed by then is over
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MARKS = ("ENMEI_UNIT", "ENMEI_SUPERVISOR", "ENMEI_MAIN_PID", "ENMEI_SLOT", "NOTIFY_SOCKET", "WATCHDOG_USEC",
          "WATCHDOG_PID")


class Heartbeat:
    """The heartbeat file of one state dir (see the module docstring). ``OSError``/``UnsafePathError``
    from ``open`` if it cannot be written; ``write`` never raises (a full disk must not stop enmei)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / BEAT_NAME
        self.beat = 0
        self._fd: int | None = None

    def open(self) -> Heartbeat:
        self._fd = open_nofollow(self.path, "heartbeat", os.O_RDWR | os.O_CREAT, 0o600)
        return self

    def write(self, state: str, *, moved: bool = True) -> None:
        if self._fd is None:
            return
        if moved:
            self.beat += 1
        body = json.dumps({"v": 1, "pid": os.getpid(), "beat": self.beat, "wall": round(time.time(), 3),
                           "state": state}, separators=(",", ":")).encode()
        try:
            os.pwrite(self._fd, body.ljust(BEAT_SIZE - 1) + b"\n", 0)
        except OSError as exc:
            log.warning("heartbeat %s: %s", self.path, exc)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass
class _Restarted:
    proc: subprocess.Popen[bytes]
    mono: float
    delay_s: float


def watch_tasks(engine: Engine) -> list[asyncio.Task[None]]:
    """The tasks of this module for ``engine`` (they run until cancelled, beside the engine)."""
    beat = Heartbeat(engine.state_dir)
    try:
        beat.open()
    except (OSError, UnsafePathError) as exc:  # no heartbeat: a watcher then judges by the lock and the API
        log.warning("no heartbeat: %s", exc)
    return [asyncio.create_task(_beat(engine, beat), name="watch heartbeat"),
            asyncio.create_task(_Scanner(engine).run(), name="watch scan")]


async def _beat(engine: Engine, beat: Heartbeat) -> None:
    seen = -1
    try:
        while True:
            moved = engine.handled != seen or engine.queue.empty()
            seen = engine.handled
            beat.write("stopping" if engine.stop_requested.is_set() else "running", moved=moved)
            await asyncio.sleep(BEAT_EVERY_S)
    finally:
        # Cancelled when supervision ended: "stopped" only if it ended because a stop was asked for
        # (a crash of the engine leaves "running", and a watcher restarts it).
        if engine.stop_requested.is_set():
            beat.write("stopped")
        beat.close()


class _Scanner:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dir = watch_dir(engine.state_dir)
        self.children: dict[str, _Restarted] = {}
        self.delays: dict[str, float] = {}

    async def run(self) -> None:
        await self.engine.started.wait()  # after adoption: a report is about the enmei that runs now
        try:
            while True:
                try:
                    if self.dir.is_dir():
                        check_dir(self.dir, "watchers' folder")
                        await self.reports()
                        self.watchers()
                except UnsafePathError as exc:
                    log.warning("%s", exc)
                except Exception:  # never into the engine; the next scan tries again
                    log.exception("watch scan failed")
                await asyncio.sleep(_SCAN_S)
        finally:
            for child in self.children.values():
                with contextlib.suppress(OSError):
                    child.proc.poll()

    async def reports(self) -> None:
        folder = self.dir / REPORTS
        if not folder.is_dir():
            return
        done: list[Path] = []
        claimed = sorted(folder.glob("*.json.claimed"))  # claimed by an enmei that died before journaling them
        for found in [*claimed, *sorted(folder.glob("*.json"))][:_MAX_REPORTS]:
            path = found
            try:
                size = path.lstat().st_size
            except OSError:
                continue
            report = read_json(path) if size <= _MAX_REPORT_BYTES else None
            if path.suffix == ".json":
                if report is not None and self._in_writing(report, path):
                    continue  # its watcher is still restarting us: it rewrites the report once we hold the lock
                # Claimed by a rename before it is read again and journaled: a watcher writing the report
                # anew after this instant makes a new file (journaled at the next scan), never one we delete.
                path = found.with_name(found.name + ".claimed")
                try:
                    os.rename(found, path)
                except OSError:
                    continue
                report = read_json(path) if size <= _MAX_REPORT_BYTES else None
            if report is None:
                why = "not a JSON object" if size <= _MAX_REPORT_BYTES else f"{size} bytes: over {_MAX_REPORT_BYTES}"
                body: dict[str, Any] = {"event": "watch.report", "file": path.name, "error": why}
                message = f"a watcher's report {path.name} is unreadable"
            else:
                body = {**report, "event": "watch.report"}
                message = str(report.get("message") or f"watcher {report.get('watcher')}: {report.get('action')}")
            self.engine.record(RecordKind.SUPERVISOR, None, body)
            self.engine.alert(None, message, Severity.WARNING,
                              {"watcher": body.get("watcher"), "action": body.get("action")})
            done.append(path)
        if done and await self.engine.journal.aflush(timeout_s=10.0):
            for path in done:
                with contextlib.suppress(OSError):
                    path.unlink()

    def _in_writing(self, report: dict[str, Any], path: Path) -> bool:
        """A ``restarting`` report whose watcher still runs and wrote it less than ``_WRITING_S`` ago: that
        watcher is about to rewrite it (``restarted``, with our pid)."""
        name, pid = report.get("watcher"), report.get("watcher_pid")
        if report.get("action") != "restarting" or not isinstance(name, str) or not _NAME.match(name):
            return False
        try:
            young = time.time() - path.stat().st_mtime < _WRITING_S
        except OSError:
            return False
        return young and isinstance(pid, int) and lock_holder(self.dir / f"{name}.lock") == pid

    def watchers(self) -> None:
        now = time.monotonic()
        for name, child in list(self.children.items()):
            if child.proc.poll() is not None and now - child.mono > _SETTLE_S:
                del self.children[name]  # reaped; its backoff stays in self.delays
        for reg_path in sorted(self.dir.glob("*.json")):
            reg = read_json(reg_path)
            name = reg_path.stem
            if reg is None or not reg.get("mutual") or reg.get("state") == "stopped":
                continue
            last = self.children.get(name)
            if lock_holder(self.dir / f"{name}.lock") is not None:
                if last is not None and now - last.mono > _SETTLE_S:
                    self.delays.pop(name, None)
                continue
            if last is not None and ((last.proc.poll() is None and now - last.mono < _SETTLE_S)
                                     or now - last.mono < last.delay_s):
                continue  # a restart under way (it has not taken its lock yet), or backing off
            self.restart(name, reg, now)

    def restart(self, name: str, reg: dict[str, Any], now: float) -> None:
        argv = reg.get("argv")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            log.warning("watcher %s: its registration has no command line; not restarted", name)
            return
        delay = self.delays.get(name, _RESTART_MIN_S / 2) * 2
        self.delays[name] = min(delay, _RESTART_MAX_S)
        env = {k: v for k, v in os.environ.items() if k not in _MARKS}
        log_path = self.dir / f"{name}.log"
        with contextlib.suppress(OSError):
            if log_path.lstat().st_size > _MAX_LOG_BYTES:  # one older copy kept: at most twice that on disk
                os.replace(log_path, log_path.with_name(log_path.name + ".1"))
        out = open_append(log_path, "watcher's log", 0o600)
        try:
            proc = subprocess.Popen(argv, cwd=str(reg.get("cwd") or "/"), env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=out, start_new_session=True, close_fds=True)
        except OSError as exc:
            self.engine.record(RecordKind.SUPERVISOR, None, {"event": "watcher.restart_failed", "watcher": name,
                                                             "error": str(exc), "argv": argv})
            self.children.pop(name, None)
            return
        finally:
            os.close(out)
        self.children[name] = _Restarted(proc, now, self.delays[name])
        body = {"event": "watcher.restarted", "watcher": name, "old_pid": reg.get("pid"), "pid": proc.pid,
                "argv": argv, "saw": "its lock is free: it is gone without stopping"}
        self.engine.record(RecordKind.SUPERVISOR, None, body)
        self.engine.alert(None, f"watcher {name} (pid {reg.get('pid')}) died; restarted as pid {proc.pid}",
                          Severity.WARNING, {"watcher": name, "action": "restarted the watcher"})
