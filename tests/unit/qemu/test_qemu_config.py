"""``backend = "qemu"`` units: keys, units, and the errors for bad values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from enmei.config.qemu import GUEST_PHASES, QemuUnit


def _unit(**kw: Any) -> QemuUnit:
    return QemuUnit.model_validate({"backend": "qemu", **kw})


def test_defaults() -> None:
    u = _unit()
    assert (u.image, u.memory_mib, u.accel, u.phase_snapshot, u.panic_action) == (
        "default", 256, "auto", "service-ready", "pause")
    assert u.forward == [] and u.guestfwd == [] and u.kernel_args == []
    assert u.phase_standby and u.uses_standby
    assert u.phase_standby_warm == ["/version", "/cgi-bin/app"] and u.phase_standby_warm_rounds == 10


def test_the_standby_needs_the_gate_phase() -> None:
    assert not _unit(phase_standby=False).uses_standby
    assert not _unit(phase_snapshot=None).uses_standby
    assert not _unit(phase_snapshot="network").uses_standby  # it would boot on while it waits
    assert _unit(phase_standby_warm=[], phase_standby_warm_rounds=0).uses_standby


@pytest.mark.parametrize("bad", [
    {"forward": ["8080"]}, {"forward": ["a:80"]}, {"forward": ["0:80"]}, {"forward": ["70000:80"]},
    {"forward": ["8080:80", "8080:81"]}, {"guestfwd": ["514"]}, {"guestfwd": ["x=cmd"]},
    {"guestfwd": ["514=  "]}, {"phase_snapshot": "booted"}, {"kernel_args": ["a b"]},
    {"memory_mib": 16}, {"accel": "hvf"}, {"panic_action": "ignore"}, {"typo_key": 1},
    {"phase_standby_warm": ["version"]}, {"phase_standby_warm": ["/a b"]}, {"phase_standby_warm_rounds": -1},
])
def test_bad_values_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _unit(**bad)


def test_every_phase_can_be_the_snapshot_phase() -> None:
    for phase in GUEST_PHASES:
        assert _unit(phase_snapshot=phase).phase_snapshot == phase
    assert _unit(phase_snapshot=None).phase_snapshot is None


def test_a_qemu_unit_in_a_config_file(write_config: Any) -> None:
    from enmei.config import load

    path: Path = write_config("""
[units.vm]
backend = "qemu"
memory_mib = 128
forward = ["18080:80"]
kernel_args = ["enmei.version=2.0"]
""")
    vm = load(path).config.units["vm"]
    assert isinstance(vm, QemuUnit)
    assert vm.forward == ["18080:80"] and vm.memory_mib == 128


def test_a_bad_qemu_key_names_file_key_and_line(write_config: Any) -> None:
    from enmei.config import load
    from enmei.errors import ConfigError

    path: Path = write_config("""
[units.vm]
backend = "qemu"
forward = ["8080"]
""")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "forward" in str(info.value) and str(path) in str(info.value)
