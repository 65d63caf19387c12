"""Operator commands are never silently suppressed; ``reset`` clears budget, backoff and breakers (issue 12
item 7, the nginx story: a `start` after the fix was suppressed by a running escalation, ~4 minutes down).

A real engine with the shipped Starlark library over the fake backend and a fake clock. On the code before
this change, ``Engine.control`` and ``reset`` did not exist, a cancelled repair's outcome did not say who
cancelled it, and a re-queued operator command that met a repair started meanwhile was suppressed.
"""

from __future__ import annotations

from pathlib import Path

from enmei.engine.loop import Command
from enmei.model import Severity, UnitState, Verdict, VerdictKind
from support.harness import Rig, start_rig

CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[units.a.restart]
backoff_first_s = 1.0
budget = 50
window_s = 3600
[units.a.escalate]
retry_every_s = 60
breaker_failures = 3
breaker_open_s = 300
"""


async def _escalated(rig: Rig) -> None:
    """Crash the unit until the shipped breaker opens: escalated, next try in 300 s."""
    await rig.advance(1.5)
    rig.backend.die_after_s = 0.2  # the broken config: every start dies at once
    rig.backend.crash("a", code=1)
    assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.ESCALATED, 60)
    assert rig.engine.units["a"].remedy is not None and rig.engine.units["a"].remedy.action == "escalate"
    rig.backend.die_after_s = None  # the operator fixed it


async def test_an_operators_start_preempts_an_escalation_and_the_journal_says_who(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await _escalated(rig)
        escalation = rig.engine.units["a"].remedy
        assert escalation is not None
        t0 = rig.clock.monotonic()
        reply = rig.engine.control("start", "a", by="operator:ctl")
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING, 5)
        assert rig.clock.monotonic() - t0 < 5  # not after the breaker's 300 s
        answer = reply.result()
        assert answer["preempted"]["remedy_id"] == escalation.remedy_id
        assert answer["preempted"]["action"] == "escalate" and answer["suppressed"] is None
        cancelled = [b for b in rig.bodies("remedy.outcome", "a") if b["remedy_id"] == escalation.remedy_id]
        assert cancelled[0]["state"] == "cancelled"
        assert cancelled[0]["detail"] == "pre-empted by operator:ctl: start requested"
        assert cancelled[0]["data"]["cancelled_by"] == "operator:ctl"
        decision = [b for b in rig.bodies("decision", "a") if b["policy"] == "operator:ctl"][-1]
        assert decision["action"] == "start" and decision["preempted"]["action"] == "escalate"
        assert not any("suppressed" in b for b in rig.bodies("decision", "a") if b["rule"] == "manual")
    finally:
        await rig.close()


async def test_a_repair_started_while_the_command_waited_is_preempted_too(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await rig.advance(1.5)
        # The policy's restart of a failing probe starts while an operator's (re-queued) stop waits its turn.
        rig.engine.queue.put_nowait(Verdict("a", "probe-failures:http", VerdictKind.PROBE_FAILED, Severity.CRITICAL,
                                            rig.clock.monotonic(), "probe failed"))
        await rig.settle()
        policy_run = rig.engine.units["a"].remedy
        assert policy_run is not None and policy_run.action == "restart"
        fut = rig.engine.control("stop", "a", by="operator:web")
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.STOPPED, 30)
        answer = fut.result()
        assert answer["preempted"]["remedy_id"] == policy_run.remedy_id and answer["suppressed"] is None
        # A command that comes back after a pre-emption and meets another repair pre-empts that one too.
        rig.engine.submit("start", "a", by="operator:web")
        await rig.settle()
        again = rig.engine.units["a"].remedy
        assert again is not None
        rig.engine.queue.put_nowait(Command("stop", "a", {}, "operator:web",
                                            preempted={"remedy_id": "x", "action": "escalate"}))
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.STOPPED, 30)
        stops = [b for b in rig.bodies("decision", "a") if b["action"] == "stop"]
        assert stops and all("suppressed" not in b for b in stops)
        assert stops[-1]["preempted"]["remedy_id"] == again.remedy_id
    finally:
        await rig.close()


async def test_other_operator_commands_during_a_repair_are_refused_aloud(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await _escalated(rig)
        fut = rig.engine.control("rejuvenate", "a", by="operator:ctl")
        await rig.settle()
        answer = fut.result()
        assert "escalate" in answer["suppressed"] and "pre-empts" in answer["suppressed"]
        assert rig.engine.units["a"].remedy is not None and rig.engine.units["a"].remedy.action == "escalate"
    finally:
        await rig.close()


async def test_reset_closes_the_breaker_and_starts_an_escalated_unit_at_once(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await _escalated(rig)
        unit = rig.engine.units["a"]
        assert unit.view(rig.clock.monotonic()).restarts_in_window > 0
        t0 = rig.clock.monotonic()
        fut = rig.engine.control("reset", "a", by="operator:ctl")
        assert await rig.advance_until(lambda: unit.state is UnitState.RUNNING, 5)
        assert rig.clock.monotonic() - t0 < 5  # at once, not after the breaker's 300 s
        answer = fut.result()
        assert answer["preempted"]["action"] == "escalate" and answer["start"] is True
        reset = rig.bodies("unit.reset", "a")
        assert len(reset) == 1 and reset[0]["by"] == "operator:ctl" and reset[0]["cleared"]["restarts_in_window"] > 0
        view = unit.view(rig.clock.monotonic())
        assert view.last_reset == t0 and view.restarts_in_window == 0 and view.as_dict()["last_reset"] == t0
        # The failures before the reset are not counted again: the next crash is a plain retry, and the
        # breaker opens only after breaker_failures new ones.
        # (the instance lived its 1 s start, the first step: the retry starts at once)
        rig.backend.crash("a", code=1)
        await rig.quiesce()
        last = rig.bodies("decision", "a")[-1]
        assert last["action"] == "restart" and last["args"]["delay_s"] == 0.0, last
    finally:
        await rig.close()


async def test_reset_of_an_unknown_unit_names_the_known_ones(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        fut = rig.engine.control("reset", "nope", by="operator:ctl")
        await rig.settle()
        assert fut.result()["rejected"] == "no unit named 'nope' (units: a)"
    finally:
        await rig.close()
