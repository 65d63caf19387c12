"""``[units.NAME]`` with ``backend = "qemu"``: the keys of a virtual-machine unit."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from enmei.config.model import _UnitBase

__all__ = ["QemuUnit"]


class QemuUnit(_UnitBase):
    """``[units.NAME]`` with ``backend = "qemu"``: a virtual machine (see ``enmei.visor.qemu``)."""

    backend: Literal["qemu"]
    image: str = "default"  # an image built by ``enmei image build``, or a path to one
    memory_mib: int = Field(default=256, ge=64, le=65536)
    cpus: int = Field(default=1, ge=1, le=64)
    accel: Literal["auto", "tcg", "kvm"] = "auto"
    forward: list[str] = Field(default_factory=list)  # "HOSTPORT:GUESTPORT", host side on 127.0.0.1
    ready_timeout_s: float = Field(default=60.0, gt=0)
    phase_snapshot: str | None = "service-ready"  # boot phase to snapshot for phase-based reboot
    data_disk_mib: int = Field(default=64, ge=1)
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("forward")
    @classmethod
    def _forwards(cls, items: list[str]) -> list[str]:
        for item in items:
            a, sep, b = item.partition(":")
            if not sep or not a.isdigit() or not b.isdigit():
                raise ValueError(f"{item!r} is not HOSTPORT:GUESTPORT")
        return items
