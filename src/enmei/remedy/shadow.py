"""``shadow_update``: update a VM unit's kernel or initramfs with milliseconds of downtime (ShadowReboot).

A clone of the unit boots the new files while the unit serves; once the clone's service is ready it is
swapped in through the warm-standby takeover, and verified for ``verify_s``. A clone that does not
boot, or an updated guest that fails its verification, is rolled back (the mechanism and its data-disk
rules: ``enmei.visor.qemu.shadow``). Every step (clone, boot, snapshot, swap, verify, rollback) is
journaled as it ends (a ``remedy.step`` record with its timings, ``UnitRuntime.journal_step``); the
outcome holds them all.

Arguments: ``image`` (a built image's name or directory), ``kernel``, ``initrd`` (paths; each one not
given stays the running guest's), ``clone_timeout_s`` (the clone's boot, default the unit's
``ready_timeout_s``), ``verify_s`` (default 3). ``enmei update UNIT --image ...`` asks for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, cast

from enmei.errors import VisorError
from enmei.model import Health
from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.remedy.registry import register
from enmei.visor.base import Capability

__all__ = ["ShadowUpdatable", "ShadowUpdate"]


class ShadowUpdatable(Protocol):
    async def shadow_update(self, name: str, *, kernel: str | None = None, initrd: str | None = None,
                            image: str | None = None, clone_timeout_s: float | None = None,
                            verify_s: float = 3.0,
                            on_step: Any = None) -> dict[str, Any]:
        """The update's report; ``VisorError`` if nothing was done, ``UpdateFailed`` after a rollback."""
        ...


@register
class ShadowUpdate(Remedy):
    name: ClassVar[str] = "shadow_update"
    description: ClassVar[str] = "boot a clone into the update while the unit serves, then swap it in"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "image": str, "kernel": str, "initrd": str, "clone_timeout_s": (int, float), "verify_s": (int, float),
        "why": str}
    bounds: ClassVar[Mapping[str, tuple[float, float]]] = {"clone_timeout_s": (1.0, 3600.0),
                                                           "verify_s": (0.0, 600.0)}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.SHADOW_UPDATE})

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        ready = float(getattr(unit.spec, "ready_timeout_s", 60.0))
        clone = float(args.get("clone_timeout_s", ready))
        # the clone's boot, then the verification, and a rollback's own boot-free takeover
        return clone + float(args.get("verify_s", 3.0)) + 2 * ready + 60.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        if not any(args.get(k) for k in ("image", "kernel", "initrd")):
            return Result.failed("nothing to update to: give image, kernel or initrd")
        backend = cast(ShadowUpdatable, unit.backend)

        record = getattr(unit, "journal_step", None)  # the engine's units journal steps; a bare one logs

        def journal(step: str, facts: Mapping[str, Any]) -> None:
            if callable(record):
                record(step, facts)

        try:
            report = await backend.shadow_update(
                unit.name, kernel=args.get("kernel"), initrd=args.get("initrd"), image=args.get("image"),
                clone_timeout_s=args.get("clone_timeout_s"), verify_s=float(args.get("verify_s", 3.0)),
                on_step=journal)
        except VisorError as exc:
            extra = dict(getattr(exc, "report", {}) or {})
            return Result.failed(exc.cause, **extra)
        fresh = getattr(unit, "fresh_instance", None)
        if callable(fresh):
            fresh(Health.UNKNOWN)  # a new guest as far as detectors are concerned
        return Result.ok(f"updated; the swap took {report.get('downtime_s')}s "
                         f"(pid {report.get('replaced_pid')} -> {report.get('pid')})", **report)
