"""D13: alerts are bounded. A policy returning 32 alerts per tick used to run 32 alert commands a second
(64 at once); now at most two run at once, a burst per source is journaled and sent, the rest is
coalesced into one counted record per window, and the engine's own alerts are not crowded out."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enmei.model import Decision, Event, Severity, Tick
from enmei.policy.base import View
from support.harness import start_rig

ONE = """
[supervisor]
alert_command = ["/bin/true"]

[units.a]
command = ["/bin/true"]
start_s = 0.5
"""


class Shouting:
    """32 alerts (distinct messages) on every tick."""

    version = "shouting-1"

    def __init__(self) -> None:
        self.ticks = 0

    def decide(self, event: Event, view: View) -> list[Decision]:
        if not isinstance(event, Tick):
            return []
        self.ticks += 1
        return [Decision("alert", "a", f"alert {self.ticks}.{i}", {"severity": "warning"}, policy=self.version,
                         rule="shout") for i in range(32)]


class SlowCommand:
    """Stands in for the alert command's process: each run lasts until released; counts what it is given."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.payloads: list[Mapping[str, Any]] = []

    async def __call__(self, payload: Mapping[str, Any]) -> str | None:
        self.payloads.append(payload)
        await self.release.wait()
        return None


async def test_a_flood_of_alerts_is_bounded_coalesced_and_counted(tmp_path: Path) -> None:
    policy = Shouting()
    rig = await start_rig(tmp_path, ONE, policy=policy)
    command = SlowCommand()
    rig.engine.alerts.runner = command
    try:
        await rig.advance(12.0)
        gate = rig.engine.alerts
        assert policy.ticks >= 11
        assert gate.most_running == 2  # never more than two alert commands at once
        decisions = [b for b in rig.bodies("decision", "a") if b["action"] == "alert"]
        assert len(decisions) == 32 * policy.ticks  # every decision is on the record
        alerts = rig.bodies("alert", "a")
        # A burst of 10 per 10 s from the policy (plus the refill), not 32 a second.
        assert 10 <= len(alerts) <= 10 + 2 * 10 + 1, len(alerts)
        summaries = [b for b in rig.bodies("alert") if "coalesced" in b]
        assert summaries, "the drop is counted, on the record"
        counted = sum(b["coalesced"] for b in summaries)
        assert counted + len(alerts) + gate._window.coalesced.total() == len(decisions)
        assert summaries[0]["by_unit"]["a"] > 0 and summaries[0]["command_dropped"] >= 0
        # The engine's own alerts have their own bucket: a flood from the policy does not silence them.
        assert rig.engine.alerts.alert("a", "engine's own", Severity.CRITICAL, {}) is not None
        assert len(command.payloads) == 2
        command.release.set()
        await rig.advance(1.0)
        assert gate.running == 0
        assert len(command.payloads) <= 2 + gate.max_queued + 1  # the rest was counted as dropped
    finally:
        command.release.set()
        await rig.close()


async def test_the_same_alert_again_soon_is_counted_not_repeated(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE)
    command = SlowCommand()
    command.release.set()
    rig.engine.alerts.runner = command
    try:
        for _ in range(5):
            rig.engine.alert("a", "disk almost full", Severity.WARNING, {})
        await rig.quiesce()
        assert [b["message"] for b in rig.bodies("alert", "a")] == ["disk almost full"]
        await rig.advance(11.0)
        summary = [b for b in rig.bodies("alert") if "coalesced" in b]
        assert summary and summary[0]["coalesced"] == 4 and summary[0]["by_reason"] == {"a|warning|repeated": 4}
        assert len(command.payloads) == 2  # the alert and the summary
    finally:
        await rig.close()
