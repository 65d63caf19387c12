"""VMM rejuvenation (RootHammer): a fresh hypervisor process under a live guest, for one unit or all.

``rejuvenate_vmm`` (a unit's remedy, for backends with the ``replace_vmm`` capability: the QEMU backend)
replaces the process that runs the unit's machine — its leaked memory, fds, threads and translated code
go, or its binary is replaced by the unit's ``vmm_binary`` — while the guest runs on: no reboot, its
page cache stays warm. With shared guest RAM (``ram``) only device state is migrated. On a failure before
the switch the old process runs on; the outcome says so (``fell_back``) with the step timings
(``enmei.visor.qemu.vmm``). It does not count as a restart: the guest is not restarted.

``rejuvenate_vmm_all`` (host scope, target ``@host``) does that for every running unit that can have it,
one after another (never two at once), ``gap_s`` apart, and stops starting new ones once ``budget_s``
has passed; a unit under another repair is skipped. Its outcome lists each unit's result. It counts
against the host's restart budget (three an hour by default).

A policy can schedule either from the QEMU process's own aging, which the ``process`` probe of a VM
unit reports: ``qemu_private_bytes``, ``qemu_fds``, ``qemu_threads``, ``qemu_age_s``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from enmei.errors import VisorError
from enmei.remedy.base import HostControl, HostRemedy, Remedy, Result, UnitControl
from enmei.remedy.registry import register
from enmei.visor.base import Capability, need

__all__ = ["RejuvenateVmm", "RejuvenateVmmAll"]

_SHARED_DEADLINE_S = 120.0
_COPIED_DEADLINE_S = 420.0


def _deadline(spec: Any) -> float:
    return _SHARED_DEADLINE_S if getattr(spec, "ram", "auto") != "private" else _COPIED_DEADLINE_S


async def _rejuvenate(unit: UnitControl) -> Result:
    backend = need(unit.backend, Capability.REPLACE_VMM, unit.name)
    binary = getattr(unit.spec, "vmm_binary", None)
    try:
        report = await backend.rejuvenate_vmm(unit.name, binary=binary)
    except VisorError as exc:
        report_fn = getattr(unit.backend, "vmm_report", None)
        data = dict(report_fn(unit.name) or {}) if callable(report_fn) else {}
        return Result.failed(exc.cause, **data)
    down = report.get("downtime_s")
    how = f", guest paused {1000 * down:.1f} ms" if isinstance(down, float) else ""
    return Result.ok(f"QEMU pid {report.get('replaced_pid')} replaced by pid {report.get('pid')} "
                     f"({report.get('ram')} RAM{how})", **report)


@register
class RejuvenateVmm(Remedy):
    name: ClassVar[str] = "rejuvenate_vmm"
    description: ClassVar[str] = "replace the QEMU process under the live guest (no reboot)"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"why": str}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.REPLACE_VMM})

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return _deadline(unit.spec)

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        return await _rejuvenate(unit)


@register
class RejuvenateVmmAll(HostRemedy):
    name: ClassVar[str] = "rejuvenate_vmm_all"
    description: ClassVar[str] = "replace every VM unit's QEMU process, one after another, within a budget"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "budget_s": (int, float), "gap_s": (int, float), "why": str}
    counts_as_restart: ClassVar[bool] = True

    def host_deadline_s(self, host: HostControl, args: Mapping[str, Any]) -> float:
        # the budget bounds when the last one may begin; that one may then take its own deadline
        worst = max((_deadline(u.spec) for u in host.units.values()
                     if Capability.REPLACE_VMM in u.backend.capabilities), default=_SHARED_DEADLINE_S)
        return float(args.get("budget_s", 600.0)) + worst

    async def run_host(self, host: HostControl, args: Mapping[str, Any]) -> Result:
        budget_s = float(args.get("budget_s", 600.0))
        gap_s = float(args.get("gap_s", 1.0))
        clock = host.clock
        t0 = clock.monotonic()
        done: dict[str, dict[str, Any]] = {}
        first = True
        for name in sorted(host.units):
            unit = host.units[name]
            if Capability.REPLACE_VMM not in unit.backend.capabilities:
                continue
            if not unit.alive():
                done[name] = {"state": "skipped", "detail": "not running"}
                continue
            if getattr(unit, "remedy", None) is not None:
                done[name] = {"state": "skipped", "detail": "under another repair"}
                continue
            if not first:
                await clock.sleep(gap_s)
            if clock.monotonic() - t0 > budget_s:
                done[name] = {"state": "skipped", "detail": f"the budget of {budget_s:g} s was spent"}
                continue
            first = False
            result = await _rejuvenate(unit)
            done[name] = {"state": str(result.state), "detail": result.detail,
                          "downtime_s": result.data.get("downtime_s"), "pid": result.data.get("pid")}
        ok = [n for n, r in done.items() if r["state"] == "succeeded"]
        failed = [n for n, r in done.items() if r["state"] == "failed"]
        data = {"units": done, "took_s": round(clock.monotonic() - t0, 3)}
        summary = f"{len(ok)} of {len(done)} VM units rejuvenated"
        if failed:
            summary += f"; failed: {', '.join(failed)}"
        if failed:
            return Result.failed(summary, **data)
        return Result.ok(summary, **data)
