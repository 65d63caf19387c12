"""The engine over the fake backend: lifecycle, restart with backoff, budget and escalation, operators."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from enmei.box import verify
from enmei.model import Decision, Event, UnitState
from enmei.policy.base import View
from enmei.policy.builtin import BuiltinPolicy
from enmei.remedy import REMEDIES, Remedy, Result, UnitControl
from support.harness import start_rig

ONE = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
stop_timeout_s = 3.0
[units.a.restart]
backoff_first_s = 1.0
budget = 3
window_s = 100
[units.a.escalate]
retry_every_s = 30
"""


async def test_autostart_then_running_after_start_grace(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE)
    try:
        assert rig.engine.units["a"].state is UnitState.STARTING
        await rig.advance(1.2)
        assert rig.engine.units["a"].state is UnitState.RUNNING
        assert rig.states("a") == ["starting", "running"]
        outcome = rig.bodies("remedy.outcome", "a")[0]
        assert outcome["action"] == "start" and outcome["state"] == "succeeded"
    finally:
        await rig.close()
    assert rig.states("a")[-2:] == ["stopping", "stopped"]
    assert verify(rig.journal.path).ok


@pytest.mark.parametrize(("policy", "rule", "message", "retry_s"), [
    # The shipped library (what users get): the 4th failure within 120 s trips its flapping breaker first,
    # whose circuit stays open for 300 s.
    (None, "flapping/open", "flapping", 300),
    # The built-in fallback policy: the restart budget (3 in 100 s) is spent; retries every 30 s.
    (BuiltinPolicy(), "budget-escalate", "budget spent", 30),
], ids=["library", "builtin"])
async def test_crash_is_restarted_at_once_then_with_growing_backoff_then_escalated(
        tmp_path: Path, policy: BuiltinPolicy | None, rule: str, message: str, retry_s: float) -> None:
    rig = await start_rig(tmp_path, ONE, policy=policy)
    try:
        await rig.advance(11.2)  # running for restart.reset_after_s (10): its crash is restarted at once
        delays = []
        for _ in range(3):
            rig.backend.crash("a", code=2)
            await rig.quiesce()
            decision = rig.bodies("decision", "a")[-1]
            assert decision["action"] == "restart"
            delays.append(decision["args"]["delay_s"])
            await rig.advance(decision["args"]["delay_s"] + 1.2)
            assert rig.engine.units["a"].state is UnitState.RUNNING
        # healthy: at once; then each retry waits its step (1 s, 2 s) less the 1.2 s the instance lived
        assert delays == pytest.approx([0.0, 0.0, 0.8], abs=1e-6)
        # The next crash escalates, with an alert, and retries slowly.
        rig.backend.crash("a", code=2)
        await rig.quiesce()
        decision = rig.bodies("decision", "a")[-1]
        assert decision["action"] == "escalate" and decision["rule"] == rule
        assert rig.engine.units["a"].state is UnitState.ESCALATED
        alerts = rig.bodies("alert", "a")
        assert alerts and alerts[-1]["severity"] == "critical" and message in alerts[-1]["message"]
        await rig.advance(retry_s - 20)
        assert rig.engine.units["a"].state is UnitState.ESCALATED  # no tight loop: waits retry_s
        await rig.advance(22)
        assert rig.engine.units["a"].state is UnitState.RUNNING
        assert "running again after escalation" in rig.bodies("alert", "a")[-1]["message"]
    finally:
        await rig.close()


async def test_a_unit_that_never_starts_is_escalated_not_looped(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE, prepare={"die_after_s": 0.1})
    try:
        await rig.advance(60, step=0.1)
        starts = [b for b in rig.bodies("unit.event", "a") if b["event"] == "started"]
        # 1 start + 3 restarts (0, 1, 2 s apart) fill the budget; then one slow retry every 30 s.
        assert 4 <= len(starts) <= 7
        escalations = [b for b in rig.bodies("decision", "a") if b["action"] == "escalate"]
        assert len(escalations) >= 1
        assert all(b["severity"] == "critical" for b in rig.bodies("alert", "a")[:1])
    finally:
        await rig.close()


async def test_start_failure_is_journaled_with_its_cause(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE, prepare={"fail_starts": 1})
    try:
        await rig.quiesce()
        failed = [b for b in rig.bodies("unit.event", "a") if b["event"] == "start_failed"]
        assert failed and "not found" in failed[0]["cause"]
        # retried by the policy after backoff_first_s (1 s: a failed start is a retry), then start_s (1 s)
        assert [b["args"].get("delay_s") for b in rig.bodies("decision", "a") if b["action"] == "restart"] == [1.0]
        await rig.advance(2.5)
        assert rig.engine.units["a"].state is UnitState.RUNNING
    finally:
        await rig.close()


async def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE, prepare={"ignore_term": True})
    try:
        await rig.advance(1.2)
        rig.engine.submit("stop", "a")
        await rig.advance(2.0)
        assert rig.engine.units["a"].state is UnitState.STOPPING
        await rig.advance(1.5)
        assert rig.engine.units["a"].state is UnitState.STOPPED
        stopped = [b for b in rig.bodies("unit.event", "a") if b["event"] == "stopped"]
        assert stopped[-1]["signal"] == "SIGKILL"
        await rig.advance(5)
        assert rig.engine.units["a"].state is UnitState.STOPPED  # an operator's stop holds
    finally:
        await rig.close()


async def test_bad_decisions_are_rejected_and_journaled(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE)
    try:
        await rig.advance(1.2)
        rig.engine.submit("explode", "a")
        rig.engine.submit("restart", "nobody")
        rig.engine.submit("restart", "a", {"delay_s": "soon"})
        await rig.quiesce()
        rejected = [b["rejected"] for b in rig.bodies("decision") if "rejected" in b]
        assert any("no remedy named 'explode'" in r for r in rejected)
        assert any("no unit named 'nobody'" in r for r in rejected)
        assert any("'delay_s' must be int or float" in r for r in rejected)
        assert rig.engine.units["a"].state is UnitState.RUNNING
    finally:
        await rig.close()


class BrokenPolicy(BuiltinPolicy):
    version = "broken-1"

    def decide(self, event: Event, view: View) -> list[Decision]:
        if type(event).__name__ == "UnitEvent":
            raise ZeroDivisionError("policy bug")
        return super().decide(event, view)


async def test_a_failing_policy_is_journaled_and_supervision_goes_on(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE, policy=BrokenPolicy())
    try:
        await rig.advance(1.2)
        rig.backend.crash("a", code=1)
        await rig.advance(1.0)
        errors = rig.bodies("policy", "a")
        assert errors and "ZeroDivisionError: policy bug" in errors[0]["error"]
        assert rig.engine.units["a"].state is UnitState.EXITED
        rig.engine.submit("start", "a")
        await rig.advance(1.2)
        assert rig.engine.units["a"].state is UnitState.RUNNING
    finally:
        await rig.close()


class Slow(Remedy):
    name: ClassVar[str] = "slow-test"

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return 5.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        await unit.clock.sleep(60)
        return Result.ok()


async def test_remedy_that_overruns_its_deadline_times_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REMEDIES, "slow-test", Slow)
    rig = await start_rig(tmp_path, ONE)
    try:
        await rig.advance(1.2)
        rig.engine.submit("slow-test", "a")
        await rig.advance(4)
        assert rig.engine.units["a"].remedy is not None
        await rig.advance(2)
        outcome = rig.bodies("remedy.outcome", "a")[-1]
        assert outcome["action"] == "slow-test" and outcome["state"] == "timed_out"
        assert rig.engine.units["a"].remedy is None
        assert rig.engine.units["a"].state is UnitState.RUNNING
    finally:
        await rig.close()


async def test_units_left_running_are_adopted_by_the_next_engine(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE)
    await rig.advance(1.2)
    pid = rig.backend.identity("a").pid  # type: ignore[union-attr]
    rig.engine.stop(leave_running=True)
    await rig.quiesce()
    await rig.task
    rig.journal.close()
    assert (tmp_path / ".enmei" / "units.json").exists()

    rig2 = await start_rig(tmp_path, ONE)
    try:
        assert rig2.engine.units["a"].state is UnitState.RUNNING
        assert rig2.backend.identity("a").pid == pid  # type: ignore[union-attr]
        assert "adopted" in rig2.bodies("unit.state", "a")[0]["reason"]
        rig2.backend.crash("a", sig=9)
        await rig2.quiesce()
        exited = [b for b in rig2.bodies("unit.event", "a") if b["event"] == "exited"]
        assert exited[0]["code"] is None and exited[0]["signal"] is None  # not our child: no status
        await rig2.advance(2.2)  # it ran 1.2 s (< reset_after_s): a retry, after backoff_first_s (1 s)
        assert rig2.engine.units["a"].state is UnitState.RUNNING
        assert rig2.backend.identity("a").pid != pid  # type: ignore[union-attr]
    finally:
        await rig2.close()


@pytest.mark.parametrize("autostart", [False])
async def test_autostart_false_leaves_unit_stopped(tmp_path: Path, autostart: bool) -> None:
    cfg = ONE.replace("start_s = 1.0", f"start_s = 1.0\nautostart = {str(autostart).lower()}")
    rig = await start_rig(tmp_path, cfg)
    try:
        await rig.advance(2)
        assert rig.engine.units["a"].state is UnitState.STOPPED
        assert rig.backend.spawned == []
    finally:
        await rig.close()


async def test_monitor_decisions_change_a_probe_interval_and_bad_ones_are_rejected(tmp_path: Path) -> None:
    cfg = ONE + '[[units.a.probes]]\nkind = "process"\ninterval_s = 5\n'
    rig = await start_rig(tmp_path, cfg)
    try:
        await rig.advance(1.2)
        probe = rig.engine.probes["a"][0]
        rig.engine.submit("monitor", "a", {"probe": "proc", "interval_s": 0.5, "for_s": 10})
        rig.engine.submit("monitor", "a", {"probe": "nope", "interval_s": 0.5})
        rig.engine.submit("monitor", "a", {"probe": "proc", "interval_s": 0.0})
        await rig.quiesce()
        assert probe.interval_s == 0.5
        rejected = [b["rejected"] for b in rig.bodies("decision", "a") if "rejected" in b]
        assert any("has no probe 'nope'" in r for r in rejected)
        assert any("'interval_s' must be" in r for r in rejected)
        await rig.advance(11)
        assert probe.interval_s == 5
        assert rig.bodies("decision", "a")[-1]["rule"] == "monitor-expired"
    finally:
        await rig.close()
