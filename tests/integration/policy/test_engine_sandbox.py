"""The engine with the default library in a sandbox process (as a policy file would run): it supervises,
and replaying its journal (in another sandbox process) reproduces every decision."""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.policy.manager import load_default
from enmei.policy.replay import replay
from enmei.policy.sandbox import WorkerSandbox
from support.harness import start_rig
from unit.policy.test_replay_engine import TWO, _run

pytestmark = pytest.mark.integration


async def test_engine_on_the_sandboxed_default_library_and_its_replay(tmp_path: Path) -> None:
    policy = load_default(sandbox=WorkerSandbox)
    assert isinstance(policy._box, WorkerSandbox)
    rig = await start_rig(tmp_path, TWO, policy=policy)
    # This test is about replay agreeing with every decision: on a loaded machine a sandbox round trip
    # may exceed the engine's real-time deadline, and the fallback's decisions would then differ.
    rig.engine.decider.deadline_s = 60.0
    try:
        await _run(rig)
    finally:
        await rig.close()
        policy.close()
    assert not [n for n in policy.drain_notices() if n["event"] == "error"]
    again = load_default(sandbox=WorkerSandbox)
    try:
        summary = replay(again, rig.journal.path).summary()
    finally:
        again.close()
    assert summary["agreement"] == 1.0 and summary["decisions_original"] > 10
    assert summary["original_policies"] == [policy.version] == [again.version]
