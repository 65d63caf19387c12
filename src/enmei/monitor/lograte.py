"""Log probe: how many lines a unit wrote per second (all, or those matching a pattern), and the lines.

It reads only what was appended since the last look; a file that shrank (truncated, rotated by copy)
or was replaced by another (rotated by rename: another inode) is read again from its start. The file is
the unit's captured stream, or (``path``) a log file the unit writes itself. At most ``max_read`` bytes
are read per observation, so a flood cannot stall it.

The lines themselves go on the observation's text channel (``Observation.lines``, decoded as UTF-8 with
replacement), for detectors such as ``log_pattern``: complete lines only (a line still being written is
kept until its end arrives, up to ``max_line`` bytes), each cut to ``max_line`` bytes, at most
``max_lines`` per observation (the first ones; the value ``text_dropped`` counts the others).
The stream may be a process unit's stdout/stderr or a VM's serial console (``stream = "console"``).
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import replace
from pathlib import Path

from enmei.clock import Clock
from enmei.config.model import LogProbe as LogProbeConfig
from enmei.model import Observation
from enmei.monitor.base import Probe
from enmei.monitor.registry import ProbeSite, register

__all__ = ["LogProbe"]


class LogProbe(Probe):
    """Values: ``lines_per_s`` and, with a pattern, ``matches_per_s`` (lines that match)."""

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, path: Path | None,
                 pattern: str | None, max_read: int = 4 << 20, max_lines: int = 1000,
                 max_line: int = 4096) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.path = path
        self.pattern = re.compile(pattern.encode()) if pattern else None
        self.max_read = max_read
        self.max_lines = max_lines
        self.max_line = max_line
        self._partial = b""
        self._offset: int | None = None
        self._inode: int | None = None
        self._last: float | None = None

    async def observe(self) -> Observation:
        now = self.clock.monotonic()
        if self.path is None:
            return self._obs(False, {}, "this unit has no log of that stream", now)
        try:
            st = os.stat(self.path)
            size, inode = st.st_size, st.st_ino
        except FileNotFoundError:
            size, inode = 0, None
        if self._inode is not None and inode is not None and inode != self._inode and self._offset is not None:
            self._offset = -1  # renamed away and replaced (rotated by rename): the new file from its start
        if inode is not None:
            self._inode = inode
        if self._offset is None or size < self._offset or self._offset < 0:
            if self._offset is not None:
                self._partial = b""  # rotated or truncated: the unfinished line is gone
            self._offset = 0 if self._offset is not None else size
        data = b""
        if size > self._offset:
            data = await asyncio.to_thread(self._read, self.path, self._offset, min(size - self._offset, self.max_read))
            self._offset += len(data)
        elapsed = now - self._last if self._last is not None else self.interval_s
        self._last = now
        lines = data.count(b"\n")
        values = {"lines_per_s": lines / max(elapsed, 1e-6)}
        if self.pattern is not None:
            matching = sum(1 for line in data.splitlines() if self.pattern.search(line))
            values["matches_per_s"] = matching / max(elapsed, 1e-6)
        text = self._lines(data)
        if len(text) > self.max_lines:
            values["text_dropped"] = float(len(text) - self.max_lines)
            text = text[:self.max_lines]
        obs = self._obs(True, values, None, now)
        return replace(obs, lines=tuple(line.decode("utf-8", "replace") for line in text)) if text else obs

    def _lines(self, data: bytes) -> list[bytes]:
        """The complete lines of ``data`` (after what was left over last time), each cut to max_line."""
        if not data:
            return []
        *done, rest = (self._partial + data).split(b"\n")
        self._partial = rest[:self.max_line]
        return [line.rstrip(b"\r")[:self.max_line] for line in done]

    @staticmethod
    def _read(path: Path, offset: int, n: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)


def _make(site: ProbeSite, cfg: LogProbeConfig) -> LogProbe:
    path: Path | None
    if cfg.path is not None:
        path = Path(cfg.path).expanduser()
        cwd = getattr(site.spec, "cwd", None)
        if not path.is_absolute() and cwd:
            path = Path(cwd) / path
    else:
        path = site.backend.log_path(site.unit, cfg.stream)
    return LogProbe(site.unit, site.name, cfg.interval_s, site.clock, path=path, pattern=cfg.pattern)


register(LogProbeConfig, _make)
