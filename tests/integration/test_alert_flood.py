"""D13 with real alert commands: a policy raising 32 alerts per tick never has more than two alert-command
processes running at once (the issue measured 64 on the old code), and what was not sent is counted in
the journal."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from enmei.box import Reader, verify
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.engine import Engine, journal_for
from enmei.model import Decision, Event, Tick
from enmei.policy.base import View

from .conftest import PY

pytestmark = pytest.mark.integration

# The alert command: note its pid in a directory while it runs (half a second), and the most it saw.
COUNTER = """
import os, sys, time
d = sys.argv[1]
sys.stdin.read()
mine = os.path.join(d, str(os.getpid()))
open(mine, "w").close()
n = len([f for f in os.listdir(d) if f.isdigit()])
with open(os.path.join(d, "seen"), "a") as f:
    f.write(f"{n}\\n")
time.sleep(0.5)
os.unlink(mine)
"""


class Shouting:
    version = "shouting-1"

    def decide(self, event: Event, view: View) -> list[Decision]:
        if not isinstance(event, Tick):
            return []
        return [Decision("alert", "a", f"alert {event.mono:.3f}.{i}", {"severity": "warning"}, policy=self.version,
                         rule="shout") for i in range(32)]


async def test_alert_commands_are_bounded_under_a_flood(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    script = tmp_path / "counter.py"
    script.write_text(COUNTER)
    config = f"""
[supervisor]
alert_command = [{json.dumps(PY)}, {json.dumps(str(script))}, {json.dumps(str(runs))}]
tick_s = 0.25

[units.a]
command = ["/bin/sleep", "100000"]
start_s = 0.2
stop_timeout_s = 1.0
"""
    loaded = load_text(config, tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal, policy=Shouting())
    task = asyncio.create_task(engine.run())
    try:
        await asyncio.sleep(4.0)  # 16 ticks: 512 alerts asked for
    finally:
        engine.stop()
        await wait_for(task, 60)
        journal.close()
    end = time.monotonic() + 30
    while [f for f in runs.iterdir() if f.name.isdigit()] and time.monotonic() < end:
        await asyncio.sleep(0.1)  # the last commands finish on their own
    seen = [int(x) for x in (runs / "seen").read_text().split()]
    assert seen and max(seen) <= 2, seen
    assert verify(loaded.journal_path).ok
    alerts = [r.data() for r in Reader(loaded.journal_path).records() if r.kind == "alert"]
    decisions = [r for r in Reader(loaded.journal_path).records() if r.kind == "decision"
                 and r.data().get("action") == "alert"]
    assert len(decisions) >= 32 * 8
    assert len(alerts) < len(decisions) / 4
    assert any(b.get("coalesced") for b in alerts), "the coalesced alerts are counted on the record"
