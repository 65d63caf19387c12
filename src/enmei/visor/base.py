"""The D-Visor seam: a backend runs units (lifecycle) and exposes the monitor API by capability.

Every backend is a ``Backend``: it starts, stops and adopts units, reports facts about them as
``UnitEvent`` through the ``emit`` callback it is given (``STARTED``, ``EXITED``, ``STOPPED``...), and
answers ``stats`` (resource use) and ``log_path`` (None when it captures nothing). Beyond that, the monitor
API is a set of small protocols, one per ``Capability``, and a backend implements the ones it has:

=================  ==========================  =====================================================
capability         protocol                    verbs
=================  ==========================  =====================================================
``snapshot``       ``Snapshots``               ``snapshot_save/load/list/delete``
``phase_reboot``   ``PhaseRebootable``         ``phase_reboot`` (back to a snapshotted boot phase)
``reboot``         ``Rebootable``              ``cold_reboot`` (reset, boot again)
``save_state``     ``WholeState``              ``state_save``, ``state_restore``
``clone``          ``Cloneable``               ``clone``
``inject_keys``    ``KeyInjection``            ``send_keys``
``read_memory``    ``MemoryReads``             ``read_memory``
``block_stats``    ``BlockStats``              ``block_stats``
``net_stats``      ``NetStats``                ``net_stats``
``net_link``       ``NetLink``                 ``set_link`` (the unit's network cut or restored)
=================  ==========================  =====================================================

(``stats``, ``logs``, ``cpu_time`` and ``panic_events`` need no verbs beyond the base.) A backend class
declares its ``capabilities``; ``need(backend, Capability.X, unit)`` returns it typed as the protocol, or
raises ``VisorError`` naming the unit, the backend and what it lacks. ``missing_verbs`` lists the verbs a
class declares but does not implement (the contract every registered backend is checked against).
Remedies ask for capabilities (``Remedy.needs``), never for a backend's name.

Backends never decide anything: restarts, backoff and escalation belong to remedies and policy.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, overload, runtime_checkable

from enmei.clock import Clock
from enmei.errors import VisorError
from enmei.model import UnitEvent

__all__ = [
    "PROTOCOLS",
    "Backend",
    "BlockStats",
    "Capability",
    "Cloneable",
    "EmitFn",
    "Identity",
    "KeyInjection",
    "MemoryReads",
    "NetLink",
    "NetStats",
    "PhaseRebootable",
    "Rebootable",
    "Snapshots",
    "WholeState",
    "missing_verbs",
    "need",
    "supports",
]

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
    PHASE_REBOOT = "phase_reboot"  # back to a boot phase snapshotted earlier instead of booting again
    REBOOT = "reboot"  # reset the machine and boot it again
    SHADOW_UPDATE = "shadow_update"  # boot a clone into new boot files while the unit serves, then swap
    REPLACE_VMM = "replace_vmm"  # a fresh hypervisor process under the live guest (``rejuvenate_vmm``)
    HANDOVER = "handover"  # a new instance started beside the running one on held sockets (process units)
    NET_LINK = "net_link"  # the unit's network link cut and restored (isolation of a suspect guest)


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
    """Runs units of one kind: the lifecycle every backend has. Subclasses implement the abstract
    methods, declare ``capabilities``, and implement the protocol of each capability they declare."""

    kind: ClassVar[str]
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS})

    def __init__(self, *, clock: Clock, state_dir: Path, emit: EmitFn) -> None:
        self.clock = clock
        self.state_dir = state_dir
        self.emit = emit

    # -- lifecycle ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def start(self, name: str, spec: Any) -> Identity:
        """Start unit ``name``. Raises ``StartError`` (the unit is then not running). Cancelled, it either
        ends what it began or leaves it running as the unit's (``alive`` says which; the engine then stops
        it: a start that did not complete is a failed start)."""

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

    def forget(self, name: str) -> None:  # noqa: B027 - optional hook
        """The unit left the config (it is stopped): release what the backend still holds for it (the
        process backend: its held listening sockets)."""

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


# -- the monitor API by capability -------------------------------------------------------------------


@runtime_checkable
class Snapshots(Protocol):
    """Internal snapshots of a unit: save, load, list, delete (by tag)."""

    async def snapshot_save(self, name: str, tag: str) -> None: ...

    async def snapshot_load(self, name: str, tag: str) -> None: ...

    async def snapshot_list(self, name: str) -> list[str]: ...

    async def snapshot_delete(self, name: str, tag: str) -> None: ...


@runtime_checkable
class PhaseRebootable(Protocol):
    async def phase_reboot(self, name: str) -> float:
        """Bring the unit back to the boot phase it was snapshotted at (instead of rebooting);
        returns the seconds it took. Raises ``VisorError`` (no snapshot, a corrupt one...)."""
        ...


@runtime_checkable
class Rebootable(Protocol):
    async def cold_reboot(self, name: str) -> float:
        """Reset the unit's machine and boot it again; returns the seconds it took."""
        ...


@runtime_checkable
class WholeState(Protocol):
    """The whole state of a unit saved to a file, and restored into a fresh instance."""

    async def state_save(self, name: str, path: Path) -> None: ...

    async def state_restore(self, name: str, path: Path) -> None: ...


@runtime_checkable
class Cloneable(Protocol):
    async def clone(self, name: str, new_name: str) -> Identity:
        """A running copy of unit ``name`` as unit ``new_name``."""
        ...


@runtime_checkable
class KeyInjection(Protocol):
    async def send_keys(self, name: str, text: str) -> None:
        """Type ``text`` on the unit's keyboard."""
        ...


@runtime_checkable
class MemoryReads(Protocol):
    async def read_memory(self, name: str, address: int, size: int) -> bytes:
        """``size`` bytes of the unit's (guest-physical) memory at ``address``."""
        ...


@runtime_checkable
class BlockStats(Protocol):
    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        """I/O counters per block device (``rd_bytes``, ``wr_bytes``...)."""
        ...


@runtime_checkable
class NetStats(Protocol):
    async def net_stats(self, name: str) -> dict[str, float]:
        """Bytes and packets through the unit's network."""
        ...


@runtime_checkable
class NetLink(Protocol):
    async def set_link(self, name: str, up: bool) -> None:
        """Connect (``up``) or disconnect the unit's network; the unit runs on either way."""
        ...


@runtime_checkable
class VmmReplaceable(Protocol):
    async def rejuvenate_vmm(self, name: str, *, binary: str | None = None) -> dict[str, Any]:
        """Replace the process running the unit's machine by a fresh one, the guest running on; a report
        of how it went. Raises ``VisorError`` (before the switch the old process runs on)."""
        ...


#: The protocol of each capability that has verbs of its own.
PROTOCOLS: dict[Capability, type] = {
    Capability.SNAPSHOT: Snapshots,
    Capability.PHASE_REBOOT: PhaseRebootable,
    Capability.REBOOT: Rebootable,
    Capability.SAVE_STATE: WholeState,
    Capability.CLONE: Cloneable,
    Capability.INJECT_KEYS: KeyInjection,
    Capability.READ_MEMORY: MemoryReads,
    Capability.BLOCK_STATS: BlockStats,
    Capability.NET_STATS: NetStats,
    Capability.REPLACE_VMM: VmmReplaceable,
    Capability.NET_LINK: NetLink,
}


def supports(backend: Backend, capability: Capability) -> bool:
    """Whether ``backend`` declares ``capability``."""
    return capability in backend.capabilities


def missing_verbs(cls: type[Backend]) -> dict[Capability, list[str]]:
    """For each capability ``cls`` declares, the verbs of its protocol that ``cls`` does not define."""
    out: dict[Capability, list[str]] = {}
    for cap in sorted(cls.capabilities):
        proto = PROTOCOLS.get(cap)
        if proto is None:
            continue
        verbs = [v for v in _verbs(proto) if not callable(getattr(cls, v, None))]
        if verbs:
            out[cap] = verbs
    return out


def _verbs(proto: type) -> list[str]:
    return sorted(n for n, v in vars(proto).items() if not n.startswith("_") and callable(v))


@overload
def need(backend: Backend, capability: Literal[Capability.SNAPSHOT], unit: str) -> Snapshots: ...
@overload
def need(backend: Backend, capability: Literal[Capability.PHASE_REBOOT], unit: str) -> PhaseRebootable: ...
@overload
def need(backend: Backend, capability: Literal[Capability.REBOOT], unit: str) -> Rebootable: ...
@overload
def need(backend: Backend, capability: Literal[Capability.SAVE_STATE], unit: str) -> WholeState: ...
@overload
def need(backend: Backend, capability: Literal[Capability.CLONE], unit: str) -> Cloneable: ...
@overload
def need(backend: Backend, capability: Literal[Capability.INJECT_KEYS], unit: str) -> KeyInjection: ...
@overload
def need(backend: Backend, capability: Literal[Capability.READ_MEMORY], unit: str) -> MemoryReads: ...
@overload
def need(backend: Backend, capability: Literal[Capability.BLOCK_STATS], unit: str) -> BlockStats: ...
@overload
def need(backend: Backend, capability: Literal[Capability.NET_STATS], unit: str) -> NetStats: ...
@overload
def need(backend: Backend, capability: Literal[Capability.REPLACE_VMM], unit: str) -> VmmReplaceable: ...
@overload
def need(backend: Backend, capability: Literal[Capability.NET_LINK], unit: str) -> NetLink: ...
def need(backend: Backend, capability: Capability, unit: str) -> Any:
    """``backend`` as the protocol of ``capability``, for acting on ``unit``.

    Raises ``VisorError(unit, capability, ...)`` naming the backend and its capabilities when it does not
    declare ``capability``: the same failure whoever asks (a remedy, an injector, the web).
    """
    if capability not in backend.capabilities:
        have = ", ".join(sorted(str(c) for c in backend.capabilities)) or "none"
        raise VisorError(unit, str(capability), f"not supported by the {backend.kind} backend (it has: {have})")
    return backend
