"""Issue 10 item 4: a decision can target the host, not only a unit. A test-only host-scope remedy
(registered from this module, no edit to engine, config or policy code) runs with the journal's intent
and outcome records, under the host's restart budget, one at a time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from enmei.model import Decision, Event, Tick
from enmei.policy.actions import HOST, actions
from enmei.policy.base import View
from enmei.policy.encode import decisions_from, remedies_for
from enmei.remedy import REMEDIES
from enmei.remedy.base import HostControl, HostRemedy, Result
from enmei.remedy.budget import RestartBudget
from support.harness import Rig, start_rig

ONE = """
[units.a]
command = ["/bin/true"]
start_s = 0.5
"""


class ReplaceHypervisor(HostRemedy):
    """Stands for "replace this QEMU process under its live guest": takes 5 s, sees every backend."""

    name: ClassVar[str] = "test-replace-hypervisor"
    description: ClassVar[str] = "test only: a host-scope remedy"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"backend": str}
    counts_as_restart: ClassVar[bool] = True
    runs: ClassVar[list[dict[str, Any]]] = []

    def host_deadline_s(self, host: HostControl, args: Mapping[str, Any]) -> float:
        return 30.0

    async def run_host(self, host: HostControl, args: Mapping[str, Any]) -> Result:
        self.runs.append({"target": host.name, "backends": sorted(host.backends), "units": sorted(host.units)})
        await host.clock.sleep(5.0)
        return Result.ok("replaced", backend=args.get("backend", "process"))


class EveryTick:
    """Asks for the host remedy on every tick (a policy that would loop, were it not for the budget)."""

    version = "every-tick-1"

    def decide(self, event: Event, view: View) -> list[Decision]:
        if isinstance(event, Tick):
            return [Decision("test-replace-hypervisor", HOST, "hypervisor aging", {"backend": "process"},
                             policy=self.version, rule="replace")]
        return []


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REMEDIES, ReplaceHypervisor.name, ReplaceHypervisor)
    ReplaceHypervisor.runs = []


async def _rig(tmp_path: Path) -> Rig:
    rig = await start_rig(tmp_path, ONE, policy=EveryTick())
    rig.engine.host.budget = RestartBudget(0.0, 1.0, 0.0, budget=2, window_s=3600.0)
    return rig


@pytest.mark.usefixtures("registered")
async def test_a_host_remedy_has_intent_outcome_budget_and_runs_one_at_a_time(tmp_path: Path) -> None:
    rig = await _rig(tmp_path)
    try:
        await rig.advance(20.0)
        decisions = rig.bodies("decision", HOST)
        carried = [b for b in decisions if "rejected" not in b and "suppressed" not in b]
        assert len(carried) == 2  # the host's budget: 2 an hour
        # One at a time: while one runs (5 s), the next ticks' requests are suppressed, on the record.
        assert any("is running" in b.get("suppressed", "") for b in decisions)
        # Budget spent: refused, with an alert (once; the repeats are coalesced).
        refused = [b for b in decisions if "host restart budget spent" in b.get("rejected", "")]
        assert refused and "(2 in 3600s, budget 2)" in refused[0]["rejected"]
        assert any("refused: host restart budget spent" in b["message"] for b in rig.bodies("alert"))
        # The journal's intent and outcome records, in order, naming the host.
        starts = rig.bodies("remedy.start", HOST)
        outcomes = rig.bodies("remedy.outcome", HOST)
        assert [b["action"] for b in starts] == ["test-replace-hypervisor"] * 2
        assert [(b["state"], b["data"]) for b in outcomes] == [("succeeded", {"backend": "process"})] * 2
        assert [b["deadline_s"] for b in starts] == [30.0, 30.0]
        seqs = [(s, k) for s, k, u, _ in rig.records if u == HOST and k in ("remedy.start", "remedy.outcome")]
        assert [k for _, k in seqs] == ["remedy.start", "remedy.outcome"] * 2
        assert ReplaceHypervisor.runs[0] == {"target": HOST, "backends": ["process"], "units": ["a"]}
        assert rig.engine.units["a"].remedy is None  # the unit was never blocked by the host's remedy
    finally:
        await rig.close()


def _view() -> View:
    from unit.policy.common import view

    return view()


@pytest.mark.usefixtures("registered")
def test_host_decisions_from_a_policy_are_checked_by_scope() -> None:
    assert actions()["test-replace-hypervisor"].scope == "host"
    assert remedies_for()["@host"] == ["rejuvenate_vmm_all", "test-replace-hypervisor"]
    ok = '[{"action": "test-replace-hypervisor", "unit": "@host", "args": {"backend": "qemu"}}]'
    [d] = decisions_from(ok, _view(), policy="p", handler="on_tick")
    assert (d.action, d.unit) == ("test-replace-hypervisor", HOST)
    from enmei.policy.core import EvalFailure

    unit_name = next(iter(_view().units))
    with pytest.raises(EvalFailure, match="acts on the host"):
        decisions_from(f'[{{"action": "test-replace-hypervisor", "unit": "{unit_name}"}}]', _view(), policy="p",
                       handler="on_tick")
    with pytest.raises(EvalFailure, match="acts on a unit"):
        decisions_from('[{"action": "restart", "unit": "@host"}]', _view(), policy="p", handler="on_tick")


@pytest.mark.usefixtures("registered")
async def test_an_operator_can_ask_the_host_and_a_unit_remedy_on_the_host_is_refused(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, ONE)
    try:
        rig.engine.submit("restart", HOST)
        rig.engine.submit("test-replace-hypervisor", HOST, {"backend": "process"})
        await rig.advance(6.0)
        decisions = rig.bodies("decision", HOST)
        assert "acts on a unit" in decisions[0]["rejected"]
        assert rig.bodies("remedy.outcome", HOST)[0]["state"] == "succeeded"
    finally:
        await rig.close()


@pytest.mark.usefixtures("registered")
def test_a_starlark_policy_names_the_host_with_host_remedy(tmp_path: Path) -> None:
    from enmei.policy.manager import PolicyManager
    from enmei.policy.sandbox import InProcessSandbox

    path = tmp_path / "host.star"
    path.write_text('''load("@enmei", "HOST", "host_remedy")

def on_tick(tick, ctx):
    if "test-replace-hypervisor" in ctx.remedies["@host"] and tick.wall > 0:
        return [host_remedy("test-replace-hypervisor", {"backend": "qemu"}, why = "aging", rule = "r")]
    return []
''')
    m = PolicyManager(path, sandbox=InProcessSandbox)
    [d] = m.decide(Tick(1000.0, 1.0), _view())
    assert (d.action, d.unit, dict(d.args), d.rule) == ("test-replace-hypervisor", HOST, {"backend": "qemu"}, "r")
