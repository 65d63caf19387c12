"""The engine's side of decisions: bounds on every argument (D7), the restart budget enforced on every
decision whoever made it (D6), and an operator's command overriding a waiting repair."""

from __future__ import annotations

from pathlib import Path

from enmei.model import Decision, Event, Tick, UnitState
from enmei.policy.base import View
from enmei.policy.builtin import BuiltinPolicy
from enmei.policy.manager import PolicyManager
from enmei.policy.sandbox import InProcessSandbox
from support.harness import start_rig

ONE = """
[units.a]
command = ["/bin/true"]
start_s = 0.5
stop_timeout_s = 1.0
[units.a.restart]
backoff_first_s = 0.5
budget = 2
window_s = 300
[units.a.escalate]
retry_every_s = 30
"""

HUGE_DELAY = """load("@enmei", "restart")

def on_exit(event, ctx):
    if event.detail.get("code") == 7:  # not on the trial events: a refusal at run time
        return [restart(ctx.unit, delay_s = 1e300)]
    return [restart(ctx.unit)]
"""


async def test_an_out_of_range_delay_is_refused_with_the_handlers_line(tmp_path: Path) -> None:
    # D7: restart(u, delay_s=1e300) used to be accepted: the unit waited in BACKOFF forever.
    path = tmp_path / "huge.star"
    path.write_text(HUGE_DELAY)
    rig = await start_rig(tmp_path, ONE, policy=PolicyManager(path, sandbox=InProcessSandbox))
    try:
        await rig.advance(0.7)
        rig.backend.crash("a", code=7)
        await rig.quiesce()
        assert rig.engine.units["a"].state is not UnitState.RUNNING
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING, max_s=5.0)
        errors = [b for b in rig.bodies("policy") if b.get("event") == "error"]
        assert errors, rig.kinds()
        assert errors[0]["kind"] == "decision"
        assert "'delay_s' must be from 0 to 3600" in errors[0]["error"]
        assert (errors[0]["file"], errors[0]["line"]) == (str(path), 3)  # the line of `def on_exit`
        restarts = [b for b in rig.bodies("decision", "a") if b["action"] == "restart"]
        assert restarts[-1]["policy"] == "builtin-1"  # the fallback restarted it
        assert all(b["args"].get("delay_s", 0) <= 3600 for b in restarts)
    finally:
        await rig.close()


async def test_an_operator_refuses_nonsense_too_and_a_far_not_before_is_refused(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE)
    try:
        await rig.advance(0.7)
        rig.engine.submit("restart", "a", {"delay_s": float("inf")})
        rig.engine.submit("stop", "a", {"timeout_s": -1})
        rig.engine.submit("monitor", "a", {"probe": "x", "interval_s": 1.0, "for_s": 1e300})
        await rig.quiesce()
        rig.engine._execute(Decision("restart", "a", "later", {}, not_before=1e300, policy="t", rule="t"), None)
        rejected = [b["rejected"] for b in rig.bodies("decision", "a") if "rejected" in b]
        assert len(rejected) == 4, rejected
        assert "'delay_s' must be from 0 to 3600, not inf" in rejected[0]
        assert "'timeout_s' must be from 0 to 3600" in rejected[1]
        assert "'for_s' must be a positive number of seconds, at most 86400" in rejected[2]
        assert "may wait at most 86400s" in rejected[3]
        assert rig.engine.units["a"].state is UnitState.RUNNING
    finally:
        await rig.close()


class LongDelay(BuiltinPolicy):
    """Restarts an exited unit after an hour (within bounds, but long)."""

    version = "long-delay-1"

    def decide(self, event: Event, view: View) -> list[Decision]:
        return [Decision("restart", d.unit, d.reason, {"delay_s": 3000.0}, policy=self.version, rule=d.rule)
                if d.action == "restart" else d for d in super().decide(event, view)]


async def test_an_operators_restart_overrides_a_repair_waiting_out_its_delay(tmp_path: Path) -> None:
    # D7: the operator's restart used to be "suppressed" while the policy's restart waited.
    rig = await start_rig(tmp_path, ONE, policy=LongDelay())
    try:
        await rig.advance(0.7)
        rig.backend.crash("a", code=1)
        await rig.quiesce()
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.BACKOFF, max_s=2.0)
        rig.engine.submit("restart", "a")
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING, max_s=3.0)
        manual = [b for b in rig.bodies("decision", "a") if b["rule"] == "manual"]
        assert manual and "suppressed" not in manual[0] and "rejected" not in manual[0]
        cancelled = [b for b in rig.bodies("remedy.outcome", "a") if b["state"] == "cancelled"]
        assert cancelled, "the waiting restart is cancelled, on the record"
    finally:
        await rig.close()


class RestartEverything:
    """D6's hostile policy: restart every unit on every tick."""

    version = "restart-everything-1"

    def decide(self, event: Event, view: View) -> list[Decision]:
        if not isinstance(event, Tick):
            return []
        return [Decision("restart", name, "every tick", {"delay_s": 0.0}, policy=self.version, rule="always")
                for name in view.units]


async def test_the_restart_budget_is_enforced_against_a_policy(tmp_path: Path) -> None:
    # D6: this policy made 22 restarts in 40 s with budget = 2, and no alert.
    rig = await start_rig(tmp_path, ONE, policy=RestartEverything())
    try:
        await rig.advance(40.0, step=0.25)
        runs = [b for b in rig.bodies("remedy.start", "a") if b["action"] in ("restart", "escalate")]
        restarts = [b for b in runs if b["action"] == "restart"]
        assert len(restarts) == 2, [b["action"] for b in runs]
        refused = [b for b in rig.bodies("decision", "a") if "refused by the engine" in b.get("rejected", "")]
        assert refused and "restart budget spent (2 restarts in 300s, budget 2)" in refused[0]["rejected"]
        escalations = [b for b in rig.bodies("decision", "a") if b["action"] == "escalate"]
        assert escalations[0]["rule"] == "budget-enforced" and escalations[0]["cause_seq"] is not None
        # Slow retries: at most one escalation started per retry_every_s (30 s) after the budget ran out.
        assert 1 <= len([b for b in runs if b["action"] == "escalate"]) <= 2
        alerts = rig.bodies("alert", "a")
        assert alerts and alerts[0]["severity"] == "critical" and "budget spent" in alerts[0]["message"]
    finally:
        await rig.close()


async def test_an_operators_restart_is_counted_but_never_refused_by_the_budget(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE)
    try:
        await rig.advance(0.7)
        for n in range(1, 4):
            rig.engine.submit("restart", "a")
            assert await rig.advance_until(
                lambda n=n: len([b for b in rig.bodies("remedy.outcome", "a") if b["action"] == "restart"]) == n,
                max_s=3.0)
        outcomes = [b for b in rig.bodies("remedy.outcome", "a") if b["action"] == "restart"]
        assert [b["state"] for b in outcomes] == ["succeeded"] * 3
        assert rig.engine.view().units["a"].budget_left == 0
    finally:
        await rig.close()


def test_the_vocabulary_docstring_examples_run() -> None:
    import doctest

    import enmei.policy.actions

    result = doctest.testmod(enmei.policy.actions)
    assert result.failed == 0 and result.attempted >= 3


def test_one_vocabulary_feeds_the_policy_library_and_the_encoding() -> None:
    from enmei.policy.actions import ENGINE_ACTIONS, actions, restart_actions
    from enmei.policy.encode import remedies_for

    table = remedies_for()
    assert table["@engine"] == list(ENGINE_ACTIONS) == [n for n, a in actions().items() if a.engine]
    assert table["@restart"] == restart_actions() == ["escalate", "restart"]
