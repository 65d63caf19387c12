"""What the engine does for decisions that are not remedies: watch harder (``monitor``), act to see the
reaction (``inject``), and tell an operator (the alert command).

These run in the engine's loop and use its probes, injectors and task set; a malformed decision is
answered with the reason it is refused (journaled by the engine as a rejected decision).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from enmei.clock import Clock
from enmei.engine.unit import UnitRuntime
from enmei.model import Observation, RecordKind
from enmei.monitor.base import Probe
from enmei.monitor.rounds import ScheduleInjection
from enmei.policy.actions import check_args

__all__ = ["Services", "inject", "monitor", "run_alert_command"]

log = logging.getLogger(__name__)


class Services(Protocol):
    """What these actions use of the engine (``enmei.engine.loop.Engine`` implements it)."""

    clock: Clock
    probes: dict[str, list[Probe]]
    injectors: dict[str, dict[str, Probe]]
    probe_intervals: dict[tuple[str, str], float]

    @property
    def queue(self) -> asyncio.Queue[Any]: ...

    def record(self, kind: str, unit: str | None, body: Mapping[str, Any]) -> int: ...

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]: ...


def monitor(engine: Services, unit: UnitRuntime, args: Mapping[str, Any]) -> str | None:
    """``monitor``: run probe ``probe`` every ``interval_s`` (for ``for_s``, then back to the config)."""
    problem = check_args("monitor", args)  # the vocabulary's types and bounds
    if problem is not None:
        return problem
    probe = next((p for p in engine.probes.get(unit.name, []) if p.name == args.get("probe")), None)
    if probe is None:
        names = ", ".join(p.name for p in engine.probes.get(unit.name, [])) or "none"
        return f"unit {unit.name} has no probe {args.get('probe')!r} (probes: {names})"
    interval = float(args["interval_s"])
    for_s = args.get("for_s")
    configured = engine.probe_intervals.setdefault((unit.name, probe.name), probe.interval_s)
    probe.interval_s = interval
    if for_s is not None:
        async def back() -> None:
            await engine.clock.sleep(float(for_s))
            probe.interval_s = configured
            engine.record(RecordKind.DECISION, unit.name, {
                "action": "monitor", "args": {"probe": probe.name, "interval_s": configured},
                "reason": f"back to the configured interval after {for_s:g}s", "policy": "engine",
                "rule": "monitor-expired", "cause_seq": None, "not_before": None})

        engine.spawn(back(), f"monitor {unit.name}/{probe.name}")
    return None

def inject(engine: Services, unit: UnitRuntime, args: Mapping[str, Any]) -> str | None:
    """``inject``: run injector ``injector`` ``count`` times, ``every_s`` apart (default once); a typing
    schedule (``enmei.monitor.rounds``) starts a round now, or with ``pause_s`` pauses its rounds."""
    problem = check_args("inject", args)  # the vocabulary's types and bounds
    if problem is not None:
        return problem
    injector = engine.injectors.get(unit.name, {}).get(str(args.get("injector")))
    if injector is None:
        names = ", ".join(engine.injectors.get(unit.name, {})) or "none"
        return f"unit {unit.name} has no injector {args.get('injector')!r} (injectors: {names})"
    if isinstance(injector, ScheduleInjection):  # rounds run by the engine: start one, or pause them
        if args.get("pause_s") is not None:
            injector.pause(float(args["pause_s"]))
            return None
        if not unit.alive():
            return f"unit {unit.name} is not running: no round of {injector.name}"
        return injector.trigger()
    count, every = int(args.get("count", 1)), float(args.get("every_s", 0.0))

    async def runs() -> None:
        for i in range(count):
            if i:
                await engine.clock.sleep(float(every))
            if not unit.alive():
                return
            try:
                obs = await injector.observe()
            except Exception as exc:
                log.exception("injector %s/%s failed", unit.name, injector.name)
                obs = Observation(unit.name, injector.name, False, engine.clock.monotonic(), engine.clock.wall(),
                                  {}, f"injector error: {type(exc).__name__}: {exc}")
            engine.queue.put_nowait(obs)

    engine.spawn(runs(), f"inject {unit.name}/{injector.name}")
    return None


async def run_alert_command(cmd: list[str], payload: Mapping[str, Any], cwd: Path) -> str | None:
    """Run the operator's alert command with ``payload`` as JSON on its stdin (10 s at most).
    Returns why it failed, or None."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, cwd=cwd)
    except OSError as exc:
        return f"alert command {cmd[0]} failed: {exc}"
    try:
        async with asyncio.timeout(10.0):
            _, err = await proc.communicate(json.dumps(payload, default=str).encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return f"alert command {cmd[0]} failed: no exit within 10 s"
    if proc.returncode:
        return f"alert command {cmd[0]} failed: exit code {proc.returncode}: {err.decode(errors='replace')[-200:]}"
    return None
