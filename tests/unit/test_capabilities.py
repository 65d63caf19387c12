"""Capabilities, not names: the monitor API by protocol, remedies that need capabilities, and the refusals
(at decision time in the engine and in a policy's result; ``register`` refuses a second remedy of a name)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest

from enmei.errors import VisorError
from enmei.model import Health, UnitState
from enmei.policy.base import UnitView, View
from enmei.policy.core import EvalFailure
from enmei.policy.encode import decisions_from, remedies_for
from enmei.remedy import REMEDIES, Remedy, Result, UnitControl, register, unregister
from enmei.remedy.vm import ColdReboot, PhaseReboot
from enmei.visor.base import PROTOCOLS, Backend, Capability, missing_verbs, need
from enmei.visor.registry import backend_kinds
from support.harness import start_rig


def _backend_classes() -> dict[str, type[Backend]]:
    from enmei.visor.process import ProcessBackend
    from enmei.visor.qemu import QemuBackend

    return {"process": ProcessBackend, "qemu": QemuBackend}


@pytest.mark.parametrize("kind", ["process", "qemu"])
def test_a_backend_implements_exactly_the_protocols_it_declares(kind: str) -> None:
    cls = _backend_classes()[kind]
    assert cls.kind == kind and backend_kinds()[kind].capabilities == cls.capabilities
    assert missing_verbs(cls) == {}
    for cap, proto in PROTOCOLS.items():
        # The base has none of these verbs any more: a class has one only if it implements it.
        assert issubclass(cls, proto) == (cap in cls.capabilities), (kind, cap)


def test_the_base_backend_has_the_lifecycle_only() -> None:
    verbs = {"snapshot_save", "snapshot_load", "snapshot_list", "snapshot_delete", "phase_reboot", "cold_reboot",
             "state_save", "state_restore", "clone", "send_keys", "read_memory", "block_stats", "net_stats"}
    assert not verbs & set(dir(Backend))


def test_need_names_the_unit_the_backend_and_what_it_has(tmp_path: Path) -> None:
    from enmei.clock import FakeClock
    from enmei.visor.process import ProcessBackend

    b = ProcessBackend(clock=FakeClock(), state_dir=tmp_path, emit=lambda ev: None)
    want = r"'web': snapshot failed: not supported by the process backend \(it has: handover, logs"
    with pytest.raises(VisorError, match=want):
        need(b, Capability.SNAPSHOT, "web")


def test_a_declared_capability_without_its_verbs_is_reported() -> None:
    from enmei.visor.fake import FakeBackend

    class Half(FakeBackend):
        capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS, Capability.SNAPSHOT})

        async def snapshot_list(self, name: str) -> list[str]:
            return []

    assert missing_verbs(Half) == {Capability.SNAPSHOT: ["snapshot_delete", "snapshot_load", "snapshot_save"]}


def test_the_vm_remedies_need_capabilities_not_a_backend_name() -> None:
    assert PhaseReboot.needs == {Capability.PHASE_REBOOT} and ColdReboot.needs == {Capability.REBOOT}
    assert not hasattr(Remedy, "backends")
    assert PhaseReboot.refusal({"stats", "phase_reboot"}, "toy") is None
    assert PhaseReboot.refusal({"stats", "logs"}, "process") == (
        "remedy 'phase_reboot' needs phase_reboot, which the process backend lacks (it has: logs, stats)")
    assert remedies_for()["phase_reboot"] == ["phase_reboot"] and remedies_for()["restart"] == []


def test_a_remedy_naming_backends_is_refused_with_the_way_out() -> None:
    with pytest.raises(TypeError, match="declare the capabilities it needs"):
        type("Old", (Remedy,), {"name": "old", "backends": frozenset({"qemu"})})


class _Nap(Remedy):
    name: ClassVar[str] = "nap"

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return 1.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        return Result.ok()


def test_register_refuses_a_second_remedy_of_a_name() -> None:
    register(_Nap)
    try:
        assert register(_Nap) is _Nap  # the same class again is harmless
        other = type("Nap2", (_Nap,), {})
        with pytest.raises(ValueError, match=r"remedy 'nap' is already registered \(.*_Nap\)"):
            register(other)
        with pytest.raises(ValueError, match="remedy 'restart' is already registered"):
            register(type("MyRestart", (_Nap,), {"name": "restart"}))
        assert REMEDIES["nap"] is _Nap
    finally:
        unregister("nap")
    assert "nap" not in REMEDIES


def _unit(caps: set[str]) -> UnitView:
    return UnitView(name="web", backend="process", state=UnitState.RUNNING, health=Health.OK, alive=True,
                    uptime_s=1.0, remedy=None, restarts_in_window=0, budget=5, window_s=300.0, next_delay_s=0.0,
                    escalate_retry_s=60.0, rejuvenate_every_s=None, rejuvenate_window_s=60.0, stop_timeout_s=10.0,
                    capabilities=frozenset(caps))


def test_a_policy_deciding_a_remedy_the_backend_cannot_do_fails_with_why() -> None:
    text = '[{"action": "phase_reboot", "unit": "web", "args": {}}]'
    with pytest.raises(EvalFailure, match=r"decision 1: remedy 'phase_reboot' needs phase_reboot, which the "
                                          r"process backend lacks .*for unit 'web'"):
        decisions_from(text, View(1.0, {"web": _unit({"stats", "logs"})}), policy="p", handler="on_exit")
    ok = decisions_from(text, View(1.0, {"web": _unit({"stats", "phase_reboot"})}), policy="p", handler="on_exit")
    assert [d.action for d in ok] == ["phase_reboot"]


async def test_the_engine_refuses_a_remedy_the_units_backend_lacks(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, '[units.a]\ncommand = ["/bin/true"]\n')
    try:
        rig.engine.submit("cold_reboot", "a")
        assert await rig.until(lambda: any(b.get("action") == "cold_reboot" for b in rig.bodies("decision", "a")))
        body = next(b for b in rig.bodies("decision", "a") if b["action"] == "cold_reboot")
        assert body["rejected"].startswith("remedy 'cold_reboot' needs reboot, which the process backend lacks")
        running = rig.engine.units["a"].remedy
        assert running is None or running.action != "cold_reboot"
    finally:
        await rig.close()


def test_the_trial_view_of_a_config_carries_each_backends_capabilities(tmp_path: Path) -> None:
    import doctest
    import importlib

    from enmei.config import load_text
    from enmei.errors import PolicyError
    from enmei.policy.manager import open_policy
    from enmei.policy.sandbox import InProcessSandbox
    from enmei.policy.trial import config_view

    assert doctest.testmod(importlib.import_module("enmei.policy.trial")).failed == 0
    vm = config_view(load_text('[units.vm]\nbackend = "qemu"\n', tmp_path / "enmei.toml").config)
    assert {"phase_reboot", "reboot", "snapshot"} <= vm.units["vm"].capabilities
    policy = tmp_path / "p.star"
    policy.write_text('load("@enmei", "remedy")\ndef on_verdict(event, ctx):\n'
                      '    return [remedy("phase_reboot", ctx.unit)]\n')
    open_policy(policy, sandbox=InProcessSandbox, trial_view=vm).close()  # a VM can: loads
    both = config_view(load_text('[units.vm]\nbackend = "qemu"\n[units.web]\ncommand = ["/bin/true"]\n',
                                 tmp_path / "enmei.toml").config)
    with pytest.raises(PolicyError, match=r"p\.star:2.*needs phase_reboot.*for unit 'web'"):
        open_policy(policy, sandbox=InProcessSandbox, trial_view=both)  # every unit is tried, not the first
