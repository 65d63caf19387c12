"""Life-extension mechanisms (延命処置): each remedy repairs a unit, with a deadline and a typed result.

``REMEDIES`` maps a decision's ``action`` to its remedy class. A new mechanism is a new module whose
remedy class is added with ``register`` (a class decorator); a remedy says which backend capabilities
it ``needs`` (the VM reboots need ``phase_reboot`` / ``reboot``), so it applies to any backend that has them.
"""

from __future__ import annotations

from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.remedy.budget import RestartBudget
from enmei.remedy.degrade import Degrade
from enmei.remedy.handover import Handover
from enmei.remedy.rejuvenate import Rejuvenate
from enmei.remedy.restart import Escalate, Restart, Start, Stop
from enmei.remedy.vm import ColdReboot, PhaseReboot
from enmei.remedy.vmm import RejuvenateVmm, RejuvenateVmmAll

__all__ = ["REMEDIES", "Remedy", "RestartBudget", "Result", "UnitControl", "register", "unregister"]

REMEDIES: dict[str, type[Remedy]] = {
    r.name: r for r in (Restart, Start, Stop, Escalate, Rejuvenate, Degrade, PhaseReboot, ColdReboot,
                        RejuvenateVmm, RejuvenateVmmAll, Handover)
}


def register(remedy: type[Remedy]) -> type[Remedy]:
    """Add a remedy class under its ``name`` (usable as a class decorator).

    Raises ``ValueError`` if the name is taken by another remedy class:
    a second registration never silently replaces the first. ``unregister`` undoes one (for tests).
    """
    name = getattr(remedy, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"remedy {remedy.__name__}: set a class attribute 'name'")
    old = REMEDIES.get(name)
    if old is not None and old is not remedy:
        raise ValueError(f"remedy {name!r} is already registered ({old.__module__}.{old.__qualname__})")
    REMEDIES[name] = remedy
    return remedy


def unregister(name: str) -> None:
    """Remove the remedy registered under ``name`` (unknown names are ignored)."""
    REMEDIES.pop(name, None)


# Mechanisms in their own modules register themselves (imported last: they use ``register``).
from enmei.remedy import shadow as _shadow  # noqa: E402, F401 - registers shadow_update
