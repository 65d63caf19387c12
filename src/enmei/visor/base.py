"""The D-Visor seam: one abstract backend that runs units and exposes one monitor API.

A backend starts, stops and adopts units, reports facts about them as ``UnitEvent`` through the
``emit`` callback it is given (``STARTED``, ``EXITED``, ``STOPPED``...), and answers the monitor API:
``stats`` for every backend, and the capabilities listed in ``capabilities`` for the rest (snapshots,
whole-state save, console, key injection, memory reads...). A method a backend does not support raises
``VisorError`` naming the backend; ``capabilities`` says in advance which ones work.

Backends never decide anything: restarts, backoff and escalation belong to remedies and policy.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from enmei.clock import Clock
from enmei.errors import VisorError
from enmei.model import UnitEvent

__all__ = ["Backend", "Capability", "EmitFn", "Identity"]

EmitFn = Callable[[UnitEvent], None]


class Capability(StrEnum):
    """What a backend's monitor API can do beyond start/stop/stats."""

    STATS = "stats"  # resource use (both backends)
    LOGS = "logs"  # captured output / serial console as a log source
    CPU_TIME = "cpu_time"
    BLOCK_STATS = "block_stats"  # per-device I/O counters
    NET_STATS = "net_stats"  # bytes/packets through the unit's network
    READ_MEMORY = "read_memory"  # guest physical memory reads
    INJECT_KEYS = "inject_keys"  # keyboard / text injection
    SNAPSHOT = "snapshot"  # internal snapshots: save, load, list, delete
    SAVE_STATE = "save_state"  # whole-state save and restore into a fresh instance
    CLONE = "clone"
    PANIC_EVENTS = "panic_events"


@dataclass(frozen=True)
class Identity:
    """Who a running unit is, beyond a pid: persisted so a restarted supervisor can adopt it.

    ``create_time`` is re-checked before any signal, so a recycled pid is never signalled.
    """

    unit: str
    backend: str
    pid: int
    create_time: float
    started_wall: float
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "backend": self.backend, "pid": self.pid,
                "create_time": self.create_time, "started_wall": self.started_wall,
                "extra": dict(self.extra)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Identity:
        return cls(unit=str(data["unit"]), backend=str(data["backend"]), pid=int(data["pid"]),
                   create_time=float(data["create_time"]), started_wall=float(data["started_wall"]),
                   extra=dict(data.get("extra") or {}))


class Backend(abc.ABC):
    """Runs units of one kind. Subclasses implement the abstract methods and what they support."""

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS})

    def __init__(self, *, clock: Clock, state_dir: Path, emit: EmitFn) -> None:
        self.clock = clock
        self.state_dir = state_dir
        self.emit = emit

    # -- lifecycle ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self, name: str, spec: Any) -> Identity:
        """Start unit ``name``. Raises ``StartError`` (the unit is then not running)."""

    @abc.abstractmethod
    async def stop(self, name: str, *, timeout_s: float) -> None:
        """Graceful stop, then forced after ``timeout_s``. Emits ``STOPPED``. Raises ``StopError``."""

    @abc.abstractmethod
    async def adopt(self, name: str, spec: Any, identity: Identity) -> bool:
        """Take over a unit left running by an earlier supervisor; False if it is gone or not ours."""

    async def recover(self, name: str, spec: Any) -> Identity | None:
        """Find and adopt an instance of ``name`` that no saved identity names (a supervisor killed
        between starting it and saving its identity). None if there is none; the default finds none."""
        return None

    @abc.abstractmethod
    def alive(self, name: str) -> bool:
        """Whether unit ``name`` is running under this backend now."""

    @abc.abstractmethod
    def identity(self, name: str) -> Identity | None:
        """The identity of the running unit, if any."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's own resources (not the units: they keep running)."""

    def maintain(self) -> None:  # noqa: B027 - optional hook
        """Periodic housekeeping (log rotation...). Called by the engine about once a second."""

    # -- monitor API -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def stats(self, name: str) -> dict[str, float]:
        """Resource use of the unit now (names carry units: ``rss_bytes``, ``cpu_percent``...)."""

    def log_path(self, name: str, stream: str) -> Path | None:
        """The file a unit's ``stream`` (stdout, stderr, console) is captured in, if any."""
        return None

    def _unsupported(self, name: str, action: str) -> VisorError:
        return VisorError(name, action, f"not supported by the {self.kind} backend")

    async def snapshot_save(self, name: str, tag: str) -> None:
        raise self._unsupported(name, "snapshot save")

    async def snapshot_load(self, name: str, tag: str) -> None:
        raise self._unsupported(name, "snapshot load")

    async def snapshot_list(self, name: str) -> list[str]:
        raise self._unsupported(name, "snapshot list")

    async def snapshot_delete(self, name: str, tag: str) -> None:
        raise self._unsupported(name, "snapshot delete")

    async def phase_reboot(self, name: str) -> float:
        """Bring the unit back to the boot phase it was snapshotted at (instead of rebooting);
        returns the seconds it took."""
        raise self._unsupported(name, "phase reboot")

    async def cold_reboot(self, name: str) -> float:
        """Reset the unit's machine and boot it again; returns the seconds it took."""
        raise self._unsupported(name, "cold reboot")

    async def state_save(self, name: str, path: Path) -> None:
        raise self._unsupported(name, "state save")

    async def state_restore(self, name: str, path: Path) -> None:
        raise self._unsupported(name, "state restore")

    async def clone(self, name: str, new_name: str) -> Identity:
        raise self._unsupported(name, "clone")

    async def send_keys(self, name: str, text: str) -> None:
        raise self._unsupported(name, "key injection")

    async def read_memory(self, name: str, address: int, size: int) -> bytes:
        raise self._unsupported(name, "memory read")

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        raise self._unsupported(name, "block stats")

    async def net_stats(self, name: str) -> dict[str, float]:
        raise self._unsupported(name, "network stats")
