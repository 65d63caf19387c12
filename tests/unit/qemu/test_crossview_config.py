"""A [[units.NAME.probes]] kind = "crossview" entry builds the probe on the unit's RAM file, console and kernel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from enmei.clock import FakeClock
from enmei.config.model import CrossviewProbe as CrossviewProbeConfig
from enmei.config.qemu import QemuUnit
from enmei.monitor.crossview_probe import CrossviewProbe
from enmei.monitor.registry import ProbeSite, make
from enmei.visor.qemu import ImageInfo, QemuBackend
from enmei.visor.qemu.cmdline import MachinePaths


def image(tmp_path: Path) -> Path:
    d = tmp_path / "img"
    d.mkdir()
    for f in ("vmlinuz", "initrd.img"):
        (d / f).write_bytes(b"x")
    info = ImageInfo(name="t", directory=str(d), kernel=str(d / "vmlinuz"), initrd=str(d / "initrd.img"),
                     kernel_package="linux-image-t", kernel_version="1", kernel_release="6.1-t",
                     busybox_version="1", service_version="1.0", inputs_hash="0", built_wall=0.0, size_bytes=2)
    (d / "image.json").write_text(json.dumps(info.to_json()))
    return d


def test_a_crossview_probe_reads_the_units_own_files(tmp_path: Path) -> None:
    clock = FakeClock()
    backend = QemuBackend(clock=clock, state_dir=tmp_path / "state", emit=lambda e: None)
    spec = QemuUnit.model_validate({"backend": "qemu", "image": str(image(tmp_path)), "ram": "shared",
                                    "probes": [{"kind": "crossview", "listing_timeout_s": 20}]})
    cfg = spec.probes[0]
    assert isinstance(cfg, CrossviewProbeConfig)
    p = make(ProbeSite("vm", "crossview", spec, backend, clock), cfg)
    assert isinstance(p, CrossviewProbe)
    paths = MachinePaths.for_unit(tmp_path / "state", "vm")
    assert (p.ram_path, p.console_path, p.listing_timeout_s) == (paths.ram, paths.console, 20.0)
    private = spec.model_copy(update={"ram": "private"})
    with pytest.raises(ValueError, match='ram = "shared"'):
        make(ProbeSite("vm", "crossview", private, backend, clock), cfg)
