"""Output capture: a unit's stdout and stderr come through pipes that enmei reads in one thread of its
own and writes to size-bounded log files (``enmei.visor.logs.RotatingFile``).

Why a pipe and not the file itself: a unit that writes straight into a file can fill the disk between
two rotations, and rotating a file someone else appends to means copying it (issue 11 D2: a 64 KiB-chunk
flood made a 6 GB log and a 6 GB copy in 4 s, and the copy ran on the event loop). Reading the pipe lets
enmei bound both the disk and the work:

* **Disk**: each log is at most ``max_bytes``, rotated by rename, ``keep`` old files: at most
  ``max_bytes * (keep + 1)`` per stream, whatever the write rate.
* **Write rate**: at most ``rate`` bytes per second go to disk per stream (a token bucket, one second of
  burst). What comes faster is read and **dropped, and counted**; dropping starts a *flood episode*,
  reported once when it begins and once when it ends (``quiet_s`` without a drop, or the stream's end),
  with the bytes dropped, and marked by a line in the log itself.
* **Read rate (back-pressure)**: the thread makes at most one pass every ``cycle_s`` and reads at most
  ``_MAX_PASS`` bytes per stream per pass; a unit writing faster than that blocks in ``write`` until the
  next pass (the pipe is full). So a flood costs enmei a bounded number of wake-ups and copies per second
  — it never reaches the event loop, which only ever takes the lock for ``drain`` (one pass, bounded).

Nothing here runs on the event loop except ``add``/``drain``/``remove``/``counters`` (each bounded, under
the lock). Events go to ``on_event`` from the capture thread; the caller makes them thread-safe.

If enmei dies, the pipes' read ends it held close. A unit started by ``ProcessBackend`` also holds a read
end of its own pipes (inherited, never read), so its writes neither fail with EPIPE nor raise SIGPIPE:
once the pipe (1 MiB where the kernel allows) is full they block until the next enmei attaches again to
the same pipe through ``/proc/<pid>/fd`` (``attach_existing``) and goes on reading — nothing written in
between is lost.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import selectors
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enmei.errors import EnmeiError
from enmei.visor.logs import RotatingFile

__all__ = ["PIPE_SIZE", "Capture", "StreamStats", "attach_existing", "make_pipe"]

log = logging.getLogger(__name__)

#: Pipe capacity asked for (the default Linux ``pipe-max-size``); the kernel may give less.
PIPE_SIZE = 1 << 20
_CHUNK = 1 << 16
_MAX_PASS = PIPE_SIZE  # bytes read per stream per pass, at most


@dataclass
class StreamStats:
    """What one stream did over this supervisor's run (counters only grow)."""

    written_bytes: int = 0
    dropped_bytes: int = 0
    floods: int = 0  # flood episodes begun
    flooding: bool = False
    rotations: int = 0
    write_errors: int = 0


class _Stream:
    def __init__(self, unit: str, stream: str, fd: int, file: RotatingFile, rate: float, now: float,
                 stats: StreamStats) -> None:
        self.unit = unit
        self.stream = stream
        self.fd = fd
        self.file = file
        self.rate = rate
        self.tokens = rate  # one second of burst
        self.refilled = now
        self.stats = stats
        self.closed = False
        self.failing = False  # the log could not be written last time
        self.flood_began = 0.0
        self.last_drop = 0.0
        self.episode_dropped = 0


def make_pipe() -> tuple[int, int]:
    """(read end, write end) of a new pipe, close-on-exec, its read end non-blocking, its capacity
    raised to ``PIPE_SIZE`` if the kernel allows (a bigger pipe means fewer wake-ups and more output kept
    while no enmei reads)."""
    r, w = os.pipe2(os.O_CLOEXEC)
    with contextlib.suppress(OSError):
        fcntl.fcntl(r, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    os.set_blocking(r, False)
    return r, w


def attach_existing(pid: int, fds: list[int], ino: int | None) -> int | None:
    """A new read end of the pipe that process ``pid`` has at one of ``fds`` (tried in order), opened
    through ``/proc/<pid>/fd``; with ``ino``, only that pipe (``st_ino``). None if none of them is a pipe
    (the process redirected its output, or it is gone) or it may not be opened."""
    for n in fds:
        link = f"/proc/{pid}/fd/{n}"
        try:
            st = os.stat(link)
            if not stat.S_ISFIFO(st.st_mode) or (ino is not None and st.st_ino != ino):
                continue
            fd = os.open(link, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        if os.fstat(fd).st_ino != st.st_ino:  # replaced between stat and open
            os.close(fd)
            continue
        return fd
    return None


class Capture:
    """Pipes in, bounded log files out, in one daemon thread (started with the first stream).

    ``on_event(unit, stream, detail)`` is called from the capture thread for each flood episode's
    ``{"phase": "begin", ...}`` and ``{"phase": "end", "dropped_bytes": ..., "duration_s": ...}``.
    """

    def __init__(self, on_event: Callable[[str, str, dict[str, Any]], None], *, cycle_s: float = 0.005,
                 quiet_s: float = 5.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.on_event = on_event
        self.cycle_s = cycle_s
        self.quiet_s = quiet_s
        self.monotonic = monotonic
        self._lock = threading.Lock()
        self._sel = selectors.DefaultSelector()
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._stats: dict[tuple[str, str], StreamStats] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- called from the event loop (each bounded) --------------------------------------------------

    def add(self, unit: str, stream: str, fd: int, path: Path, *, max_bytes: int, keep: int,
            rate: float) -> None:
        """Capture read end ``fd`` (now owned here: closed at the stream's end) into ``path``.
        A stream of the same name still open is ended first. A log that cannot be opened (a planted
        symlink, a full disk) is logged; its output is read and dropped (counted) until it can be."""
        try:
            file = RotatingFile(path, max_bytes=max_bytes, keep=keep)
        except BaseException:
            os.close(fd)
            raise
        if file.error is not None:
            log.warning("capture %s/%s: cannot open %s (%s): its output is dropped until it can be",
                        unit, stream, path, file.error)
        with self._lock:
            if self._closed:
                file.close()
                os.close(fd)
                return
            old = self._streams.get((unit, stream))
            if old is not None:
                self._end(old, self.monotonic())
            stats = self._stats.setdefault((unit, stream), StreamStats())
            s = _Stream(unit, stream, fd, file, float(rate), self.monotonic(), stats)
            s.failing = file.error is not None  # warned above already
            self._streams[(unit, stream)] = s
            self._sel.register(fd, selectors.EVENT_READ, s)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="enmei-capture", daemon=True)
                self._thread.start()

    def drain(self, unit: str) -> None:
        """Write what ``unit``'s pipes hold now (one bounded pass), so the files show its last words."""
        with self._lock:
            now = self.monotonic()
            for s in [s for s in self._streams.values() if s.unit == unit]:
                self._pump(s, now)

    def remove(self, unit: str) -> None:
        """Drain ``unit``'s streams, then end them (a flood episode ends; fds and files are closed)."""
        with self._lock:
            now = self.monotonic()
            for s in [s for s in self._streams.values() if s.unit == unit]:
                self._pump(s, now)
                self._end(s, now)

    def rekey(self, unit: str, to: str) -> None:
        """Go on capturing ``unit``'s streams (same files) under the key ``to`` (a handover sets the old
        instance's aside while the new one's are captured under the unit's name). Streams already under
        ``to`` are ended first."""
        with self._lock:
            now = self.monotonic()
            for key in [k for k in self._streams if k[0] == to]:
                self._end(self._streams[key], now)
            for (u, stream) in [k for k in self._streams if k[0] == unit]:
                s = self._streams.pop((u, stream))
                s.unit = to
                self._streams[(to, stream)] = s

    def capturing(self, unit: str, stream: str) -> bool:
        with self._lock:
            return (unit, stream) in self._streams

    def counters(self) -> dict[tuple[str, str], StreamStats]:
        """A copy of every stream's counters, by (unit, stream)."""
        with self._lock:
            return {k: StreamStats(**vars(v)) for k, v in self._stats.items()}

    def close(self) -> None:
        """End every stream and the thread (waits for it, at most 5 s)."""
        with self._lock:
            self._closed = True
            now = self.monotonic()
            for s in list(self._streams.values()):
                self._end(s, now)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(5.0)
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._sel.close()
                for fd in (self._wake_r, self._wake_w):
                    with contextlib.suppress(OSError):
                        os.close(fd)

    # -- the capture thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                timeout = self._timeout(self.monotonic())
            try:
                ready = self._sel.select(timeout)
            except (OSError, ValueError):  # the selector was closed under us: we are done
                return
            with self._lock:
                if self._closing():  # closed while we waited
                    return
                now = self.monotonic()
                for key, _ in ready:
                    s = key.data
                    if s is None:
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                    elif isinstance(s, _Stream) and not s.closed:
                        try:
                            self._pump(s, now)
                        except Exception:  # a bug must not end the capture of every other unit
                            log.exception("capture %s/%s failed: stream ended", s.unit, s.stream)
                            with contextlib.suppress(Exception):
                                self._end(s, now)
                self._quiet_floods(now)
            # One pass per cycle at most: a flood fills the pipe meanwhile and is read in big pieces,
            # so its cost is bounded by passes per second, not by the writer's chunk size.
            time.sleep(self.cycle_s)

    def _closing(self) -> bool:
        return self._closed

    def _timeout(self, now: float) -> float | None:
        ends = [s.last_drop + self.quiet_s for s in self._streams.values() if s.stats.flooding]
        return max(0.0, min(ends) - now) if ends else None

    def _pump(self, s: _Stream, now: float) -> None:
        """Read what ``s``'s pipe holds (at most ``_MAX_PASS``); write what the rate allows, drop the rest."""
        taken = 0
        while taken < _MAX_PASS and not s.closed:
            try:
                data = os.read(s.fd, _CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("capture %s/%s: read failed (%s): stream ended", s.unit, s.stream, exc)
                data = b""
            if not data:
                self._end(s, now)  # every writer closed it: the unit and all it started are gone
                return
            taken += len(data)
            self._take(s, data, now)

    def _take(self, s: _Stream, data: bytes, now: float) -> None:
        s.tokens = min(s.rate, s.tokens + (now - s.refilled) * s.rate)
        s.refilled = now
        n = len(data)
        if n > s.tokens:
            # Keep whole lines where one ends within the allowance.
            cut = data.rfind(b"\n", 0, int(s.tokens)) + 1 if s.tokens >= 1 else 0
            self._drop(s, n - cut, now)
            data = data[:cut]
        if data:
            s.tokens -= len(data)
            self._write(s, data)

    def _write(self, s: _Stream, data: bytes) -> None:
        before = s.file.size
        rotations = s.file.rotations
        try:
            s.file.write(data)
            s.stats.written_bytes += len(data)
            if s.failing:
                s.failing = False
                log.warning("capture %s/%s: writing %s again", s.unit, s.stream, s.file.path)
        except (OSError, EnmeiError) as exc:
            # A full disk, a vanished directory, a planted symlink: count it as dropped, keep going.
            written = max(0, s.file.size - before) if s.file.rotations == rotations else 0
            s.stats.written_bytes += written
            s.stats.dropped_bytes += len(data) - written
            s.stats.write_errors += 1
            if not s.failing:  # once a streak: a full disk must not flood enmei's own log in turn
                s.failing = True
                log.warning("capture %s/%s: cannot write %s (%s): output dropped until it can",
                            s.unit, s.stream, s.file.path, exc)
        s.stats.rotations += s.file.rotations - rotations

    def _drop(self, s: _Stream, n: int, now: float) -> None:
        if n <= 0:
            return
        s.stats.dropped_bytes += n
        s.episode_dropped += n
        s.last_drop = now
        if not s.stats.flooding:
            s.stats.flooding = True
            s.stats.floods += 1
            s.flood_began = now
            self._event(s, {"phase": "begin", "limit_bytes_per_s": int(s.rate)})

    def _quiet_floods(self, now: float) -> None:
        for s in self._streams.values():
            if s.stats.flooding and now - s.last_drop >= self.quiet_s:
                self._end_flood(s, now)

    def _end_flood(self, s: _Stream, now: float) -> None:
        s.stats.flooding = False
        duration = round(max(0.0, s.last_drop - s.flood_began), 3)
        dropped, s.episode_dropped = s.episode_dropped, 0
        if not s.closed:
            with contextlib.suppress(OSError, EnmeiError):
                s.file.write(f"[enmei] output flood: {dropped} bytes dropped over {duration} s "
                             f"(limit {int(s.rate)} bytes/s)\n".encode())
        self._event(s, {"phase": "end", "dropped_bytes": dropped, "duration_s": duration,
                        "limit_bytes_per_s": int(s.rate)})

    def _end(self, s: _Stream, now: float) -> None:
        if s.stats.flooding:
            self._end_flood(s, now)
        if s.closed:
            return
        s.closed = True
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._sel.unregister(s.fd)
        with contextlib.suppress(OSError):
            os.close(s.fd)
        s.file.close()
        if self._streams.get((s.unit, s.stream)) is s:
            del self._streams[(s.unit, s.stream)]

    def _event(self, s: _Stream, detail: dict[str, Any]) -> None:
        try:
            self.on_event(s.unit, s.stream, detail)
        except Exception:
            log.exception("capture %s/%s: event callback failed", s.unit, s.stream)
