"""Named crash points: a test hook that kills this process at a named step of a mechanism.

A mechanism whose every step must survive the supervisor's death (the shadow update's swap, the
standby's takeover) calls ``reached("<mechanism>.<step>")`` at each step, in its real code path. When
the environment variable ``ENMEI_CRASH_AT`` (read once, at import) names that point (a comma-separated
list of points), the process writes one line ``enmei: crash point <point>`` to stderr and kills itself
with SIGKILL, exactly as a ``kill -9`` there would. Unset (always, outside tests) ``reached`` does
nothing. The points are listed where they are reached (``enmei.visor.qemu.shadow``: ``POINTS``).

This module is a leaf: it imports nothing from enmei.

>>> reached("no.such-point")  # not named in ENMEI_CRASH_AT: nothing happens
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["ENV", "armed", "reached"]

ENV = "ENMEI_CRASH_AT"
_ARMED = frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())


def armed() -> frozenset[str]:
    """The points this process dies at (from ``ENMEI_CRASH_AT`` at import; empty outside tests)."""
    return _ARMED


def reached(point: str) -> None:
    """The running mechanism is at ``point``: die here (SIGKILL, no clean-up) if it is armed."""
    if point in _ARMED:
        line = f"enmei: crash point {point}\n"
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
