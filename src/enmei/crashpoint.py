"""Named crash points: a test hook that kills this process at a named step of a mechanism.

A mechanism whose every step must survive the supervisor's death (the shadow update's swap, the
standby's takeover) calls ``reached("<mechanism>.<step>")`` at each step, in its real code path. When
the environment variable ``ENMEI_CRASH_AT`` (read once, at import) names that point (a comma-separated
list of points), the process writes one line ``enmei: crash point <point>`` to stderr and kills itself
with SIGKILL, exactly as a ``kill -9`` there would. ``ENMEI_STOP_AT`` names points where it stops
itself instead (SIGSTOP: a process hung exactly there, for whoever must notice and end it). Unset (always,
outside tests) ``reached`` does nothing. The points are listed where they are reached
(``enmei.visor.qemu.shadow``: ``POINTS``; ``upgrade.handed`` in ``enmei.engine.successor``).

This module is a leaf: it imports nothing from enmei.

>>> reached("no.such-point")  # not named in ENMEI_CRASH_AT: nothing happens
"""

from __future__ import annotations

import os
import signal
import sys

__all__ = ["ENV", "ENV_STOP", "armed", "reached"]

ENV = "ENMEI_CRASH_AT"
ENV_STOP = "ENMEI_STOP_AT"
_ARMED = frozenset(p.strip() for p in os.environ.get(ENV, "").split(",") if p.strip())
_STOPS = frozenset(p.strip() for p in os.environ.get(ENV_STOP, "").split(",") if p.strip())


def armed() -> frozenset[str]:
    """The points this process dies at (from ``ENMEI_CRASH_AT`` at import; empty outside tests)."""
    return _ARMED


def reached(point: str) -> None:
    """The running mechanism is at ``point``: die here (SIGKILL, no clean-up) if it is armed, or stop here
    (SIGSTOP) if ``ENMEI_STOP_AT`` names it."""
    if point in _ARMED or point in _STOPS:
        how = signal.SIGKILL if point in _ARMED else signal.SIGSTOP
        line = f"enmei: {'crash' if how is signal.SIGKILL else 'stop'} point {point}\n"
        try:
            sys.stderr.write(line)
            sys.stderr.flush()
        finally:
            os.kill(os.getpid(), how)
