"""D5: a slow policy never stalls supervision. Its evaluation runs off the loop under a deadline; a late
evaluation is decided by the fallback (journaled as an overrun), its late answer dropped; after three
overruns in a row the policy is reverted. Order of decisions is kept."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from enmei.model import Decision, Event, Tick, UnitEvent, UnitState
from enmei.policy.base import View
from enmei.policy.builtin import BuiltinPolicy
from support.harness import start_rig

TWO = """
[units.a]
command = ["/bin/true"]
start_s = 0.5
[units.b]
command = ["/bin/true"]
start_s = 0.5
"""


class Stuck(BuiltinPolicy):
    """A policy in a sandbox process that stalls on every tick (as long as ``stall_s``, real time, like an
    evaluation the sandbox kills) and answers exits itself."""

    version = "stuck-1"
    offloop = True

    def __init__(self) -> None:
        self.release = threading.Event()  # set: stop stalling
        self.entered = threading.Event()
        self.stall_s = 1.0
        self.reverts: list[str] = []
        self.threads: set[str] = set()
        self.noted: list[tuple[str, list[str]]] = []

    def decide(self, event: Event, view: View) -> list[Decision]:
        self.threads.add(threading.current_thread().name)
        if isinstance(event, Tick):
            if self.release.is_set():
                return []
            self.entered.set()
            if self.release.wait(self.stall_s):
                return []
            # A late answer: it must never be carried out.
            return [Decision("stop", name, "late", policy=self.version, rule="late") for name in view.units]
        return [Decision(d.action, d.unit, d.reason, d.args, policy=self.version, rule=d.rule)
                for d in super().decide(event, view)]

    def revert(self, reason: str) -> list[dict[str, Any]]:
        self.reverts.append(reason)
        self.release.set()  # as a reverted manager would, the policy is fast again
        return [{"event": "suspended", "policy": self.version, "reason": reason}]

    def note(self, event: Event, decisions: list[Decision], now: float) -> None:
        self.noted.append((type(event).__name__, [d.action for d in decisions]))


async def test_a_stuck_policy_does_not_stop_a_crashed_unit_from_being_restarted(tmp_path: Path) -> None:
    policy = Stuck()
    rig = await start_rig(tmp_path, TWO, policy=policy)
    decider = rig.engine.decider

    def overruns() -> list[dict[str, Any]]:
        return [b for b in rig.bodies("policy") if b["event"] == "overrun"]

    try:
        await rig.advance(0.7)
        assert decider.offloop
        await rig.advance(0.5)  # a tick: the policy stalls on it, in its own thread
        assert await rig.until(policy.entered.is_set)
        assert policy.threads == {"enmei-policy_0"}
        assert await rig.until(overruns, real_s=5.0)
        overrun = overruns()[0]
        assert overrun["policy"] == "stuck-1" and overrun["handler"] == "on_tick" and overrun["in_a_row"] == 1
        assert overrun["fallback"] == "builtin-1" and overrun["deadline_s"] == decider.deadline_s
        # While the policy is stuck, a crash is decided at once by the fallback, on the loop.
        rig.backend.crash("a", code=1)
        assert await rig.until(lambda: any(b["action"] == "restart" for b in rig.bodies("decision", "a")))
        restart = next(b for b in rig.bodies("decision", "a") if b["action"] == "restart")
        assert restart["policy"] == "builtin-1" and restart["rule"] == "exit-restart"
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING, max_s=3.0)
        # Each tick after the worker is free again overruns once more; the third in a row reverts it (once).
        for _ in range(20):
            if policy.reverts:
                break
            await rig.until(lambda: not decider.busy, real_s=5.0)
            await rig.advance(1.0)
            await rig.until(lambda: bool(policy.reverts) or decider.busy, real_s=5.0)
        assert await rig.until(lambda: any(b["event"] == "suspended" for b in rig.bodies("policy")), real_s=5.0)
        assert [b["in_a_row"] for b in overruns()][:3] == [1, 2, 3]
        assert len(policy.reverts) == 1 and "did not answer within" in policy.reverts[0]
        await rig.until(lambda: not decider.busy, real_s=5.0)
        await rig.advance(1.0)
        assert await rig.until(lambda: ("UnitEvent", ["restart"]) in policy.noted)
        assert not [b for b in rig.bodies("decision") if b["rule"] == "late"]
        assert rig.engine.units["b"].state is UnitState.RUNNING
    finally:
        policy.release.set()
        await rig.close()


class Ordered(BuiltinPolicy):
    """Answers in its own thread, slowly enough that events queue behind each other."""

    version = "ordered-1"
    offloop = True

    def __init__(self) -> None:
        self.gate = threading.Event()

    def decide(self, event: Event, view: View) -> list[Decision]:
        if isinstance(event, UnitEvent):
            self.gate.wait(10)
            return [Decision("none", event.unit, f"{event.kind} {event.detail.get('code')}", policy=self.version,
                             rule="seen")]
        return []


async def test_decisions_are_carried_out_in_event_order(tmp_path: Path) -> None:
    policy = Ordered()
    rig = await start_rig(tmp_path, TWO, policy=policy)
    try:
        rig.engine.decider.deadline_s = 30.0  # this test is about order, not about the deadline
        await rig.advance(0.7)
        for code in (1, 2, 3):
            rig.engine.decider.decide(UnitEvent("a", "exited", 0.0, {"code": code}),  # type: ignore[arg-type]
                                      rig.engine.view(), None)
        policy.gate.set()
        assert await rig.until(lambda: len([b for b in rig.bodies("decision", "a") if b["rule"] == "seen"]) == 3)
        reasons = [b["reason"] for b in rig.bodies("decision", "a") if b["rule"] == "seen"]
        assert reasons == ["exited 1", "exited 2", "exited 3"]
    finally:
        policy.gate.set()
        await rig.close()
