"""D-Visor: backends that run and control units and expose one monitor API.

Backends register themselves in ``enmei.visor.registry`` (the built-in ones in ``enmei.visor.kinds``).
``ProcessBackend`` and ``StateFile`` are imported on first use, so that importing the registry (as the
config does) does not import a backend.
"""

from typing import TYPE_CHECKING, Any

from enmei.visor.base import Backend, Capability, EmitFn, Identity

if TYPE_CHECKING:
    from enmei.visor.process import ProcessBackend
    from enmei.visor.state import StateFile

__all__ = ["Backend", "Capability", "EmitFn", "Identity", "ProcessBackend", "StateFile"]


def __getattr__(name: str) -> Any:
    if name == "ProcessBackend":
        from enmei.visor.process import ProcessBackend

        return ProcessBackend
    if name == "StateFile":
        from enmei.visor.state import StateFile

        return StateFile
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
