"""Restart budget and backoff: how many restarts a window allows, and how long to wait before the next.

Pure arithmetic over the times of past restarts and the length of a retry streak; the engine keeps the
times and streaks (``enmei.engine.unit``), policies read the result (``next_delay_s``). The rules, as the
README and ``RestartConfig`` state them:

* a crash of an instance that had been running ``reset_after_s`` is restarted at once;
* the n-th *retry* in a row (a crash of an instance that ran less) starts no sooner than
  ``backoff_first_s * factor**(n-1)`` after the start it retries: it waits that less the time the crashed
  instance lived. The backoff bounds the rate of starts: a daemon that dies at once waits the whole step,
  one that crashed after a few seconds of work (or 1.5 s into a slow start) is not a tight loop and is
  restarted at once, as supervisord and Monit restart it;
* the n-th probe-caused restart in a row waits nothing the first time, then ``backoff_first_s *
  factor**(n-2)``; everything capped at ``backoff_max_s``.

>>> b = RestartBudget(backoff_first_s=0.5, backoff_factor=2.0, backoff_max_s=30.0, budget=5, window_s=300.0)
>>> [b.crash_delay_s(n) for n in range(5)]
[0.5, 1.0, 2.0, 4.0, 8.0]
>>> [b.crash_delay_s(n, lived_s=1.5) for n in range(5)]
[0.0, 0.0, 0.5, 2.5, 6.5]
>>> [b.probe_delay_s(n) for n in range(5)]
[0.0, 0.5, 1.0, 2.0, 4.0]
>>> b.crash_delay_s(20), b.healthy(running_s=10.0), b.healthy(running_s=9.9)
(30.0, True, False)
>>> b.spent([10.0, 20.0, 30.0, 40.0, 50.0], now=60.0), b.spent([10.0], now=400.0)
(True, False)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["RestartBudget"]


@dataclass(frozen=True)
class RestartBudget:
    backoff_first_s: float
    backoff_factor: float
    backoff_max_s: float
    budget: int
    window_s: float
    reset_after_s: float = 10.0

    def in_window(self, restarts: Sequence[float], now: float) -> int:
        """How many of the restart times fall within the last ``window_s``."""
        return sum(1 for t in restarts if now - t < self.window_s)

    def spent(self, restarts: Sequence[float], now: float) -> bool:
        return self.in_window(restarts, now) >= self.budget

    def healthy(self, running_s: float) -> bool:
        """Whether an instance ``running`` this long has proven itself (its streaks start over)."""
        return running_s >= self.reset_after_s

    def _step(self, n: int) -> float:
        return float(min(self.backoff_max_s, self.backoff_first_s * self.backoff_factor ** max(0, n)))

    def crash_delay_s(self, retries: int, lived_s: float = 0.0) -> float:
        """The wait before a retry after a crash that follows ``retries`` retries in a row, of an instance
        that lived ``lived_s`` since its start: the step (the first, ``retries`` 0, is ``backoff_first_s``)
        less ``lived_s``, never below 0. (A crash after a healthy period waits 0: not a retry.)"""
        return max(0.0, self._step(retries) - max(0.0, lived_s))

    def probe_delay_s(self, restarts: int) -> float:
        """The wait before a probe-caused restart that follows ``restarts`` such restarts in a row: the
        first waits 0 (the probe's failure streak was the wait), then ``backoff_first_s``, growing."""
        if restarts <= 0:
            return 0.0
        return self._step(restarts - 1)

    def next_delay_s(self, recent: int) -> float:
        """The old rule by restarts in the window (0 for the first, then exponential), kept for callers
        that count that way; the engine uses ``crash_delay_s`` and ``probe_delay_s``."""
        if recent <= 0:
            return 0.0
        return self._step(recent - 1)
