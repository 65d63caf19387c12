"""D-Visor for virtual machines: QEMU units controlled over QMP, and the guest images they boot.

>>> from enmei.visor.qemu import QemuBackend, build, resolve   # doctest: +SKIP
>>> info = build(progress=lambda what, done, total: None)      # doctest: +SKIP
>>> backend = QemuBackend(clock=SystemClock(), state_dir=Path(".enmei"), emit=print,
...                       verdict=print)                        # doctest: +SKIP
>>> await backend.start("vm", QemuUnit(backend="qemu", forward=["8080:80"]))  # doctest: +SKIP

See ``backend`` for the promises, ``image`` for how images are built, ``monitor_api`` for what can
be observed and done from outside the guest.
"""

from enmei.visor.qemu.backend import QemuBackend, VerdictFn
from enmei.visor.qemu.errors import ImageError, MissingToolError, QmpError
from enmei.visor.qemu.image import ImageInfo, build, list_images, resolve

__all__ = ["ImageError", "ImageInfo", "MissingToolError", "QemuBackend", "QmpError", "VerdictFn", "build",
           "list_images", "resolve"]
