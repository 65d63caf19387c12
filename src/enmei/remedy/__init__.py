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
from enmei.remedy.registry import REMEDIES, register, unregister
from enmei.remedy.rejuvenate import Rejuvenate
from enmei.remedy.restart import Escalate, Restart, Start, Stop
from enmei.remedy.vm import ColdReboot, PhaseReboot

__all__ = ["REMEDIES", "Remedy", "RestartBudget", "Result", "UnitControl", "register", "unregister"]

for _remedy in (Restart, Start, Stop, Escalate, Rejuvenate, Degrade, PhaseReboot, ColdReboot, Handover):
    register(_remedy)

# Mechanisms in their own modules register themselves (``enmei.remedy.registry.register``).
from enmei.remedy import isolate as _isolate  # noqa: E402, F401 - registers isolate
from enmei.remedy import shadow as _shadow  # noqa: E402, F401 - registers shadow_update
from enmei.remedy import vmm as _vmm  # noqa: E402, F401 - registers rejuvenate_vmm, rejuvenate_vmm_all
