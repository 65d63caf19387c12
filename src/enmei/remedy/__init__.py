"""Life-extension mechanisms (延命処置): each remedy repairs a unit, with a deadline and a typed result.

``REMEDIES`` maps a decision's ``action`` to its remedy class. Backends add their own (the QEMU backend:
cold and phase-based reboot) with ``register``.
"""

from __future__ import annotations

from enmei.remedy.base import Remedy, Result, UnitControl
from enmei.remedy.budget import RestartBudget
from enmei.remedy.degrade import Degrade
from enmei.remedy.rejuvenate import Rejuvenate
from enmei.remedy.restart import Escalate, Restart, Start, Stop
from enmei.remedy.vm import ColdReboot, PhaseReboot

__all__ = ["REMEDIES", "Remedy", "RestartBudget", "Result", "UnitControl", "register"]

REMEDIES: dict[str, type[Remedy]] = {
    r.name: r for r in (Restart, Start, Stop, Escalate, Rejuvenate, Degrade, PhaseReboot, ColdReboot)
}


def register(remedy: type[Remedy]) -> type[Remedy]:
    """Add a remedy class under its ``name`` (usable as a class decorator)."""
    REMEDIES[remedy.name] = remedy
    return remedy
