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
    # This test is about replay agreeing with every decision of the sandboxed library, not about deciding
    # off the loop (tests/integration/policy/test_slow_policy.py): evaluate on the loop, so that the fake
    # clock's rig sees each decision when it is idle, and no real-time deadline can hand one to the fallback.
    rig.engine.decider.offloop = False
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
