"""D-System Monitor: probes that observe units from outside (passive) and, later, injectors (active).

``make_probes`` turns a unit's ``probes`` config into probe objects; the engine schedules them.
"""

from __future__ import annotations

from enmei.clock import Clock
from enmei.config.model import HttpProbe as HttpProbeConfig
from enmei.config.model import LogProbe as LogProbeConfig
from enmei.config.model import ProcessProbe as ProcessProbeConfig
from enmei.config.model import TcpProbe as TcpProbeConfig
from enmei.config.model import UnitBase, probe_name
from enmei.monitor.base import Probe
from enmei.monitor.http import HttpProbe
from enmei.monitor.lograte import LogProbe
from enmei.monitor.procstats import StatsProbe
from enmei.monitor.tcp import TcpProbe
from enmei.visor.base import Backend

__all__ = ["HttpProbe", "LogProbe", "Probe", "StatsProbe", "TcpProbe", "make_probes"]


def make_probes(unit: str, spec: UnitBase, backend: Backend, clock: Clock) -> list[Probe]:
    """The probes a unit's config declares, in declaration order."""
    probes: list[Probe] = []
    for cfg in spec.probes:
        name = probe_name(cfg)
        if isinstance(cfg, HttpProbeConfig):
            probes.append(HttpProbe(unit, name, cfg.interval_s, clock, url=cfg.url, timeout_s=cfg.timeout_s,
                                    expect_status=cfg.expect_status))
        elif isinstance(cfg, TcpProbeConfig):
            probes.append(TcpProbe(unit, name, cfg.interval_s, clock, host=cfg.host, port=cfg.port,
                                   timeout_s=cfg.timeout_s))
        elif isinstance(cfg, ProcessProbeConfig):
            probes.append(StatsProbe(unit, name, cfg.interval_s, clock, backend=backend))
        elif isinstance(cfg, LogProbeConfig):
            probes.append(LogProbe(unit, name, cfg.interval_s, clock, path=backend.log_path(unit, cfg.stream),
                                   pattern=cfg.pattern))
    return probes
