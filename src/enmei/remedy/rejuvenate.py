"""Rejuvenation: a planned graceful restart at a quiet moment, before aging turns into failure.

This is the seed's software rejuvenation. Given a window (``window_s``), the remedy watches the unit's
load metric (``metric``, e.g. ``latency_s`` or ``cpu_percent``) and restarts at the first moment the
load is at or below the ``quantile`` of its recent history (the last ``history_s``); if no such moment
comes, it restarts when the window ends; with too little history to judge (fewer than 5 values),
it restarts at once. When the unit has never reported ``metric`` (a unit without an HTTP probe has no
``latency_s``) and the decision did not name one, its ``cpu_percent`` (the process probe's) is the load.
The restart itself is graceful: stop with the unit's ``stop_timeout_s``, start, and check that the start
holds. The outcome records the chosen moment, the load then and the threshold, so the choice can be
audited, and the service's real downtime: ``downtime_s`` from the beginning of the stop until the new
instance is started (``stopping_s`` + ``starting_s``), without the ``start_s`` the start is then held
for to see that it lasts (the service already runs then).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from enmei.errors import StartError, StopError
from enmei.model import RemedyState
from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.remedy.handover import handover_restart, wants_handover

__all__ = ["Rejuvenate", "quiet_threshold"]

_POLL_S = 0.25
_FALLBACK_METRIC = "cpu_percent"


def quiet_threshold(values: list[float], quantile: float) -> float | None:
    """The load at or below which a moment counts as quiet; None with too little history (< 5 values).

    >>> quiet_threshold([5.0, 1.0, 4.0, 2.0, 3.0], 0.25)
    2.0
    """
    finite = [v for v in values if np.isfinite(v)]
    if len(finite) < 5:
        return None
    return float(np.quantile(np.asarray(finite), quantile))


class Rejuvenate(Remedy):
    name: ClassVar[str] = "rejuvenate"
    description: ClassVar[str] = "graceful restart at the quietest moment within a window"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "window_s": (int, float), "metric": str, "quantile": float, "history_s": (int, float), "why": str,
    }
    bounds: ClassVar[Mapping[str, tuple[float, float]]] = {"quantile": (0.0, 1.0)}

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        spec = unit.spec
        window = float(args.get("window_s", spec.rejuvenate.window_s))
        return window + float(spec.stop_bound_s() + spec.start_bound_s() + spec.restart.deadline_s)

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        spec = unit.spec
        window = float(args.get("window_s", spec.rejuvenate.window_s))
        metric = str(args.get("metric", spec.rejuvenate.load_metric))
        quantile = float(args.get("quantile", spec.rejuvenate.quiet_quantile))
        history_s = float(args.get("history_s", 300.0))
        clock = unit.clock
        t0 = clock.monotonic()
        history = [v for _, v in unit.load_history(metric, t0 - history_s)]
        if not history and "metric" not in args and unit.load_history(_FALLBACK_METRIC, t0 - history_s):
            metric = _FALLBACK_METRIC
            history = [v for _, v in unit.load_history(metric, t0 - history_s)]
        threshold = quiet_threshold(history, quantile)
        reason = "window ended"
        load: float | None = None
        while True:
            recent = unit.load_history(metric, clock.monotonic() - max(2 * _POLL_S, 1.5))
            if recent:
                load = recent[-1][1]
            if threshold is not None and load is not None and load <= threshold:
                reason = "quiet moment"
                break
            if threshold is None:
                reason = "too little load history to wait for a quiet moment: at once"
                break
            if clock.monotonic() - t0 >= window:
                break
            await clock.sleep(_POLL_S)
        waited = clock.monotonic() - t0
        data: dict[str, Any] = {"metric": metric, "waited_s": round(waited, 3), "load": load,
                                "threshold": threshold, "reason": reason}
        if wants_handover(unit):  # restart_mode = "handover": no refused connection, no downtime
            result = await handover_restart(unit)
            data.update(result.data)
            if result.state is not RemedyState.SUCCEEDED:
                return Result.failed(result.detail, **data)
            return Result.ok(f"rejuvenated by handover after {waited:.1f}s ({reason})", **data)
        down_at = clock.monotonic()
        if unit.alive():
            try:
                await unit.stop(spec.stop_timeout_s)
            except StopError as exc:
                return Result.failed(f"could not stop: {exc.cause}", **data)
        stopped_at = clock.monotonic()
        try:
            await unit.start()
        except StartError as exc:
            return Result.failed(f"start failed: {exc.cause}", **data)
        up_at = clock.monotonic()
        data.update({"downtime_s": round(up_at - down_at, 3), "stopping_s": round(stopped_at - down_at, 3),
                     "starting_s": round(up_at - stopped_at, 3)})
        why = await unit.wait_stable()
        if why is not None:
            return Result.failed(why, **data)
        return Result.ok(f"rejuvenated after {waited:.1f}s ({reason}); down {up_at - down_at:.2f}s", **data)
