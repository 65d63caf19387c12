"""The backend registry: every kind of unit (``backend = "..."`` in the config) is declared here.

A backend declares its ``kind``, its config model (the ``[units.NAME]`` keys for that kind, a subclass
of ``enmei.config.model.UnitBase`` with ``backend: Literal[kind]``), the capabilities of its monitor API
and a factory, and registers the declaration with ``register_backend``. The config's union of unit
models (``enmei.config.model.config_model``) and the engine's backends (``make_backend``) are built from
the registry; neither names a backend. Adding a backend is new files plus one registration line.

The config model and the factory may be given as ``"module:attribute"`` strings: they are imported on
first use, so a heavy or optional backend (QEMU) costs nothing until a unit of its kind exists. The
built-in declarations live in ``enmei.visor.kinds`` (light: it imports no backend), which the registry
loads the first time it is asked anything.

A factory receives a ``BackendContext`` — the clock, the state and base directories, and the two
callbacks a backend reports through (unit events, and verdicts of its own such as a guest's panic)::

    >>> from enmei.visor.registry import backend_kinds, capabilities_of
    >>> sorted(backend_kinds())[:2]
    ['process', 'qemu']
    >>> sorted(str(c) for c in capabilities_of("process"))
    ['handover', 'logs', 'stats']

``register_backend`` refuses a second declaration of a kind; ``backend_kind`` names the kinds it knows
when asked for one it does not.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from enmei.clock import Clock
from enmei.errors import EnmeiError
from enmei.model import UnitEvent, Verdict
from enmei.visor.base import Capability

if TYPE_CHECKING:
    from enmei.visor.base import Backend

__all__ = [
    "BackendContext",
    "BackendFactory",
    "BackendKind",
    "CheckFn",
    "UnknownBackendError",
    "backend_kind",
    "backend_kinds",
    "capabilities_of",
    "config_models",
    "generation",
    "make_backend",
    "register_backend",
    "unregister_backend",
]

# The modules whose import registers the built-in backends (one registration line each, in them).
BUILTIN_DECLARATIONS: tuple[str, ...] = ("enmei.visor.kinds",)


def _drop_verdict(verdict: Verdict) -> None:
    """The default verdict sink of a context made without one: verdicts go nowhere."""


@dataclass(frozen=True)
class BackendContext:
    """What a backend factory gets from the engine: time, where to keep files, where to report.

    ``emit`` receives ``UnitEvent`` facts (started, exited, stopped...), ``verdict`` the backend's own
    judgements (a guest's panic). Both must be called on the engine's event loop.
    """

    clock: Clock
    state_dir: Path
    base_dir: Path
    emit: Callable[[UnitEvent], None]
    verdict: Callable[[Verdict], None] = _drop_verdict


BackendFactory = Callable[[BackendContext], "Backend"]
# (unit name, its config model, the config's directory) -> (key path under units.NAME, message) pairs
CheckFn = Callable[[str, Any, Path], Iterable[tuple[tuple[str, ...], str]]]


class UnknownBackendError(EnmeiError):
    """No backend of this kind is registered. ``kind`` and ``known`` are attributes."""

    def __init__(self, kind: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.known = tuple(sorted(known))
        super().__init__(f"unknown backend {kind!r} (known: {', '.join(self.known) or 'none'})")


@dataclass(frozen=True)
class BackendKind:
    """The declaration of one backend: its kind, config model, capabilities and factory.

    ``config`` is a pydantic model class or ``"module:Class"``; ``factory`` a callable taking a
    ``BackendContext`` or ``"module:function"``; ``check`` (optional) a ``CheckFn`` or its name, the
    machine checks ``enmei check`` runs for each unit of the kind. Strings are imported on first use
    (heavy backends stay unimported until needed). ``capabilities`` must be what the backend class declares: it is what
    ``enmei check`` and the policy see before any backend exists.
    """

    kind: str
    config: type[Any] | str
    factory: BackendFactory | str
    capabilities: frozenset[Capability] = frozenset({Capability.STATS})
    description: str = ""
    check: CheckFn | str | None = None
    _resolved: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def config_model(self) -> type[Any]:
        """The config model class (imported now if it was declared by name)."""
        return self._resolve("config", self.config)  # type: ignore[no-any-return]

    def machine_problems(self, name: str, spec: Any, base_dir: Path) -> list[tuple[tuple[str, ...], str]]:
        """What the backend's ``check`` finds wrong with unit ``name`` on this machine: ``(key path under
        units.NAME, message)`` pairs, for ``enmei check`` to locate. No check declared: none."""
        if self.check is None:
            return []
        check: CheckFn = self._resolve("check", self.check)
        return list(check(name, spec, base_dir))

    def make(self, ctx: BackendContext) -> Backend:
        """A new backend made by the factory (imported now if it was declared by name)."""
        factory: BackendFactory = self._resolve("factory", self.factory)
        return factory(ctx)

    def _resolve(self, what: str, ref: Any) -> Any:
        if not isinstance(ref, str):
            return ref
        if what not in self._resolved:
            module, sep, attr = ref.partition(":")
            if not sep:
                raise EnmeiError(f"backend {self.kind!r}: {what} {ref!r} is not 'module:attribute'")
            try:
                self._resolved[what] = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as exc:
                raise EnmeiError(f"backend {self.kind!r}: cannot import its {what} {ref!r}: {exc}") from exc
        return self._resolved[what]


class _Registry:
    """The registry's state (one per process)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.kinds: dict[str, BackendKind] = {}
        self.generation = 0
        self.builtins_loaded = False


_reg = _Registry()


def _ensure_builtins() -> None:
    with _reg.lock:
        if _reg.builtins_loaded:
            return
        _reg.builtins_loaded = True  # first: a declaration module calls register_backend while imported
        for module in BUILTIN_DECLARATIONS:
            importlib.import_module(module)


def register_backend(decl: BackendKind) -> BackendKind:
    """Add a backend declaration. Raises ``EnmeiError`` if its kind is already registered."""
    if not decl.kind or not decl.kind.replace("_", "").replace("-", "").isalnum():
        raise EnmeiError(f"backend kind {decl.kind!r}: use letters, digits, '_' and '-'")
    if decl.kind != decl.kind.lower():
        raise EnmeiError(f"backend kind {decl.kind!r}: use lower case")
    _ensure_builtins()
    with _reg.lock:
        old = _reg.kinds.get(decl.kind)
        if old is not None:
            raise EnmeiError(f"backend {decl.kind!r} is already registered ({old.description or old.factory})")
        _reg.kinds[decl.kind] = decl
        _reg.generation += 1
    return decl


def unregister_backend(kind: str) -> None:
    """Remove a declaration (for tests that register a backend of their own); unknown kinds are ignored."""
    with _reg.lock:
        if _reg.kinds.pop(kind, None) is not None:
            _reg.generation += 1


def generation() -> int:
    """A number that changes whenever the registry does (what caches built from it key on)."""
    _ensure_builtins()
    return _reg.generation


def backend_kinds() -> Mapping[str, BackendKind]:
    """Every registered declaration by kind (a copy)."""
    _ensure_builtins()
    with _reg.lock:
        return dict(_reg.kinds)


def backend_kind(kind: str) -> BackendKind:
    """The declaration of ``kind``. Raises ``UnknownBackendError`` naming the known kinds."""
    kinds = backend_kinds()
    decl = kinds.get(kind)
    if decl is None:
        raise UnknownBackendError(kind, kinds)
    return decl


def capabilities_of(kind: str) -> frozenset[Capability]:
    """The declared capabilities of backend ``kind`` (without making or importing the backend)."""
    return backend_kind(kind).capabilities


def config_models() -> list[type[Any]]:
    """The config model of every registered backend, in registration order."""
    return [decl.config_model() for decl in backend_kinds().values()]


def make_backend(kind: str, ctx: BackendContext) -> Backend:
    """A new backend of ``kind``. Raises ``UnknownBackendError``, or what the factory raises."""
    return backend_kind(kind).make(ctx)
