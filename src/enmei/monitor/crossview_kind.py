"""Registers the ``crossview`` probe kind (``enmei.monitor.crossview_probe``) without importing it: the probe
reads guest memory through ``enmei.visor.qemu``, which a config with no crossview probe must not load
(``tests/integration/test_lazy_backends.py``); it is imported when such a probe is made."""

from __future__ import annotations

from pathlib import Path

from enmei.config.model import CrossviewProbe as CrossviewProbeConfig
from enmei.monitor.base import Probe
from enmei.monitor.registry import ProbeSite, register


def _make(site: ProbeSite, cfg: CrossviewProbeConfig) -> Probe:
    """A crossview probe of a VM unit: its slot's shared RAM file, its console log, its image's kernel.
    ``ValueError`` for a unit that is not a VM with shared RAM."""
    from enmei.config.qemu import QemuUnit
    from enmei.monitor.crossview_probe import CrossviewProbe
    from enmei.visor.qemu.cmdline import MachinePaths
    from enmei.visor.qemu.image import resolve

    spec = site.spec
    state_dir = getattr(site.backend, "state_dir", None)
    if not isinstance(spec, QemuUnit) or not isinstance(state_dir, Path):
        raise ValueError(f"unit {site.unit}: a crossview probe needs a VM unit (backend = \"qemu\")")
    if spec.ram == "private":
        raise ValueError(f"unit {site.unit}: a crossview probe reads the guest's shared RAM: set ram = \"shared\"")
    paths = MachinePaths.for_unit(state_dir, site.unit)
    return CrossviewProbe(site.unit, site.name, cfg.interval_s, site.clock, ram_path=paths.ram,
                          console_path=paths.console, kernel=Path(resolve(spec.image).kernel),
                          listing_timeout_s=cfg.listing_timeout_s, data_disk=paths.data_disk,
                          file_dirs=tuple(cfg.file_dirs))




register(CrossviewProbeConfig, _make)
