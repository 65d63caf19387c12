"""Live reload: re-read the config file, say what changed, and apply it unit by unit.

``diff_configs(old, new)`` is pure: which units were added, removed or changed (with the changed keys,
dotted: ``restart.budget``, ``command``), and which ``[supervisor]`` keys changed — those are never
applied live (the state dir, the journal, its key, the policy file and the timers are bound when enmei
starts): they are named, and the old values stay in force until enmei is restarted.

A changed unit is *updated in place* (same process, no restart) when only keys that act on how it is
watched and judged changed (``IN_PLACE``: probes, detectors, injectors, restart/escalate/rejuvenate
budgets, degrade modes, ``autostart``, ``after``/``requires``); any other key (its command, environment,
identity, limits, stop or start-up settings, backend) means it is *restarted*: stopped with its old spec,
started with the new one.

``Reloader.request()`` promises: on any error (a file that does not read, is not TOML, fails validation or
the machine checks such as a missing user), nothing changes — the old config stays in force — and a
``reload`` record holds the error with file:line:key; otherwise a ``reload`` record holds the diff, and the
diff is applied by one task (removed units stopped, changed ones restarted or updated, added ones started;
unchanged units are not touched), ending with a ``reload`` record ``applied``. One reload at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from enmei.config.load import LoadedConfig, load
from enmei.config.model import Config, UnitBase
from enmei.errors import ConfigError
from enmei.model import RecordKind, Severity

__all__ = ["IN_PLACE", "ConfigDiff", "Reloader", "UnitChange", "UnitSet", "diff_configs"]

log = logging.getLogger(__name__)

#: unit keys whose change is applied to the running instance (its probes, detectors, budgets are rebuilt);
#: a change to any other key restarts the unit
IN_PLACE = frozenset({"probes", "detect", "detectors", "injectors", "restart", "escalate", "rejuvenate",
                      "degrade", "autostart", "after", "requires"})


@dataclass(frozen=True)
class UnitChange:
    """A unit in both configs whose settings differ: ``keys`` (dotted), and how it is applied."""

    name: str
    keys: tuple[str, ...]
    how: Literal["restart", "in_place"]


@dataclass(frozen=True)
class ConfigDiff:
    """What a reload changes. ``supervisor``: ``[supervisor]`` keys that differ and are *not* applied."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[UnitChange, ...] = ()
    unchanged: tuple[str, ...] = ()
    supervisor: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to apply to the units (supervisor-level changes are never applied)."""
        return not (self.added or self.removed or self.changed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": list(self.added), "removed": list(self.removed),
            "changed": {c.name: {"keys": list(c.keys), "how": c.how} for c in self.changed},
            "unchanged": list(self.unchanged),
            "not_applied": {f"supervisor.{k}": "bound at start: restart enmei to apply it"
                            for k in self.supervisor},
        }

    def describe(self) -> str:
        """One line for a person: ``+web -old ~db(command: restart) =api; not applied: supervisor.tick_s``."""
        parts = [f"+{n}" for n in self.added] + [f"-{n}" for n in self.removed]
        parts += [f"~{c.name}({', '.join(c.keys)}: {c.how.replace('_', ' ')})" for c in self.changed]
        parts += [f"={n}" for n in self.unchanged]
        text = " ".join(parts) or "no units"
        if self.supervisor:
            text += "; not applied (restart enmei): " + ", ".join(f"supervisor.{k}" for k in self.supervisor)
        return text


def _changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ; a table is descended into, a list or value compared whole."""
    out: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        if isinstance(a, Mapping) and isinstance(b, Mapping) and a and b:
            out.extend(_changed_keys(a, b, f"{prefix}{key}."))
        else:
            out.append(f"{prefix}{key}")
    return out


def diff_configs(old: Config, new: Config) -> ConfigDiff:
    """What changes from ``old`` to ``new``; unit names in the new file's order (removed: the old's)."""
    changed: list[UnitChange] = []
    unchanged: list[str] = []
    for name, spec in new.units.items():
        before = old.units.get(name)
        if before is None:
            continue
        keys = _changed_keys(before.model_dump(), spec.model_dump())
        if not keys:
            unchanged.append(name)
            continue
        in_place = type(before) is type(spec) and all(k.split(".", 1)[0] in IN_PLACE for k in keys)
        changed.append(UnitChange(name, tuple(keys), "in_place" if in_place else "restart"))
    return ConfigDiff(
        added=tuple(n for n in new.units if n not in old.units),
        removed=tuple(n for n in old.units if n not in new.units),
        changed=tuple(changed), unchanged=tuple(unchanged),
        supervisor=tuple(_changed_keys(old.supervisor.model_dump(), new.supervisor.model_dump())),
    )


class UnitSet(Protocol):
    """What a reload uses of the engine (``enmei.engine.loop.Engine`` implements it)."""

    loaded: LoadedConfig
    config: Config

    def record(self, kind: str, unit: str | None, body: Mapping[str, Any]) -> int: ...

    def alert(self, unit: str | None, message: str, severity: Severity, data: Mapping[str, Any]) -> None: ...

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]: ...

    async def remove_unit(self, name: str, reason: str) -> None:
        """Stop the unit (its running remedy cancelled first) and forget it."""

    async def replace_unit(self, name: str, spec: UnitBase, reason: str) -> None:
        """Stop the unit with its old spec, then build and start it with ``spec``."""

    def update_unit(self, name: str, spec: UnitBase, reason: str) -> None:
        """Give the running unit ``spec`` (its probes, detectors, budget rebuilt); the instance stays."""

    def add_unit(self, name: str, spec: UnitBase, reason: str) -> None:
        """Build the unit and start it if it is autostart."""


@dataclass
class Reloader:
    """Reloads for one engine: one at a time, each journaled (``reload`` records), the old config kept on
    any error. A request while one is being applied is queued (``queued`` record): once the apply ends,
    the file is read again — as it is then — and applied; requests queued meanwhile are one reload.
    ``on_reloading``/``on_done`` are told when an apply begins and ends (sd_notify)."""

    engine: UnitSet
    loader: Callable[[str], LoadedConfig] = load
    on_reloading: Callable[[], None] | None = None
    on_done: Callable[[ConfigDiff], None] | None = None
    task: asyncio.Task[Any] | None = None
    count: int = 0
    queued: list[str] = field(default_factory=list)  # who asked while an apply ran (served as one reload)

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def request(self, by: str = "operator") -> dict[str, Any]:
        """Re-read the config file and apply what changed. Returns (and journals) the diff, with
        ``ok = True`` and ``applying`` (False when nothing is to be done); or ``ok = False`` and
        ``error`` (with ``problems``: file, line, key, message each) when the file is refused — then
        nothing changed. While a reload is being applied: ``ok = True``, ``queued = True`` (the file is
        read once that apply has ended; its diff and outcome are journaled then)."""
        engine = self.engine
        path = str(engine.loaded.path)
        if self.busy:
            self.queued.append(by)
            body: dict[str, Any] = {"event": "queued", "by": by, "config": path, "ok": True, "queued": True,
                                    "after_reload": self.count,
                                    "message": f"reload {self.count} is being applied; the file is read again "
                                               "once it is done"}
            engine.record(RecordKind.RELOAD, None, body)
            return body
        try:
            fresh = self.loader(path)
        except ConfigError as exc:
            problems = list(getattr(exc, "problems", [exc]))
            body = {"event": "rejected", "by": by, "config": path, "ok": False,
                    "error": f"{exc}; the old config stays in force",
                    "problems": [{"file": p.file, "line": p.line, "key": p.key, "message": p.message,
                                  "text": str(p)} for p in problems]}
            engine.record(RecordKind.RELOAD, None, body)
            engine.alert(None, f"reload refused: {exc} (the old config stays in force)", Severity.WARNING,
                         {"config": path, "problems": len(problems)})
            log.warning("reload refused: %s", exc)
            return body
        diff = diff_configs(engine.config, fresh.config)
        self.count += 1
        body = {"event": "diff", "by": by, "config": path, "ok": True, "reload": self.count,
                "config_sha256": fresh.sha256, "previous_sha256": engine.loaded.sha256,
                "applying": not diff.empty, "summary": diff.describe(), **diff.as_dict()}
        engine.record(RecordKind.RELOAD, None, body)
        log.warning("reload %d: %s", self.count, diff.describe())
        # The supervisor section in force stays the old one (its keys are bound at start); the units are new.
        merged = fresh.config.model_copy(update={"supervisor": engine.config.supervisor})
        target = replace(fresh, config=merged)
        if diff.empty:
            self._commit(target)
            if self.on_done is not None:
                self.on_done(diff)
            return body
        if self.on_reloading is not None:
            self.on_reloading()
        self.task = engine.spawn(self._apply(diff, target, self.count), f"reload {self.count}")
        return body

    def _commit(self, target: LoadedConfig) -> None:
        self.engine.loaded = target
        self.engine.config = target.config

    async def _apply(self, diff: ConfigDiff, target: LoadedConfig, number: int) -> None:
        engine = self.engine
        specs = target.config.units
        failed: dict[str, str] = {}

        async def guarded(name: str, step: Awaitable[None]) -> None:
            try:
                await step
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one unit's trouble does not stop the others' reload
                log.exception("reload of unit %s failed", name)
                failed[name] = f"{type(exc).__name__}: {exc}"

        why = f"reload {number}"
        # Removed units go first (they may hold ports the added ones want), then the restarted ones.
        await asyncio.gather(*(guarded(n, engine.remove_unit(n, f"{why}: removed from the config"))
                               for n in diff.removed))
        # The new config is in force from here: units built from now on read it.
        self._commit(target)
        for change in diff.changed:
            keys = ", ".join(change.keys)
            if change.how == "in_place":
                await guarded(change.name, _now(engine.update_unit, change.name, specs[change.name],
                                                f"{why}: {keys} changed (updated in place)"))
        await asyncio.gather(*(guarded(c.name, engine.replace_unit(c.name, specs[c.name],
                                                                   f"{why}: {', '.join(c.keys)} changed"))
                               for c in diff.changed if c.how == "restart"))
        for name in diff.added:
            await guarded(name, _now(engine.add_unit, name, specs[name], f"{why}: added to the config"))
        engine.record(RecordKind.RELOAD, None, {"event": "applied", "reload": number, "ok": not failed,
                                                "failed": failed, "summary": diff.describe()})
        if failed:
            engine.alert(None, f"reload {number} could not apply every unit: {failed}", Severity.WARNING,
                         {"failed": failed})
        if self.on_done is not None:
            self.on_done(diff)
        if self.queued:
            asked, self.queued = self.queued, []
            self.task = None  # this apply is done: the queued request starts its own
            self.request(", ".join(dict.fromkeys(asked)))


async def _now(fn: Callable[[str, UnitBase, str], None], name: str, spec: UnitBase, reason: str) -> None:
    fn(name, spec, reason)
