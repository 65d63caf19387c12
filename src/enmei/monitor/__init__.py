"""D-System Monitor: probes that observe units from outside (passive) and, later, injectors (active).

``make_probes`` turns a unit's ``probes`` config into probe objects; the engine schedules them. Each
probe module registers the config model it builds from (``enmei.monitor.registry``); importing this
package imports the built-in ones.
"""

from __future__ import annotations

from enmei.clock import Clock
from enmei.config.model import UnitBase, probe_name
from enmei.monitor import command as _command  # noqa: F401 - registers the exec probe
from enmei.monitor import crossview_kind as _crossview  # noqa: F401 - registers the crossview probe
from enmei.monitor.base import Probe
from enmei.monitor.http import HttpProbe
from enmei.monitor.lograte import LogProbe
from enmei.monitor.procstats import StatsProbe
from enmei.monitor.registry import ProbeSite, make
from enmei.monitor.tcp import TcpProbe
from enmei.visor.base import Backend

__all__ = ["HttpProbe", "LogProbe", "Probe", "StatsProbe", "TcpProbe", "make_probes"]


def make_probes(unit: str, spec: UnitBase, backend: Backend, clock: Clock) -> list[Probe]:
    """The probes a unit's config declares, in declaration order."""
    return [make(ProbeSite(unit, probe_name(cfg), spec, backend, clock), cfg) for cfg in spec.probes]
