"""Errors of the QEMU backend, inside enmei's tree (``enmei.errors``)::

    VisorError
     +-- ImageError               a guest image could not be built or found
     |    +-- MissingToolError    a Debian package the host needs is not installed
     +-- QmpError                 a QMP command failed, timed out, or the connection is gone
     +-- BootError                the guest did not reach a boot phase in time, or QEMU exited first
 +-- KernelInfoError          a guest kernel cannot be read from outside (no BTF, unknown layout, not the guest's)

``MissingToolError`` carries ``install_command``, the exact ``apt-get install`` line to run.
"""

from __future__ import annotations

from enmei.errors import VisorError

__all__ = ["BootError", "ImageError", "KernelInfoError", "MissingToolError", "QmpError"]


class ImageError(VisorError):
    """A guest image could not be built or found. ``unit`` holds the image name."""

    def __init__(self, image: str, action: str, cause: str) -> None:
        super().__init__(image, action, cause)

    def __str__(self) -> str:
        return f"image {self.unit!r}: {self.action} failed: {self.cause}"


class MissingToolError(ImageError):
    """A host tool is missing; ``install_command`` is the ``apt-get install`` line that brings it."""

    def __init__(self, image: str, action: str, tool: str, packages: list[str]) -> None:
        self.tool = tool
        self.packages = list(packages)
        self.install_command = "apt-get install -y " + " ".join(packages)
        super().__init__(image, action, f"{tool} is not installed; run: {self.install_command}")


class QmpError(VisorError):
    """A QMP command failed (``cause`` holds QEMU's answer), timed out, or found no connection."""


class BootError(VisorError):
    """The guest did not reach boot phase ``phase`` in time (``exited`` False), or its QEMU exited
    while it was awaited (``exited`` True). ``cause`` names what was awaited, the phases seen and the
    console's last lines."""

    def __init__(self, unit: str, action: str, cause: str, *, phase: str, exited: bool = False) -> None:
        super().__init__(unit, action, cause)
        self.phase = phase
        self.exited = exited


class KernelInfoError(VisorError):
    """What the outside view needs of a guest kernel cannot be had: ``unit`` names the kernel file (or the
    guest), ``action`` the step (``unpack``, ``btf``, ``init_task``, ``match``), ``cause`` what is wrong."""

    def __str__(self) -> str:
        return f"kernel {self.unit}: {self.action}: {self.cause}"
