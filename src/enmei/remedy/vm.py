"""Remedies for machines: phase-based reboot and cold reboot (for any backend with the ``phase_reboot``
or ``reboot`` capability; today the QEMU backend).

``phase_reboot``: the guest goes back to the boot phase the backend snapshotted on its first boot
(``service-ready``) instead of booting again — through the unit's warm standby QEMU when one is ready,
else by loading the snapshot in place; the outcome's ``via`` says which (and the standby's step timings).
The data disk keeps its present state (see ``enmei.visor.qemu.backend``). If it fails (no snapshot, a
corrupt one), the outcome says so and the policy's next step is ``cold_reboot``: reset, boot again,
wait until the guest is ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from enmei.errors import VisorError
from enmei.model import Health
from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.visor.base import Capability, need

__all__ = ["ColdReboot", "PhaseReboot"]


class PhaseReboot(Remedy):
    name: ClassVar[str] = "phase_reboot"
    description: ClassVar[str] = "restore the guest's service-ready phase instead of rebooting"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"why": str}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.PHASE_REBOOT})

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return 60.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        try:
            took = await need(unit.backend, Capability.PHASE_REBOOT, unit.name).phase_reboot(unit.name)
        except VisorError as exc:
            return Result.failed(exc.cause)
        _fresh(unit)
        report_fn = getattr(unit.backend, "reboot_report", None)
        report = dict(report_fn(unit.name) or {}) if callable(report_fn) else {}
        report.pop("took_s", None)
        via = report.get("via")
        how = f" through the {via}" if via == "standby" else f" ({via})" if via else ""
        return Result.ok(f"back at the phase snapshot{how} in {took:.3f}s", seconds=round(took, 4), **report)


class ColdReboot(Remedy):
    name: ClassVar[str] = "cold_reboot"
    description: ClassVar[str] = "reset the virtual machine and boot it again"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"why": str}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.REBOOT})

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return float(getattr(unit.spec, "ready_timeout_s", 60.0)) + 30.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        try:
            took = await need(unit.backend, Capability.REBOOT, unit.name).cold_reboot(unit.name)
        except VisorError as exc:
            return Result.failed(exc.cause)
        _fresh(unit)
        return Result.ok(f"booted again in {took:.2f}s", seconds=round(took, 3))


def _fresh(unit: UnitControl) -> None:
    """A restored or rebooted guest is a new instance as far as detectors are concerned."""
    fresh = getattr(unit, "fresh_instance", None)
    if callable(fresh):
        fresh(Health.UNKNOWN)
