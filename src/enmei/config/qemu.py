"""``[units.NAME]`` with ``backend = "qemu"``: the keys of a virtual-machine unit.

A VM unit looks like this (every key has a default)::

    [units.vm]
    backend = "qemu"
    image = "default"             # built by ``enmei image build``, or a path to an image directory
    memory_mib = 256
    accel = "auto"                # probe KVM once with a bounded test boot, else TCG
    forward = ["8080:80"]         # host 127.0.0.1:8080 -> guest port 80 (host side is loopback only)
    phase_snapshot = "service-ready"
    phase_standby = true          # keep a warm, paused copy of the guest at that phase (see below)

``phase_standby`` (with ``phase_snapshot = "service-ready"``, the default) makes the backend keep a
second QEMU of the unit, paused, holding the guest as it was at ``service-ready`` of its first boot
and already warmed up (``phase_standby_warm``: HTTP paths fetched ``phase_standby_warm_rounds``
times through the first forwarded port, so that TCG has translated the service's paths). A phase
reboot then switches to it instead of loading the snapshot in place (milliseconds instead of a few
hundred ms of downtime under TCG). The cost: one more QEMU per unit, paused — its guest RAM that was
touched (at most ``memory_mib``) plus QEMU's own memory and TCG's translated code (``enmei bench
reboot`` reports its resident size as ``standby_rss_mib``), a copy of the snapshot disk on disk; no
CPU while paused, and some CPU for about a second after each use while the next standby is prepared. The
data disk's QEMU image lock is shared (``share-rw``) between the two QEMUs of the unit; the backend
guarantees that only one of them ever lets its guest use the disk (``enmei.visor.qemu.backend``).

``ram`` (``"auto"``: shared when ``/dev/shm`` has room) puts guest RAM in a file of a directory enmei
owns in ``/dev/shm`` (``enmei.visor.qemu.ram``), so that ``rejuvenate_vmm`` can hand the live guest to
a fresh QEMU process without copying its memory (``enmei.visor.qemu.vmm``).

Guest networking is QEMU user mode with ``restrict=on``: the guest reaches nothing on the host or
beyond, except the forwarded ports (host to guest, on 127.0.0.1) and the ``guestfwd`` commands (guest
connections to 10.0.2.100:PORT go to a local command's stdin/stdout; QEMU splits the command into
words like a shell but runs it without one: write ``sh -c '...'`` for redirections).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from enmei.config.model import _UnitBase

__all__ = ["GUEST_PHASES", "QemuUnit"]

# The boot phases the guest's init prints, in order (see ``enmei.visor.qemu.guest``).
GUEST_PHASES = ("kernel", "userspace", "network", "service-ready")

# What a VM's start does besides booting (image checks, disk files, strays reaped, a bounded KVM probe, a
# failed boot's QEMU killed and waited for): on top of ``ready_timeout_s`` in the start's bound.
_START_WORK_S = 30.0


class QemuUnit(_UnitBase):
    """``[units.NAME]`` with ``backend = "qemu"``: a virtual machine (see ``enmei.visor.qemu``)."""

    backend: Literal["qemu"]
    image: str = "default"  # an image built by ``enmei image build``, or a path to one
    memory_mib: int = Field(default=256, ge=64, le=65536)
    cpus: int = Field(default=1, ge=1, le=64)
    accel: Literal["auto", "tcg", "kvm"] = "auto"
    forward: list[str] = Field(default_factory=list)  # "HOSTPORT:GUESTPORT", host side on 127.0.0.1
    guestfwd: list[str] = Field(default_factory=list)  # "GUESTPORT=COMMAND": 10.0.2.100:PORT -> command
    ready_timeout_s: float = Field(default=60.0, gt=0)  # boot to service-ready (and data-ready)
    phase_snapshot: str | None = "service-ready"  # boot phase to snapshot for phase-based reboot
    phase_settle_s: float = Field(default=0.3, ge=0, le=60)  # wait after the phase, then snapshot
    phase_standby: bool = True  # a warm standby QEMU for phase reboots (only with phase_snapshot = "service-ready")
    phase_standby_warm: list[str] = Field(default_factory=lambda: ["/version", "/cgi-bin/app"])  # HTTP paths
    phase_standby_warm_rounds: int = Field(default=10, ge=0, le=1000)  # times each path is fetched
    data_disk_mib: int = Field(default=64, ge=1, le=1_048_576)
    panic_action: Literal["pause", "exit"] = "pause"  # what QEMU does when the guest panics
    kernel_args: list[str] = Field(default_factory=list)  # appended to the guest kernel command line
    qmp_timeout_s: float = Field(default=10.0, gt=0)  # bound on any one QMP command
    # guest RAM: "shared" = a file in /dev/shm (``enmei.visor.qemu.ram``; what lets ``rejuvenate_vmm``
    # replace QEMU without copying RAM), "private" = QEMU's own anonymous memory, "auto" = shared when
    # /dev/shm has room for it, else private
    ram: Literal["auto", "shared", "private"] = "auto"
    vmm_binary: str | None = None  # the QEMU binary rejuvenate_vmm switches to (default: the one running)
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("forward")
    @classmethod
    def _forwards(cls, items: list[str]) -> list[str]:
        hosts: set[str] = set()
        for item in items:
            a, sep, b = item.partition(":")
            if not sep or not a.isdigit() or not b.isdigit():
                raise ValueError(f"{item!r} is not HOSTPORT:GUESTPORT")
            if not (0 < int(a) < 65536 and 0 < int(b) < 65536):
                raise ValueError(f"{item!r}: ports are 1..65535")
            if a in hosts:
                raise ValueError(f"host port {a} is forwarded twice")
            hosts.add(a)
        return items

    @field_validator("guestfwd")
    @classmethod
    def _guestfwd(cls, items: list[str]) -> list[str]:
        for item in items:
            port, sep, command = item.partition("=")
            if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not command.strip():
                raise ValueError(f"{item!r} is not GUESTPORT=COMMAND")
        return items

    @field_validator("phase_snapshot")
    @classmethod
    def _phase(cls, phase: str | None) -> str | None:
        if phase is not None and phase not in GUEST_PHASES:
            raise ValueError(f"{phase!r} is not a boot phase; use one of {', '.join(GUEST_PHASES)}")
        return phase

    @field_validator("phase_standby_warm")
    @classmethod
    def _warm_paths(cls, items: list[str]) -> list[str]:
        for item in items:
            if not item.startswith("/") or re.search(r"\s", item):
                raise ValueError(f"{item!r}: an HTTP path starting with '/', without spaces")
        return items

    def start_bound_s(self) -> float:
        """The longest a start may take before it holds: the boot to ``data-ready`` (``ready_timeout_s``)
        and the work around it, then ``start_s``. A start remedy's deadline is this plus
        ``restart.deadline_s``, so the backend's own ``ready_timeout_s`` ends a slow boot first (with a
        message naming how far the guest got), not the remedy's deadline."""
        return super().start_bound_s() + self.ready_timeout_s + _START_WORK_S

    @property
    def uses_standby(self) -> bool:
        """Whether this unit keeps a warm standby: ``phase_standby`` at the gate phase ``service-ready``
        (an earlier phase would make the standby boot on while it waits)."""
        return self.phase_standby and self.phase_snapshot == "service-ready"

    @field_validator("kernel_args")
    @classmethod
    def _kernel_args(cls, items: list[str]) -> list[str]:
        for item in items:
            if not item or re.search(r"\s", item):
                raise ValueError(f"{item!r}: one kernel argument per item, without spaces")
        return items
