"""Injectors: active observation. enmei acts on the unit from outside and watches the reaction.

An injection runs when a policy decides ``inject(unit, injector, schedule)``; each run yields one
``Observation`` (``probe`` = the injector's name) whose ``ok`` says whether the reaction was the expected
one. ``http``: a synthetic request, judged by status (and a body substring). ``keys``: text typed into the
unit's keyboard (VMs), then the movement of a counter (``watch``, e.g. block ``wr_bytes``) within
``react_s``, reported as ``reaction_<watch>``. Injectors do not judge what they see: whether that
reaction is out of bounds (past ``max_reaction`` — the seed's "this guest writes to disk whenever
someone types") is the ``reaction`` detector's verdict (``enmei.detect.reaction``). An injection that
could not be made at all (the keys not sent) is an observation with ``ok`` false. ``typing_schedule``
is not one-shot: the engine runs its rounds (``enmei.monitor.rounds``); ``inject`` starts or pauses them.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from enmei.clock import Clock
from enmei.config.model import HttpInjector, InjectorConfig, KeysInjector, TypingScheduleInjector
from enmei.errors import VisorError
from enmei.model import Observation
from enmei.monitor.base import Probe
from enmei.monitor.http import HttpError, http_get
from enmei.visor.base import Backend, Capability, need

__all__ = ["HttpInjection", "KeysInjection", "make_injector"]


class HttpInjection(Probe):
    def __init__(self, unit: str, cfg: HttpInjector, clock: Clock) -> None:
        super().__init__(unit, cfg.name, 0.0, clock)
        self.cfg = cfg
        parts = urlsplit(cfg.url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    async def observe(self) -> Observation:
        t0 = self.clock.monotonic()
        try:
            status, body = await http_get(self.host, self.port, self.target, timeout_s=self.cfg.timeout_s,
                                          method=self.cfg.method, body=self.cfg.body.encode())
        except TimeoutError:
            return self._obs(False, {}, f"no answer within {self.cfg.timeout_s:g}s", t0)
        except (OSError, HttpError) as exc:
            return self._obs(False, {}, str(exc) or type(exc).__name__, t0)
        values = {"latency_s": self.clock.monotonic() - t0, "status": float(status)}
        if status not in self.cfg.expect_status:
            return self._obs(False, values, f"status {status}", t0)
        if self.cfg.expect_body is not None and self.cfg.expect_body.encode() not in body:
            return self._obs(False, values, f"answer lacks {self.cfg.expect_body!r}", t0)
        return self._obs(True, values, None, t0)


class KeysInjection(Probe):
    def __init__(self, unit: str, cfg: KeysInjector, clock: Clock, backend: Backend) -> None:
        super().__init__(unit, cfg.name, 0.0, clock)
        self.cfg = cfg
        self.backend = backend

    async def _counter(self) -> float:
        totals = await need(self.backend, Capability.BLOCK_STATS, self.unit).block_stats(self.unit)
        return float(sum(dev.get(self.cfg.watch, 0.0) for dev in totals.values()))

    async def observe(self) -> Observation:
        t0 = self.clock.monotonic()
        try:
            before = await self._counter()
            await need(self.backend, Capability.INJECT_KEYS, self.unit).send_keys(self.unit, self.cfg.text)
            await self.clock.sleep(self.cfg.react_s)
            after = await self._counter()
        except VisorError as exc:
            return self._obs(False, {}, exc.cause, t0)
        return self._obs(True, {f"reaction_{self.cfg.watch}": after - before}, None, t0)


def make_injector(unit: str, cfg: InjectorConfig, clock: Clock, backend: Backend) -> Probe:
    if isinstance(cfg, HttpInjector):
        return HttpInjection(unit, cfg, clock)
    if isinstance(cfg, TypingScheduleInjector):
        from enmei.monitor.rounds import ScheduleInjection  # the schedule's module, loaded when configured

        return ScheduleInjection(unit, cfg, clock, backend)
    return KeysInjection(unit, cfg, clock, backend)
