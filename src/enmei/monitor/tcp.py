"""TCP probe: can a connection be opened, and how fast."""

from __future__ import annotations

import asyncio
import contextlib

from enmei.clock import Clock
from enmei.model import Observation
from enmei.monitor.base import Probe

__all__ = ["TcpProbe"]


class TcpProbe(Probe):
    """Connect to ``host:port``; ok when the connection opens within ``timeout_s``. Value: ``connect_s``."""

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, host: str, port: int,
                 timeout_s: float) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.host = host
        self.port = port
        self.timeout_s = timeout_s

    async def observe(self) -> Observation:
        t0 = self.clock.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                _, writer = await asyncio.open_connection(self.host, self.port)
        except TimeoutError:
            return self._obs(False, {}, f"no connection within {self.timeout_s:g}s", t0)
        except OSError as exc:
            return self._obs(False, {}, exc.strerror or str(exc), t0)
        elapsed = self.clock.monotonic() - t0
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return self._obs(True, {"connect_s": elapsed}, None, t0)
