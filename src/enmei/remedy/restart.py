"""Restart-family remedies: restart (with a backoff delay), start, stop, and escalate.

``restart``: wait ``delay_s`` in BACKOFF, stop the unit if it is up, start it, and succeed only if the
start holds for the unit's ``start_s``. ``escalate``: the restart budget is spent; raise an alert, wait
the slow retry interval (``retry_in_s``) in ESCALATED, then try one start. A failed escalate comes back
to the policy as an outcome, which escalates again: retries continue, slowly, each one alerted — never
a tight loop, never a silent give-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from enmei.errors import StartError, StopError
from enmei.model import Severity, UnitState
from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.remedy.handover import handover_restart, wants_handover

__all__ = ["Escalate", "Restart", "Start", "Stop", "start_and_hold"]

_SLACK_S = 10.0


async def start_and_hold(unit: UnitControl) -> Result:
    """Start the unit and check that the start holds for its ``start_s``."""
    try:
        await unit.start()
    except StartError as exc:
        return Result.failed(f"start failed: {exc.cause}")
    why = await unit.wait_stable()
    if why is not None:
        return Result.failed(why)
    return Result.ok("running")


class Restart(Remedy):
    name: ClassVar[str] = "restart"
    description: ClassVar[str] = "stop (if up), wait the backoff delay, start, and check that the start holds"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"delay_s": (int, float), "graceful": bool}
    bounds: ClassVar[Mapping[str, tuple[float, float]]] = {"delay_s": (0.0, 3600.0)}
    counts_as_restart: ClassVar[bool] = True

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        spec = unit.spec
        delay = float(args.get("delay_s", 0.0))
        return delay + float(spec.stop_bound_s() + spec.start_bound_s() + spec.restart.deadline_s)

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        delay = float(args.get("delay_s", 0.0))
        if args.get("graceful", True) and wants_handover(unit):
            # restart_mode = "handover": the old instance serves until the new one is ready (and through
            # the delay too); a failed handover leaves the old one serving (the outcome says so).
            if delay > 0:
                await unit.clock.sleep(delay)
            result = await handover_restart(unit)
            return Result(result.state, result.detail, {**result.data, "delay_s": delay, "mode": "handover"})
        if unit.alive():
            try:
                await unit.stop(unit.spec.stop_timeout_s if args.get("graceful", True) else 0.1)
            except StopError as exc:
                return Result.failed(f"could not stop: {exc.cause}")
        if delay > 0:
            unit.set_state(UnitState.BACKOFF, f"waiting {delay:g}s before restarting")
            await unit.clock.sleep(delay)
        result = await start_and_hold(unit)
        return Result(result.state, result.detail, {**result.data, "delay_s": delay})


class Start(Remedy):
    name: ClassVar[str] = "start"
    description: ClassVar[str] = "start a unit that is not running"

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return float(unit.spec.start_bound_s() + unit.spec.restart.deadline_s)

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        if unit.alive():
            return Result.ok("already running")
        return await start_and_hold(unit)


class Stop(Remedy):
    name: ClassVar[str] = "stop"
    description: ClassVar[str] = "stop a unit gracefully (SIGTERM, timeout, SIGKILL); it stays stopped"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"timeout_s": (int, float)}
    bounds: ClassVar[Mapping[str, tuple[float, float]]] = {"timeout_s": (0.0, 3600.0)}

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        spec = unit.spec
        others = float(spec.stop_bound_s() - spec.stop_timeout_s)  # a stop command, the forced kill: on top
        return float(args.get("timeout_s", spec.stop_timeout_s)) + others + _SLACK_S

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        if not unit.alive():
            unit.set_state(UnitState.STOPPED, "stop asked while not running")
            return Result.ok("was not running")
        try:
            await unit.stop(float(args.get("timeout_s", unit.spec.stop_timeout_s)))
        except StopError as exc:
            return Result.failed(exc.cause)
        return Result.ok("stopped")


class Escalate(Remedy):
    name: ClassVar[str] = "escalate"
    description: ClassVar[str] = "budget spent: alert, then retry slowly (one start after retry_in_s)"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"retry_in_s": (int, float), "why": str}
    counts_as_restart: ClassVar[bool] = True

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        spec = unit.spec
        retry = float(args.get("retry_in_s", spec.escalate.retry_every_s))
        return retry + float(spec.stop_bound_s() + spec.start_bound_s() + spec.restart.deadline_s)

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        spec = unit.spec
        retry = float(args.get("retry_in_s", spec.escalate.retry_every_s))
        why = str(args.get("why", "restart budget spent"))
        if unit.alive():
            # Up but unhealthy with no budget left: stop it rather than serve errors; retry later.
            try:
                await unit.stop(spec.stop_timeout_s)
            except StopError as exc:
                return Result.failed(f"could not stop: {exc.cause}")
        unit.set_state(UnitState.ESCALATED, f"{why}; next try in {retry:g}s")
        if spec.escalate.alert:
            unit.alert(f"unit {unit.name}: {why}; retrying every {retry:g}s until it holds",
                       Severity.CRITICAL, {"retry_in_s": retry, "why": why})
        await unit.clock.sleep(retry)
        result = await start_and_hold(unit)
        if result.state.value == "succeeded" and spec.escalate.alert:
            unit.alert(f"unit {unit.name}: running again after escalation", Severity.INFO, {})
        return Result(result.state, result.detail, {**result.data, "retry_in_s": retry})
