"""D5 with real parts: a policy file whose on_tick makes one slow builtin call (issue 11's exact
expression), in its sandbox process, beside a real unit. Supervision does not stall: a kill -9 of the
unit is restarted within 1 s by the fallback, the loop keeps its pace, the overruns are journaled and the
policy is suspended after three. On the old code the engine waited for the sandbox on its loop (the
restart took 7.9-10.4 s in the issue) and nothing of this was journaled."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from enmei.box import verify
from enmei.clock import wait_for
from enmei.config.load import load_text
from enmei.engine import Engine, journal_for
from enmei.model import UnitState
from enmei.policy.manager import open_policy

pytestmark = pytest.mark.integration

DATA = Path(__file__).parents[2] / "data" / "policy"


async def test_a_slow_policy_file_never_stalls_supervision(tmp_path: Path) -> None:
    shutil.copy(DATA / "slow_tick.star", tmp_path / "slow_tick.star")
    text = (DATA / "slow.enmei.toml").read_text().replace('"/tmp/enmei-slow-policy"', f'"{tmp_path / "state"}"')
    loaded = load_text(text, tmp_path / "enmei.toml")
    assert loaded.policy_path is not None
    policy = open_policy(loaded.policy_path)
    assert policy.offloop  # a policy file runs in a sandbox process
    journal = journal_for(loaded).open()
    engine = Engine(loaded, journal=journal, policy=policy)
    records: list[tuple[float, str, str, dict[str, Any]]] = []
    engine.subscribe(lambda s, k, u, b: records.append((time.monotonic(), k, u, dict(b))))
    task = asyncio.create_task(engine.run())
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:  # how late the loop runs a 20 ms timer
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.02)
            gaps.append(time.monotonic() - t - 0.02)

    async def until(pred: Any, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not pred():
            if time.monotonic() > end:
                return False
            await asyncio.sleep(0.02)
        return True

    def policy_events(name: str) -> list[dict[str, Any]]:
        return [b for _, k, _, b in records if k == "policy" and b.get("event") == name]

    beat = asyncio.create_task(heartbeat())
    pid = None
    try:
        unit = None
        assert await until(lambda: "sleeper" in engine.units and engine.units["sleeper"].state is UnitState.RUNNING,
                           30.0)
        unit = engine.units["sleeper"]
        # Wait until the policy is busy with a slow tick (its first overrun), then kill the unit.
        assert await until(lambda: policy_events("overrun"), 30.0), [b for _, k, _, b in records if k == "policy"]
        ident = unit.backend.identity("sleeper")
        assert ident is not None
        pid = ident.pid
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)

        def restarted() -> float | None:
            for t, k, u, b in records:
                if k == "unit.event" and u == "sleeper" and b.get("event") == "started" and t > t0:
                    return t
            return None

        assert await until(lambda: restarted() is not None, 10.0)
        took = restarted()
        assert took is not None and took - t0 < 1.0, f"restart took {took - t0:.2f}s" if took else ""
        decision = next(b for t, k, u, b in records if k == "decision" and t > t0 and b["action"] == "restart")
        assert decision["policy"] == "builtin-1"  # the fallback decided while the policy was busy
        # After three overruns in a row, the policy (with no earlier version) is suspended.
        assert await until(lambda: policy_events("suspended"), 60.0)
        suspended = policy_events("suspended")[0]
        assert suspended["from"] == policy.version and "did not answer within" in suspended["reason"]
        assert policy.suspended
        assert max(gaps) < 0.5, f"the loop stalled for {max(gaps):.2f}s"
    finally:
        stop.set()
        await beat
        engine.stop()
        await wait_for(task, 60)
        journal.close()
        policy.close()
    assert verify(loaded.journal_path).ok
