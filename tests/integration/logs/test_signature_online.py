"""The online verdict end to end: a real process unit's stderr, read by the ``log`` probe, reaches a
``log_signature`` detector in the engine; when an injected fault changes its mix of messages, the
signature names the fault, the verdict is journaled, and the shipped policy applies the signature's
remedy hint (a restart), journaled too."""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from enmei.box import Reader, verify
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.engine import Engine, journal_for
from enmei.logs.signatures import train
from enmei.model import UnitState

PY = sys.executable

pytestmark = pytest.mark.integration

# Normal work, and under the fault (the trigger file exists) a pool that times out now and then.
SCRIPT = """
import os, random, sys, time
trigger = sys.argv[1]
rng = random.Random(os.getpid())
for i in range(100000):
    if os.path.exists(trigger) and rng.random() < 0.5:
        print(f"db pool exhausted, waited {rng.randint(100, 900)} ms for a connection", file=sys.stderr, flush=True)
    else:
        print(f"GET /api/items/{rng.randint(1, 999)} 200 {rng.randint(1, 30)}ms", file=sys.stderr, flush=True)
    time.sleep(0.05)
"""


def _lines(fault: bool, n: int, rng: random.Random) -> list[str]:
    return [f"db pool exhausted, waited {rng.randint(100, 900)} ms for a connection"
            if fault and rng.random() < 0.5 else f"GET /api/items/{rng.randint(1, 999)} 200 {rng.randint(1, 30)}ms"
            for _ in range(n)]


async def until(pred: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        await asyncio.sleep(0.05)
    return bool(pred())


async def test_an_injected_fault_in_a_units_log_is_named_and_remedied(tmp_path: Path) -> None:
    rng = random.Random(1)
    sig = train([("normal", _lines(False, 600, rng)), ("pool_exhausted", _lines(True, 600, rng))],
                application="api", window=20, remedies={"pool_exhausted": "restart"})
    sig_file = tmp_path / "api.signature.json"
    sig.save(sig_file)
    trigger = tmp_path / "trigger"
    (tmp_path / "api.py").write_text(SCRIPT)
    loaded = load_text(f"""
[units.api]
command = ["{PY}", "{tmp_path / 'api.py'}", "{trigger}"]
start_s = 0.3
stop_timeout_s = 2

[[units.api.probes]]
kind = "log"
stream = "stderr"
interval_s = 0.2

[[units.api.detectors]]
kind = "log_signature"
name = "api"
signature = "{sig_file}"
probe = "log"
confirm = 2
""", tmp_path / "enmei.toml")
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal)
    records: list[tuple[str, str, dict[str, Any]]] = []
    engine.subscribe(lambda _s, k, u, b: records.append((k, u, dict(b))))
    task = asyncio.create_task(engine.run())

    def det_state() -> dict[str, Any]:
        return dict(engine.judges["api"].state()["detectors"][0]["state"])

    try:
        assert await until(lambda: "api" in engine.units and engine.units["api"].state is UnitState.RUNNING, 30)
        # normal work: windows are judged normal, no verdict
        assert await until(lambda: det_state()["windows"] >= 3, 60), det_state()
        assert det_state()["last"]["label"] == "normal"
        assert not [b for k, _, b in records if k == "verdict"]
        trigger.touch()
        assert await until(lambda: any(k == "verdict" for k, _, _ in records), 60), det_state()
        verdict = next(b for k, _, b in records if k == "verdict")
        assert verdict["kind"] == "log_signature" and verdict["detector"] == "signature:api"
        assert verdict["evidence"]["class"] == "pool_exhausted" and verdict["evidence"]["remedy"] == "restart"
        assert verdict["evidence"]["p"] >= sig.min_p
        assert await until(lambda: any(k == "decision" and b.get("action") == "restart" for k, _, b in records), 30)
        trigger.unlink()
        assert await until(lambda: any(k == "remedy.outcome" for k, _, _ in records), 60)
    finally:
        engine.stop()
        await wait_for(task, 60)
        journal.close()
    assert verify(loaded.journal_path).ok
    with Reader(loaded.journal_path) as r:
        kinds = [rec.kind for rec in r.records(kinds=["verdict", "decision", "remedy.outcome"])]
        decisions = [json.loads(rec.body) for rec in r.records(kinds=["decision"])]
    assert "verdict" in kinds and "remedy.outcome" in kinds
    assert any(d.get("action") == "restart" and d.get("rule") == "signature-restart" for d in decisions), decisions
