"""The ``rejuvenate_vmm`` remedies over the engine (fake backend, fake time): the unit remedy needs the
``replace_vmm`` capability and reports the backend's figures, its failure keeps the report; the host
remedy goes through every VM unit one at a time, skips what is under repair, stops within its budget."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from enmei.errors import VisorError
from enmei.model import Decision, Event, Tick
from enmei.policy.actions import HOST
from enmei.policy.base import View
from enmei.visor.base import Capability
from enmei.visor.fake import FakeBackend
from support.harness import start_rig

THREE = """
[units.a]
command = ["/bin/true"]
start_s = 0.5
[units.b]
command = ["/bin/true"]
start_s = 0.5
[units.c]
command = ["/bin/true"]
start_s = 0.5
"""


class VmmBackend(FakeBackend):
    """The fake process backend with a hypervisor to replace: each replacement takes 2 s (fake time)."""

    capabilities: ClassVar[frozenset[Capability]] = FakeBackend.capabilities | {Capability.REPLACE_VMM}
    log: ClassVar[list[tuple[str, str, float]]] = []
    failing: ClassVar[set[str]] = set()

    async def rejuvenate_vmm(self, name: str, *, binary: str | None = None) -> dict[str, Any]:
        self.log.append(("begin", name, self.clock.monotonic()))
        await self.clock.sleep(2.0)
        self.log.append(("end", name, self.clock.monotonic()))
        if name in self.failing:
            raise VisorError(name, "rejuvenate_vmm", "migration failed: test; the old QEMU (pid 1) runs on")
        return {"replaced_pid": 1, "pid": 2, "ram": "shared", "downtime_s": 0.012, "switched": True}

    def vmm_report(self, name: str) -> dict[str, Any] | None:
        return {"fell_back": True, "switched": False} if name in self.failing else None


class Once:
    version = "once-1"

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.done = False

    def decide(self, event: Event, view: View) -> list[Decision]:
        if isinstance(event, Tick) and not self.done:
            self.done = True
            return [self.decision]
        return []


async def test_rejuvenate_vmm_reports_the_backends_figures_and_a_failure_keeps_its_report(tmp_path: Path) -> None:
    VmmBackend.log, VmmBackend.failing = [], {"b"}
    rig = await start_rig(tmp_path, THREE, backend_cls=VmmBackend)
    try:
        await rig.advance(1.0)  # the starts held
        rig.engine.submit("rejuvenate_vmm", "a")
        rig.engine.submit("rejuvenate_vmm", "b")
        await rig.advance(5.0)
        out = {u: b for _, k, u, b in rig.records if k == "remedy.outcome" and b["action"] == "rejuvenate_vmm"}
        assert out["a"]["state"] == "succeeded" and out["a"]["data"]["downtime_s"] == 0.012
        assert "guest paused 12.0 ms" in out["a"]["detail"]
        assert out["b"]["state"] == "failed" and "runs on" in out["b"]["detail"]
        assert out["b"]["data"] == {"fell_back": True, "switched": False}
        assert not [b for b in rig.bodies("decision") if b["action"] == "restart"]  # not a restart
    finally:
        await rig.close()


async def test_a_process_backend_cannot_have_it(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, THREE)
    try:
        rig.engine.submit("rejuvenate_vmm", "a")
        await rig.advance(1.0)
        (decision,) = [b for b in rig.bodies("decision") if b["action"] == "rejuvenate_vmm"]
        assert "needs replace_vmm" in decision["rejected"]
    finally:
        await rig.close()


async def test_all_units_one_at_a_time_within_the_budget(tmp_path: Path) -> None:
    VmmBackend.log, VmmBackend.failing = [], set()
    policy = Once(Decision("rejuvenate_vmm_all", HOST, "QEMU processes aging", {"budget_s": 3.0, "gap_s": 0.5},
                           policy="once-1", rule="vmm"))
    rig = await start_rig(tmp_path, THREE, backend_cls=VmmBackend, policy=policy)
    try:
        await rig.advance(15.0)
        (outcome,) = rig.bodies("remedy.outcome", HOST)
        units: Mapping[str, Any] = outcome["data"]["units"]
        # a (0-2 s), gap, b (2.5-4.5 s); c would begin past the 3 s budget: skipped, on the record
        assert [units[n]["state"] for n in ("a", "b", "c")] == ["succeeded", "succeeded", "skipped"]
        assert "budget" in units["c"]["detail"]
        assert outcome["state"] == "succeeded" and outcome["detail"] == "2 of 3 VM units rejuvenated"
        begins = [t for kind, _, t in VmmBackend.log if kind == "begin"]
        ends = [t for kind, _, t in VmmBackend.log if kind == "end"]
        assert len(begins) == 2 and ends[0] <= begins[1]  # never two at once
        (start,) = rig.bodies("remedy.start", HOST)
        assert start["action"] == "rejuvenate_vmm_all" and start["deadline_s"] == 3.0 + 120.0
    finally:
        await rig.close()
