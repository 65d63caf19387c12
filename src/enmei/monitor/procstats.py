"""Process-stats probe: the unit's resource use as its backend reports it (psutil for processes)."""

from __future__ import annotations

from enmei.clock import Clock
from enmei.config.model import ProcessProbe
from enmei.errors import VisorError
from enmei.model import Observation
from enmei.monitor.base import Probe
from enmei.monitor.registry import ProbeSite, register
from enmei.visor.base import Backend

__all__ = ["StatsProbe"]


class StatsProbe(Probe):
    """Values such as ``rss_bytes``, ``cpu_percent``, ``num_fds``, ``num_threads``, ``read_bytes``."""

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, backend: Backend) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.backend = backend

    async def observe(self) -> Observation:
        t0 = self.clock.monotonic()
        try:
            values = await self.backend.stats(self.unit)
        except VisorError as exc:
            return self._obs(False, {}, exc.cause, t0)
        return self._obs(True, values, None, t0)


def _make(site: ProbeSite, cfg: ProcessProbe) -> StatsProbe:
    return StatsProbe(site.unit, site.name, cfg.interval_s, site.clock, backend=site.backend)


register(ProcessProbe, _make)
