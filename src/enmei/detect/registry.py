"""The registry of unit-detector kinds: each kind registers its options model and its factory.

::

    class SpikeOptions(DetectorOptions):          # the keys of [[units.NAME.detectors]], validated
        metric: str
        above: float = Field(gt=0)

    register("spike", SpikeOptions, lambda ctx, opts: Spike(ctx.unit, opts))

A unit's ``[[units.NAME.detectors]]`` entries are validated against the options model of their
``kind`` when the config is read (an unknown kind or a bad key is a config error naming file, key and
line; so is an entry that does not fit its unit, which :func:`check_fits` finds by building it once);
the engine then builds each with :func:`build`. A factory refuses what does not fit with ``ValueError``.
Adding a detector is a new module that calls :func:`register` — no edit in the engine, the config or
the policy.

``register`` refuses a kind that is already registered (``ValueError``), so that two modules can never
silently replace each other's detector.
"""

from __future__ import annotations

import difflib
import importlib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ByteSize, ConfigDict, Field, TypeAdapter, ValidationError

from enmei.detect.protocol import DetectorContext, UnitDetector

__all__ = ["BUILTIN_MODULES", "DetectorKind", "DetectorOptions", "build", "byte_sizes", "check_fits", "get", "kinds",
           "register", "unregister", "validate_entries"]

OptionsT = TypeVar("OptionsT", bound="DetectorOptions")



def byte_sizes(v: Any) -> Any:
    """A mapping's string values read as sizes with units (``rss_bytes = "512MiB"``), numbers kept as they
    are; anything else is left for the model to refuse."""
    if isinstance(v, Mapping):
        adapter = TypeAdapter(ByteSize)
        return {k: float(adapter.validate_python(x)) if isinstance(x, str) else x for k, x in v.items()}
    return v


class DetectorOptions(BaseModel):
    """The keys every ``[[units.NAME.detectors]]`` entry has; a kind's options model extends it.

    ``name`` tells two detectors of one kind apart (default: the kind).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: str
    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

    @property
    def detector_name(self) -> str:
        return self.name or self.kind


@dataclass(frozen=True)
class DetectorKind:
    kind: str
    options: type[DetectorOptions]
    factory: Callable[[DetectorContext, Any], UnitDetector]
    origin: str  # the module that registered it (for a person reading an error)
    #: Options that build a working detector of this kind (with ``kind``), for the contract suite and
    #: the docs: a unit with an ``http`` and a ``log`` probe, a ``proc`` probe, a keys injector ``typing``.
    example: Mapping[str, Any]


_KINDS: dict[str, DetectorKind] = {}

#: The modules of the built-in kinds, imported (and so registered) the first time the registry is asked
#: about kinds: an import of the registry alone (the config does it) stays light.
BUILTIN_MODULES = ("enmei.detect.failures", "enmei.detect.judges", "enmei.detect.latency", "enmei.detect.reaction",
                   "enmei.detect.logmatch", "enmei.detect.metric", "enmei.detect.aging_unit",
                   "enmei.detect.keylogger", "enmei.detect.crossview", "enmei.detect.logsignature")
_loaded: set[str] = set()


def _ensure_builtins() -> None:
    if _loaded:
        return
    _loaded.add("builtins")  # first: each module calls register() while it is imported
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def register(kind: str, options: type[OptionsT], factory: Callable[[DetectorContext, OptionsT], UnitDetector],
             *, example: Mapping[str, Any] | None = None) -> None:
    """Make ``kind`` available to ``[[units.NAME.detectors]]``. Raises ``ValueError`` if it exists, or if
    ``example`` (default: no options) does not validate."""
    _ensure_builtins()
    if kind in _KINDS:
        raise ValueError(f"detector kind {kind!r} is already registered (by {_KINDS[kind].origin})")
    if not issubclass(options, DetectorOptions):
        raise TypeError(f"options of detector kind {kind!r} must extend DetectorOptions")
    sample = {**(example or {}), "kind": kind}
    options.model_validate(sample)
    _KINDS[kind] = DetectorKind(kind, options, factory, getattr(factory, "__module__", "?") or "?", sample)


def unregister(kind: str) -> None:
    """Remove ``kind`` (for tests that register a kind of their own); unknown kinds are ignored."""
    _KINDS.pop(kind, None)


def kinds() -> list[str]:
    """The registered kinds, sorted."""
    _ensure_builtins()
    return sorted(_KINDS)


def get(kind: str) -> DetectorKind:
    """The registered ``kind``; ``KeyError`` naming the known ones if there is none."""
    _ensure_builtins()
    try:
        return _KINDS[kind]
    except KeyError:
        raise KeyError(f"no detector kind {kind!r} (known: {', '.join(kinds())})") from None


def build(context: DetectorContext, options: DetectorOptions) -> UnitDetector:
    """A new detector for ``context.unit`` from validated ``options``."""
    return get(options.kind).factory(context, options)


def check_fits(context: DetectorContext, options: DetectorOptions) -> str | None:
    """Why ``options`` cannot make a detector for the unit of ``context`` (its factory's ``ValueError``
    or ``TypeError``), or None when it can. The detector built to find out is dropped."""
    try:
        build(context, options)
    except (ValueError, TypeError, KeyError) as exc:
        return str(exc)
    return None


def validate_entries(raw: Any) -> list[DetectorOptions]:
    """Validate a unit's ``detectors`` list (raw TOML values) against the registered kinds.

    Raises pydantic's ``ValidationError`` whose locations are ``(index, key)``, so that the config
    loader names the file, the key and the line of each problem; unknown keys name the allowed ones.
    """
    if isinstance(raw, (DetectorOptions, Mapping)) or not isinstance(raw, (list, tuple)):
        raise ValidationError.from_exception_data("detectors", [
            _problem((), raw, "must be a list of [[...detectors]] tables")])
    if raw:
        _ensure_builtins()
    out: list[DetectorOptions] = []
    problems: list[Any] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        if isinstance(entry, DetectorOptions):
            opts: DetectorOptions | None = entry
        else:
            opts = _one(i, entry, problems)
        if opts is None:
            continue
        if opts.detector_name in names:
            problems.append(_problem((i, "name"), opts.name,
                                     f"two detectors are named {opts.detector_name!r}: give one a distinct 'name'"))
        names.add(opts.detector_name)
        out.append(opts)
    if problems:
        raise ValidationError.from_exception_data("detectors", problems)
    return out


def _one(i: int, entry: Any, problems: list[Any]) -> DetectorOptions | None:
    if not isinstance(entry, Mapping):
        problems.append(_problem((i,), entry, "a detector is a table with a 'kind'"))
        return None
    kind = entry.get("kind")
    if kind is None:
        problems.append(_problem((i, "kind"), None, f"missing required key 'kind' (one of: {', '.join(kinds())})"))
        return None
    if not isinstance(kind, str) or kind not in _KINDS:  # (the builtins are loaded: the list was not empty)
        close = difflib.get_close_matches(str(kind), kinds(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(kinds())})"
        problems.append(_problem((i, "kind"), kind, f"no detector kind {kind!r}{hint}"))
        return None
    model = _KINDS[kind].options
    try:
        return model.model_validate(entry)
    except ValidationError as exc:
        for err in exc.errors():
            loc = tuple(err["loc"])
            msg = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden" and loc:
                allowed = sorted(_fields_at(model, loc[:-1]))
                close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
                msg = f"unknown key {loc[-1]!r} for a {kind} detector" + (
                    f" (did you mean {close[0]!r}?)" if close else f"; allowed here: {', '.join(allowed)}")
            elif err["type"] == "missing" and loc:
                msg = f"missing required key {loc[-1]!r} for a {kind} detector"
            problems.append(_problem((i, *loc), err.get("input"), msg))
        return None


def _fields_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``path`` inside ``model`` (a nested table such as an aging ``limits``)."""
    for part in path:
        field = model.model_fields.get(str(part))
        inner = [a for a in typing.get_args(field.annotation) if isinstance(a, type)] if field else []
        if field is not None and isinstance(field.annotation, type):
            inner = [field.annotation]
        nested = [a for a in inner if issubclass(a, BaseModel)]
        if not nested:
            break
        model = nested[0]
    return list(model.model_fields)


def _problem(loc: tuple[int | str, ...], value: Any, msg: str) -> Any:
    # A plain value_error: its message reads "Value error, <msg>", which the config loader strips.
    return {"type": "value_error", "loc": loc, "input": value, "ctx": {"error": ValueError(msg)}}
