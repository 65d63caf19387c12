"""Restart budget and backoff: how many restarts a window allows, and how long to wait before the next.

Pure arithmetic over the times of past restarts; the engine keeps the times, policies read the result.

>>> b = RestartBudget(backoff_first_s=0.5, backoff_factor=2.0, backoff_max_s=30.0, budget=5, window_s=300.0)
>>> [b.next_delay_s(n) for n in range(5)]
[0.0, 0.5, 1.0, 2.0, 4.0]
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

    def in_window(self, restarts: Sequence[float], now: float) -> int:
        """How many of the restart times fall within the last ``window_s``."""
        return sum(1 for t in restarts if now - t < self.window_s)

    def spent(self, restarts: Sequence[float], now: float) -> bool:
        return self.in_window(restarts, now) >= self.budget

    def next_delay_s(self, recent: int) -> float:
        """The wait before restart number ``recent + 1`` of the window: 0 for the first, then exponential."""
        if recent <= 0:
            return 0.0
        return float(min(self.backoff_max_s, self.backoff_first_s * self.backoff_factor ** (recent - 1)))
