"""The remedy seam: a mechanism that repairs a unit, with a deadline and a typed result.

A remedy acts only through ``UnitControl`` (implemented by the engine's unit runtime): start, stop,
wait until a start holds, set the lifecycle state, raise an alert, read recent load. It never judges
and never decides what comes next: it returns a ``Result`` and the policy sees it as an ``Outcome``.

The engine runs each remedy under ``deadline_s``: PENDING -> RUNNING -> SUCCEEDED | FAILED | TIMED_OUT
(or CANCELLED when an operator stops the unit). One remedy runs per unit at a time.

A remedy that needs more of the backend than the lifecycle says so in ``needs`` (capabilities, see
``enmei.visor.base``), never by a backend's name: ``refusal`` says why a unit's backend cannot have it,
and the engine, ``enmei check``, ``enmei policy check`` and the Starlark ``can()`` all use that one test.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from enmei.clock import Clock
from enmei.model import RemedyState, Severity, UnitState
from enmei.visor.base import Backend, Capability

__all__ = ["MAX_SECONDS", "MAX_TEXT", "HostControl", "HostRemedy", "Remedy", "Result", "UnitControl"]

#: the default upper bound of a numeric argument (seconds): a day. A decision that would wait longer
#: (``delay_s=1e300``) leaves a unit down with nothing to show for it; it is refused instead.
MAX_SECONDS = 86_400.0
MAX_TEXT = 1024


class UnitControl(Protocol):
    """What a remedy may do to its unit."""

    name: str
    clock: Clock
    backend: Backend

    @property
    def spec(self) -> Any: ...

    @property
    def state(self) -> UnitState: ...

    def set_state(self, state: UnitState, reason: str) -> None: ...

    def alive(self) -> bool: ...

    async def start(self) -> None:
        """Start the unit (state STARTING). Raises ``StartError``; the unit is then EXITED."""

    async def stop(self, timeout_s: float | None = None) -> None:
        """Stop gracefully, then forced (state STOPPING -> STOPPED). Raises ``StopError``."""

    async def wait_stable(self, start_s: float | None = None) -> str | None:
        """Wait out the start grace period: None if the unit is still up (now RUNNING), else why not."""

    def alert(self, message: str, severity: Severity, data: Mapping[str, Any] | None = None) -> None: ...

    def load_history(self, metric: str, since_mono: float) -> list[tuple[float, float]]:
        """(mono, value) of one observed metric of this unit since ``since_mono``, oldest first."""


@dataclass(frozen=True)
class Result:
    state: RemedyState
    detail: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def ok(cls, detail: str = "", **data: Any) -> Result:
        return cls(RemedyState.SUCCEEDED, detail, data)

    @classmethod
    def failed(cls, detail: str, **data: Any) -> Result:
        return cls(RemedyState.FAILED, detail, data)


class Remedy(abc.ABC):
    """One kind of repair. Subclasses set ``name`` and implement ``run`` and ``deadline_s``."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    #: argument names a decision may pass, with their types; anything else is a malformed decision
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {}
    #: the capabilities a unit's backend must have for this remedy (empty: any backend)
    needs: ClassVar[frozenset[Capability]] = frozenset()
    #: the range of each numeric argument; one not named here must be finite, from 0 to ``MAX_SECONDS``
    bounds: ClassVar[Mapping[str, tuple[float, float]]] = {}
    #: whether a run counts against the unit's restart budget (the engine enforces the budget on it)
    counts_as_restart: ClassVar[bool] = False
    #: "unit": the decision names a unit and the remedy acts through ``UnitControl``; "host": it names
    #: the host (``enmei.policy.actions.HOST``) and acts through ``HostControl``
    scope: ClassVar[str] = "unit"

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if "backends" in cls.__dict__:
            raise TypeError(f"remedy {cls.__name__}: 'backends' (backend names) is gone; declare the capabilities "
                            "it needs instead: needs = frozenset({Capability.SNAPSHOT, ...})")

    @classmethod
    def refusal(cls, capabilities: Iterable[str], backend: str) -> str | None:
        """Why a unit whose ``backend`` has ``capabilities`` cannot have this remedy, or None."""
        have = {str(c) for c in capabilities}
        missing = sorted(str(c) for c in cls.needs if str(c) not in have)
        if not missing:
            return None
        return (f"remedy {cls.name!r} needs {' and '.join(missing)}, which the {backend} backend lacks "
                f"(it has: {', '.join(sorted(have)) or 'none'})")

    @abc.abstractmethod
    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        """How long the whole remedy may take before it is TIMED_OUT."""

    @abc.abstractmethod
    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        """Do the repair. Raising an ``EnmeiError`` counts as FAILED with its message."""

    @classmethod
    def check_args(cls, args: Mapping[str, Any]) -> str | None:
        """Why ``args`` are not acceptable, or None."""
        for key, value in args.items():
            want = cls.arguments.get(key)
            if want is None:
                allowed = ", ".join(sorted(cls.arguments)) or "none"
                return f"remedy {cls.name!r} takes no argument {key!r} (allowed: {allowed})"
            if isinstance(value, bool) and want is not bool and (isinstance(want, type) or bool not in want):
                return f"remedy {cls.name!r}: argument {key!r} must be {_tname(want)}, not a bool"
            if not isinstance(value, want):
                return f"remedy {cls.name!r}: argument {key!r} must be {_tname(want)}, not {type(value).__name__}"
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                low, high = cls.bounds.get(key, (0.0, MAX_SECONDS))
                if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
                    return f"remedy {cls.name!r}: argument {key!r} must be from {low:g} to {high:g}, not {value!r}"
            elif isinstance(value, str) and len(value) > MAX_TEXT:
                return f"remedy {cls.name!r}: argument {key!r} is longer than {MAX_TEXT} characters"
        return None


class HostControl(Protocol):
    """What a host-scope remedy may use: every backend (to replace a hypervisor process, say), every unit
    (a fleet action), the clock, and alerts. ``name`` is ``enmei.policy.actions.HOST``."""

    name: str
    clock: Clock

    @property
    def backends(self) -> Mapping[str, Backend]: ...

    @property
    def units(self) -> Mapping[str, UnitControl]: ...

    def alert(self, message: str, severity: Severity, data: Mapping[str, Any] | None = None) -> None: ...


class HostRemedy(Remedy):
    """A remedy that acts on the host or a backend, not on one unit: the seam for "replace this QEMU
    process", "re-execute enmei itself" and fleet actions. A decision names it with the target
    ``enmei.policy.actions.HOST``. The engine runs it like a unit's remedy (decision, durable intent,
    deadline, outcome), one host remedy at a time, and, when ``counts_as_restart``, within the host's
    own restart budget. Subclasses implement ``host_deadline_s`` and ``run_host``."""

    scope: ClassVar[str] = "host"

    @abc.abstractmethod
    def host_deadline_s(self, host: HostControl, args: Mapping[str, Any]) -> float:
        """How long the whole remedy may take before it is TIMED_OUT."""

    @abc.abstractmethod
    async def run_host(self, host: HostControl, args: Mapping[str, Any]) -> Result:
        """Do the repair. Raising an ``EnmeiError`` counts as FAILED with its message."""

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        raise TypeError(f"{self.name} acts on the host, not on unit {unit.name}")

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        raise TypeError(f"{self.name} acts on the host, not on unit {unit.name}")


def _tname(want: type | tuple[type, ...]) -> str:
    if isinstance(want, tuple):
        return " or ".join(t.__name__ for t in want)
    return want.__name__
