"""D-Visor: backends that run and control units and expose one monitor API."""

from enmei.visor.base import Backend, Capability, EmitFn, Identity
from enmei.visor.process import ProcessBackend
from enmei.visor.state import StateFile

__all__ = ["Backend", "Capability", "EmitFn", "Identity", "ProcessBackend", "StateFile"]
