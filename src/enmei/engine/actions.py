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
from typing import TYPE_CHECKING, Any

from enmei.engine.unit import UnitRuntime
from enmei.model import Observation, RecordKind

if TYPE_CHECKING:
    from enmei.engine.loop import Engine

__all__ = ["inject", "monitor", "run_alert_command"]

log = logging.getLogger(__name__)


def monitor(engine: Engine, unit: UnitRuntime, args: Mapping[str, Any]) -> str | None:
    """``monitor``: run probe ``probe`` every ``interval_s`` (for ``for_s``, then back to the config)."""
    probe = next((p for p in engine.probes.get(unit.name, []) if p.name == args.get("probe")), None)
    if probe is None:
        names = ", ".join(p.name for p in engine.probes.get(unit.name, [])) or "none"
        return f"unit {unit.name} has no probe {args.get('probe')!r} (probes: {names})"
    interval = args.get("interval_s")
    for_s = args.get("for_s")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.1 <= interval <= 3600:
        return "monitor: 'interval_s' must be a number of seconds from 0.1 to 3600"
    if for_s is not None and (isinstance(for_s, bool) or not isinstance(for_s, (int, float)) or for_s <= 0):
        return "monitor: 'for_s' must be a positive number of seconds"
    unknown = set(args) - {"probe", "interval_s", "for_s"}
    if unknown:
        return f"monitor takes no argument {sorted(unknown)[0]!r} (allowed: probe, interval_s, for_s)"
    configured = engine.probe_intervals.setdefault((unit.name, probe.name), probe.interval_s)
    probe.interval_s = float(interval)
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

def inject(engine: Engine, unit: UnitRuntime, args: Mapping[str, Any]) -> str | None:
    """``inject``: run injector ``injector`` ``count`` times, ``every_s`` apart (default once)."""
    injector = engine.injectors.get(unit.name, {}).get(str(args.get("injector")))
    if injector is None:
        names = ", ".join(engine.injectors.get(unit.name, {})) or "none"
        return f"unit {unit.name} has no injector {args.get('injector')!r} (injectors: {names})"
    count, every = args.get("count", 1), args.get("every_s", 0.0)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 1000:
        return "inject: 'count' must be a whole number from 1 to 1000"
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every <= 86400:
        return "inject: 'every_s' must be a number of seconds from 0 to 86400"
    unknown = set(args) - {"injector", "count", "every_s"}
    if unknown:
        return f"inject takes no argument {sorted(unknown)[0]!r} (allowed: injector, count, every_s)"

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
