"""The guest's serial console as a source of facts: boot phase markers and recent lines.

The guest's init prints ``enmei-phase: NAME t=UPTIME`` at each boot phase (``kernel``, ``userspace``,
``network``, ``service-ready``, then ``data-ready`` once the data disk is mounted, ``shutdown``).
``ConsoleReader`` reads the console file incrementally from an offset (the file is appended to by
QEMU and keeps the output of earlier runs before that offset), splits it into lines and keeps the
phases of the current boot: a ``kernel`` marker starts a new boot and forgets the phases before it.

>>> parse_phase("enmei-phase: service-ready t=2.59")
('service-ready', 2.59)
>>> parse_phase("[    3.2] random kernel line") is None
True
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ConsoleReader", "PhaseMark", "parse_phase"]

_PHASE = re.compile(r"enmei-phase: ([a-z-]+)(?: t=([0-9.]+))?")
_MAX_READ = 1 << 20
_MAX_LINE = 1 << 16


def parse_phase(line: str) -> tuple[str, float | None] | None:
    """(phase, guest uptime in seconds) if ``line`` is a phase marker, else None."""
    m = _PHASE.search(line)
    if not m:
        return None
    try:  # the console is the guest's: "t=1.2.3" from a broken or hostile guest is no uptime, not a crash
        uptime = float(m.group(2)) if m.group(2) else None
    except ValueError:
        uptime = None
    return m.group(1), uptime


@dataclass(frozen=True)
class PhaseMark:
    """One phase marker as seen by the host: ``mono`` when it was read, ``uptime_s`` the guest's."""

    phase: str
    mono: float
    uptime_s: float | None
    boot: int  # which boot of this QEMU (1 = the first)


@dataclass
class ConsoleReader:
    """Incremental reader of one console file, from ``offset`` on."""

    path: Path
    offset: int = 0
    boot: int = 0
    phases: dict[str, PhaseMark] = field(default_factory=dict)
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=200))
    _partial: bytes = b""

    def poll(self, mono: float) -> list[PhaseMark]:
        """Read what was appended since the last call; returns the phase markers it held, in order.

        A missing or unreadable file reads as nothing (never raises).
        """
        try:
            with open(self.path, "rb") as f:
                if f.seek(0, 2) < self.offset:  # rotated (copied, then truncated): start over
                    self.offset = 0
                    self._partial = b""
                f.seek(self.offset)
                data = f.read(_MAX_READ)
        except OSError:
            return []
        if not data:
            return []
        self.offset += len(data)
        chunks = (self._partial + data).split(b"\n")
        self._partial = chunks.pop()
        if len(self._partial) > _MAX_LINE:  # a guest that never ends its line: cut it, keep memory bounded
            chunks.append(self._partial[:_MAX_LINE])
            self._partial = b""
        marks: list[PhaseMark] = []
        for raw in chunks:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            self.lines.append(line)
            parsed = parse_phase(line)
            if parsed is None:
                continue
            name, uptime = parsed
            if name == "kernel":
                self.boot += 1
                self.phases = {}
            mark = PhaseMark(name, mono, uptime, self.boot)
            self.phases[name] = mark
            marks.append(mark)
        return marks

    def tail(self, n: int = 20) -> list[str]:
        """The last ``n`` complete lines read."""
        return list(self.lines)[-n:]

    def forget_phases(self) -> None:
        """Forget the phases of the current boot (the guest was reset or restored elsewhere)."""
        self.phases = {}
