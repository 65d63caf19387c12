"""What an enmei and its watchers share on disk, read and written with the standard library only (and
``enmei.ctl.client``'s lock reader, which is too).

``<state_dir>/heartbeat`` — written by enmei (``enmei.watch.beat``), read by watchers: one JSON object
padded to ``BEAT_SIZE`` bytes, rewritten in place (``pwrite`` at offset 0), ``{"v": 1, "pid", "beat",
"wall", "state"}``; ``beat`` counts up every ``BEAT_EVERY_S`` while the engine's loop makes progress;
``state`` is ``running``, ``stopping`` (a stop was asked for: a death now is not restarted) or
``stopped`` (enmei ended on request). A reader that catches a write half-way gets ``None`` and reads
again at its next check.

``<state_dir>/watch/`` (mode 0700) — the watchers' folder:

* ``<name>.lock`` — the watcher named ``name`` holds an ``flock`` on it while it runs (so a dead
  watcher is told from a live one by ``/proc/locks``, as enmei's own ``enmei.lock``);
* ``<name>.json`` — its registration: pid, start time, command line, cwd, whether enmei restarts it
  (``mutual``), what it learned of the enmei's command line, and its state (``stopped`` once it ended
  on request: it is then not restarted);
* ``restart.lock`` — held by whoever restarts the enmei of this state dir, for the whole restart: two
  watchers that see one death restart it once;
* ``reports/*.json`` — what a watcher saw and did, for the next enmei to journal (and alert), then
  remove.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from enmei.ctl.client import flock_holder as lock_holder

__all__ = ["BEAT_EVERY_S", "BEAT_NAME", "BEAT_SIZE", "REPORTS", "WATCH_DIR", "lock_holder", "proc_cmdline",
           "proc_start", "read_beat", "read_json", "watch_dir", "write_json"]

BEAT_NAME = "heartbeat"
BEAT_SIZE = 256
BEAT_EVERY_S = 0.5
WATCH_DIR = "watch"
REPORTS = "reports"


def watch_dir(state_dir: Path) -> Path:
    return Path(state_dir) / WATCH_DIR


def read_beat(state_dir: Path) -> dict[str, Any] | None:
    """The heartbeat as written last, or None (no file, a torn or foreign content)."""
    try:
        fd = os.open(Path(state_dir) / BEAT_NAME, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.pread(fd, BEAT_SIZE, 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) and obj.get("v") == 1 else None


def proc_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), or None if
    it is gone: with the pid, a process's identity (a recycled pid has another start time)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        return int(stat[stat.rindex(b")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]]


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def write_json(path: Path, obj: dict[str, Any]) -> None:
    """Write-temp-then-replace (mode 0600): a reader sees the old file or the new one, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(obj, sort_keys=True).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
