"""HTTP probe: status and latency of a GET on a loopback URL."""

from __future__ import annotations

import httpx

from enmei.clock import Clock
from enmei.model import Observation
from enmei.monitor.base import Probe

__all__ = ["HttpProbe"]


class HttpProbe(Probe):
    """GET ``url``; ok when the status is in ``expect_status``. Values: ``latency_s``, ``status``.

    A new connection per probe (no keep-alive), so a service that stops accepting connections is seen.
    ``transport`` can be injected (httpx ``MockTransport`` in unit tests).
    """

    def __init__(self, unit: str, name: str, interval_s: float, clock: Clock, *, url: str,
                 timeout_s: float, expect_status: list[int],
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(unit, name, interval_s, clock)
        self.url = url
        self.timeout_s = timeout_s
        self.expect_status = frozenset(expect_status)
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), transport=transport, trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0), follow_redirects=False,
        )

    async def observe(self) -> Observation:
        t0 = self.clock.monotonic()
        try:
            resp = await self._client.get(self.url)
        except httpx.TimeoutException:
            return self._obs(False, {"latency_s": self.clock.monotonic() - t0}, f"no answer within {self.timeout_s:g}s", t0)
        except httpx.HTTPError as exc:
            return self._obs(False, {}, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, t0)
        latency = self.clock.monotonic() - t0
        ok = resp.status_code in self.expect_status
        values = {"latency_s": latency, "status": float(resp.status_code)}
        return self._obs(ok, values, None if ok else f"status {resp.status_code}", t0)

    async def aclose(self) -> None:
        await self._client.aclose()
