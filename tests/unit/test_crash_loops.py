"""Crash loops under the shipped policy library: never a tight loop, never a silent give-up.

A real engine with the default Starlark library, over the fake backend and a fake clock: a unit whose
every start fails, a unit that dies just after its start holds (a slow, failing start), and probes that
flap. In each, starts are spaced out, the breaker or the budget escalates, and alerts keep coming.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from enmei.model import Severity, UnitState, Verdict, VerdictKind
from enmei.policy.manager import open_policy
from enmei.policy.sandbox import InProcessSandbox
from support.harness import Rig, start_rig

CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[units.a.restart]
backoff_first_s = 1.0
budget = 5
window_s = 300
[units.a.escalate]
retry_every_s = 60
"""


async def _rig(tmp_path: Path, **prepare: object) -> Rig:
    policy = open_policy(None, sandbox=InProcessSandbox)
    return await start_rig(tmp_path, CONFIG, policy=policy, prepare=prepare)


async def test_every_start_failing_escalates_with_alerts_and_slow_retries(tmp_path: Path) -> None:
    rig = await _rig(tmp_path, fail_starts=10_000)
    try:
        await rig.advance(900, step=0.5)
        starts = [r for r in rig.records if r[1] == "unit.event" and r[3].get("event") == "start_failed"]
        # 15 minutes: the first start, a few restarts with backoff, then the breaker's slow retries.
        assert 4 <= len(starts) <= 12, len(starts)
        alerts = [b for _, k, u, b in rig.records if k == "alert" and u == "a"]
        assert len(alerts) >= 2 and alerts[0]["severity"] == "critical"
        assert rig.engine.units["a"].state is UnitState.ESCALATED
        decisions = [b for _, k, u, b in rig.records if k == "decision" and u == "a"]
        times = [b["now"] for b in decisions if b["action"] in ("restart", "escalate")]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= 0.9 for g in gaps[1:]), gaps  # after the first immediate retry, never a tight loop
    finally:
        await rig.close()


async def test_a_unit_dying_right_after_its_start_holds_trips_the_breaker(tmp_path: Path) -> None:
    rig = await _rig(tmp_path, die_after_s=1.3)  # survives start_s (1.0), then dies
    try:
        await rig.advance(400, step=0.5)
        rules = [b["rule"] for _, k, u, b in rig.records if k == "decision" and u == "a"]
        assert "flapping/open" in rules or "budget-escalate" in rules, rules
        exits = [b for _, k, u, b in rig.records if k == "unit.event" and b.get("event") == "exited"]
        assert len(exits) <= 12, len(exits)
        assert any(k == "alert" for _, k, u, _ in rig.records if u == "a")
    finally:
        await rig.close()


async def test_flapping_probe_verdicts_are_bounded_and_end_in_an_alert(tmp_path: Path) -> None:
    rig = await _rig(tmp_path)
    try:
        await rig.advance(1.5)
        assert rig.engine.units["a"].state is UnitState.RUNNING
        for i in range(30):  # a probe that fails its streak, passes, fails again... every 5 s
            rig.engine.queue.put_nowait(Verdict("a", "probe-failures:http", VerdictKind.PROBE_FAILED, Severity.CRITICAL,
                                                rig.clock.monotonic(), f"probe http failed 3 times ({i})"))
            await rig.advance(5, step=0.5)
        restarts = [b for _, k, u, b in rig.records if k == "decision" and u == "a" and b["action"] == "restart"]
        assert len(restarts) <= 5  # the budget
        alerts = [b for _, k, u, b in rig.records if k == "alert" and u == "a"]
        assert alerts, "a spent budget must raise an alert"
        quiet = [b for _, k, u, b in rig.records if k == "decision" and b.get("rule") == "budget-quiet"]
        assert quiet  # later verdicts are answered on the record, without repeating the alert every time
    finally:
        await rig.close()
