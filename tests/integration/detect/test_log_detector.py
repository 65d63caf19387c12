"""The text channel end to end: a real process writes to stderr, the log probe reads the captured log,
its lines reach a ``log_pattern`` detector configured in ``[[units.NAME.detectors]]``, and the verdict
is journaled and answered by the shipped policy."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from enmei.box import Reader, verify
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.engine import Engine, journal_for
from enmei.model import UnitState

PY = sys.executable

pytestmark = pytest.mark.integration

SCRIPT = """
import os, sys, time
trigger = sys.argv[1]
for i in range(100000):
    print(f"tick {i}", file=sys.stderr, flush=True)
    if os.path.exists(trigger):
        print(f"ERROR boom {i}: the disk is on fire", file=sys.stderr, flush=True)
    time.sleep(0.1)
"""


async def until(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return bool(pred())


async def test_log_lines_reach_a_log_pattern_detector(tmp_path: Path) -> None:
    trigger = tmp_path / "trigger"
    (tmp_path / "logger.py").write_text(SCRIPT)
    loaded = load_text(f"""
[units.logger]
command = ["{PY}", "{tmp_path / 'logger.py'}", "{trigger}"]
start_s = 0.3
stop_timeout_s = 2

[[units.logger.probes]]
kind = "log"
stream = "stderr"
interval_s = 0.2

[[units.logger.detectors]]
kind = "log_pattern"
name = "fire"
pattern = "ERROR boom"
probe = "log"
count = 3
window_s = 60
""", tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    records: list[tuple[str, str, dict[str, Any]]] = []
    engine.subscribe(lambda _s, k, u, b: records.append((k, u, dict(b))))
    task = asyncio.create_task(engine.run())
    try:
        assert await until(lambda: "logger" in engine.units and engine.units["logger"].state is UnitState.RUNNING
                           and any(k == "unit.event" for k, _, _ in records), 30), "no start"
        assert [d.name for d in engine.judges["logger"]] == ["fire"]
        # Ticks alone match nothing.
        assert await until(lambda: engine.judges["logger"].state()["detectors"][0]["state"]["recent"] == 0
                           and engine.handled > 10, 30)
        assert not [b for k, _, b in records if k == "verdict"]
        trigger.touch()
        assert await until(lambda: any(k == "verdict" for k, _, _ in records), 60), "no verdict"
        verdict = next(b for k, _, b in records if k == "verdict")
        assert verdict["kind"] == "log_anomaly" and verdict["detector"] == "log:fire"
        assert verdict["evidence"]["matches"] >= 3
        assert all("ERROR boom" in line for line in verdict["evidence"]["lines"])
        assert await until(lambda: any(k == "decision" and b.get("action") == "alert" for k, _, b in records), 10)
    finally:
        engine.stop()
        await wait_for(task, 60)
        journal.close()
    assert verify(loaded.journal_path).ok
    with Reader(loaded.journal_path) as r:
        assert any(rec.kind == "verdict" for rec in r.records(kinds=["verdict"]))
