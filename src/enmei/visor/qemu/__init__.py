"""D-Visor for virtual machines: QEMU units controlled over QMP, and the guest images they boot.

A sketch (the real wiring belongs to the engine)::

    from enmei.clock import SystemClock
    from enmei.config.qemu import QemuUnit
    from enmei.visor.qemu import QemuBackend, build

    build(progress=lambda what, done, total: print(f"{done:5.1f}% {what}"))   # cached after once
    backend = QemuBackend(clock=SystemClock(), state_dir=Path(".enmei"),
                          emit=events.append,          # UnitEvent: STARTED, EXITED, STOPPED...
                          verdict=verdicts.append)     # Verdict(kind=PANIC) while QEMU stays up
    identity = await backend.start("vm", QemuUnit(backend="qemu", forward=["8080:80"]))
    await backend.phase_reboot("vm")                   # after a panic: back to service-ready (warm standby)
    await backend.cold_reboot("vm")                    # or boot again
    await backend.stop("vm", timeout_s=10)

See ``backend`` for the promises. ``QemuBackend`` composes: ``machine`` (one QEMU: process, QMP,
console, gate; ``BootError``), ``standby`` (the warm standby that makes phase reboots take
milliseconds, and its takeover), ``wholestate`` (save, restore, clone), ``monitor_api`` (what can be
observed and done from outside the guest), ``disks`` (how the data disk stays consistent),
``phase_image`` (the image standbys start from), ``strays`` (QEMUs a dead supervisor left). All of them
reach the host through ``host.QemuHost`` and QMP through ``qmp.Monitor``; ``fake`` (a test seam)
replaces exactly that I/O edge with scripted QEMUs. ``image`` builds guest images, ``cli`` is the
``enmei image`` commands.
"""

from enmei.visor.qemu.backend import QemuBackend, VerdictFn
from enmei.visor.qemu.errors import ImageError, MissingToolError, QmpError
from enmei.visor.qemu.image import ImageInfo, build, list_images, resolve

__all__ = ["ImageError", "ImageInfo", "MissingToolError", "QemuBackend", "QmpError", "VerdictFn", "build",
           "list_images", "resolve"]
