"""Log probe: how many lines a unit wrote per second (all, or those matching a pattern).

It reads only what was appended since the last look; a file that shrank (rotated, truncated) is read
again from its start. At most ``max_read`` bytes are read per observation, so a flood cannot stall it.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

from enmei.clock import Clock
from enmei.model import Observation
from enmei.monitor.base import Probe

__all__ = ["LogProbe"]


class LogProbe(Probe):
    """Values: ``lines_per_s`` and, with a pattern, ``matches_per_s`` (lines that match)."""

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, path: Path | None,
                 pattern: str | None, max_read: int = 4 << 20) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.path = path
        self.pattern = re.compile(pattern.encode()) if pattern else None
        self.max_read = max_read
        self._offset: int | None = None
        self._last: float | None = None

    async def observe(self) -> Observation:
        now = self.clock.monotonic()
        if self.path is None:
            return self._obs(False, {}, "this unit has no log of that stream", now)
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            size = 0
        if self._offset is None or size < self._offset:
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
        return self._obs(True, values, None, now)

    @staticmethod
    def _read(path: Path, offset: int, n: int) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)
