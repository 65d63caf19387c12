"""The probe seam: one probe observes one unit in one way and returns an ``Observation``.

Probes never decide and never raise for what they observe: a refused connection, a timeout or a bad
status is an ``Observation`` with ``ok=False`` and an ``error``. They raise only for a broken probe
(a bug), which the engine journals and survives.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import ClassVar

from enmei.clock import Clock
from enmei.model import Observation

__all__ = ["Probe"]


class Probe(abc.ABC):
    """Observes ``unit`` every ``interval_s``; ``name`` identifies the probe within the unit.

    ``timed``: the probe checks the service (http, tcp, exec): the engine adds ``duration_s``, how long
    ``observe`` took, to each of its observations (a sample, and the ``/metrics`` probe histogram).
    """

    timed: ClassVar[bool] = False

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock) -> None:
        self.unit = unit
        self.name = name
        self.interval_s = interval_s
        self.clock = clock

    @abc.abstractmethod
    async def observe(self) -> Observation:
        """One observation now."""

    def _obs(self, ok: bool, values: Mapping[str, float] | None = None, error: str | None = None,
             mono: float | None = None) -> Observation:
        return Observation(self.unit, self.name, ok, self.clock.monotonic() if mono is None else mono,
                           self.clock.wall(), dict(values or {}), error)

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release what the probe holds (connections, files)."""
