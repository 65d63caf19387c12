"""The engine: the one loop that owns time and concurrency (probe -> detect -> policy -> remedy -> box)."""

from enmei.engine.loop import Command, Engine, journal_for
from enmei.engine.unit import ARCS, UnitRuntime

__all__ = ["ARCS", "Command", "Engine", "UnitRuntime", "journal_for"]
