"""No sequence of events drives a unit or a remedy into an undefined state (hypothesis stateful test).

The seed model-checks its hypervisor; this is our way: random sequences of crashes, failed starts,
SIGTERM-deaf processes, operator actions and the passing of time, over the real engine, unit state
machine and remedies (the fake backend simulates only the OS edge). After every step the invariants
must hold; an illegal state transition anywhere would surface as an internal-error alert.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from enmei.model import RemedyState, UnitState
from support.harness import Rig, start_rig

CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 0.5
stop_timeout_s = 1.0
[units.a.restart]
backoff_first_s = 0.2
budget = 4
window_s = 20
[units.a.escalate]
retry_every_s = 3
[units.a.rejuvenate]
window_s = 1
"""

DEAD_STATES = {UnitState.PENDING, UnitState.STOPPED, UnitState.EXITED, UnitState.BACKOFF, UnitState.ESCALATED}


class Lifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.tmp = Path(tempfile.mkdtemp(prefix="enmei-machine-"))
        self.rig: Rig = self.loop.run_until_complete(start_rig(self.tmp, CONFIG))

    def run(self, coro) -> None:  # type: ignore[no-untyped-def]
        self.loop.run_until_complete(coro)

    @property
    def unit(self):  # type: ignore[no-untyped-def]
        return self.rig.engine.units["a"]

    @rule(code=st.sampled_from([0, 1, 137]))
    def crash(self, code: int) -> None:
        async def crash() -> None:
            self.rig.backend.crash("a", code=code)
            await self.rig.quiesce()

        self.run(crash())

    @rule(seconds=st.floats(0.05, 4.0))
    def time_passes(self, seconds: float) -> None:
        self.run(self.rig.advance(seconds, step=0.1))

    @rule(n=st.integers(1, 3))
    def next_starts_fail(self, n: int) -> None:
        self.rig.backend.fail_starts += n

    @rule(deaf=st.booleans())
    def sigterm_deaf(self, deaf: bool) -> None:
        self.rig.backend.ignore_term = deaf

    @rule(action=st.sampled_from(["restart", "stop", "start", "rejuvenate", "escalate"]))
    def operator(self, action: str) -> None:
        self.rig.engine.submit(action, "a", {"retry_in_s": 2.0} if action == "escalate" else {})
        self.run(self.rig.quiesce())

    @invariant()
    def process_matches_state(self) -> None:
        unit = self.unit
        if unit.state in DEAD_STATES:
            assert not unit.alive(), f"state {unit.state} but the process is alive"
        if unit.state is UnitState.RUNNING:
            assert unit.alive(), "RUNNING but no process"

    @invariant()
    def remedies_are_in_a_defined_state(self) -> None:
        run = self.unit.remedy
        if run is not None:
            assert run.state in (RemedyState.PENDING, RemedyState.RUNNING)
            assert run.task is not None and not run.task.done()
        for _, kind, _, body in self.rig.records:
            if kind == "remedy.outcome":
                assert body["state"] in {str(s) for s in RemedyState if s.final}
                assert "remedy crashed" not in str(body.get("detail"))

    @invariant()
    def no_internal_errors(self) -> None:
        errors = [b for _, k, _, b in self.rig.records if k == "alert" and "internal error" in str(b.get("message"))]
        assert not errors, errors

    @invariant()
    def one_instance_at_most(self) -> None:
        alive = [p for p in self.rig.backend.world.values() if p.alive and p.pid in self.rig.backend.spawned]
        assert len(alive) <= 1, f"{len(alive)} instances alive"

    def teardown(self) -> None:
        try:
            self.run(self.rig.close())
        finally:
            self.loop.close()
            shutil.rmtree(self.tmp, ignore_errors=True)


Lifecycle.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
test_lifecycle = Lifecycle.TestCase
