"""The seams, proven: a backend and a remedy that enmei has never heard of, added from this file alone.

``ToyBackend`` (kind ``toy``: in-memory units with in-memory snapshots), its config model ``ToyUnit`` and a
machine check of its own for ``enmei check`` are declared with **one** ``register_backend`` line; the
``stash`` remedy (it needs the ``snapshot`` capability) with **one** ``register`` line. A config that names
``backend = "toy"`` is then validated like any other (its keys, errors with file:line), and a real
``Engine`` — its factories, its decision checks, the shipped default policy library — starts, supervises
and repairs the toy unit, and refuses ``stash`` for a process unit whose backend has no snapshots.

Files each example touches: the backend, 1 (this file: a model, a class, a check, one registration line);
the remedy, 1 (this file: a class, one registration line). No engine, config or policy file changes, and
nothing is patched: ``test_this_module_only_registers`` checks that this module reaches enmei through
the two registration calls and public imports alone (no ``monkeypatch``, no ``setattr`` on enmei).
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest

from enmei.config import check, load_text
from enmei.config.model import UnitBase
from enmei.errors import StartError
from enmei.model import UnitEvent, UnitEventKind
from enmei.remedy import REMEDIES, Remedy, Result, UnitControl, register, unregister
from enmei.visor.base import Backend, Capability, Identity, missing_verbs, need
from enmei.visor.registry import BackendContext, BackendKind, register_backend, unregister_backend
from support.harness import start_rig


class ToyUnit(UnitBase):
    """``[units.NAME]`` with ``backend = "toy"``."""

    backend: Literal["toy"]
    greeting: str = "hello"


class ToyBackend(Backend):
    """Units that live in a dict; ``crash(name)`` ends one as a real crash would (an EXITED event)."""

    kind: ClassVar[str] = "toy"
    capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.STATS, Capability.SNAPSHOT})
    _pids: ClassVar[Iterator[int]] = itertools.count(7000)

    def __init__(self, ctx: BackendContext) -> None:
        super().__init__(clock=ctx.clock, state_dir=ctx.state_dir, emit=ctx.emit)
        self.running: dict[str, Identity] = {}
        self.snapshots: dict[str, list[str]] = {}

    async def start(self, name: str, spec: Any) -> Identity:
        if not isinstance(spec, ToyUnit):
            raise StartError(name, "start", f"not a toy unit: {type(spec).__name__}")
        ident = Identity(name, self.kind, next(self._pids), self.clock.monotonic(), self.clock.wall(),
                         {"greeting": spec.greeting})
        self.running[name] = ident
        self.emit(UnitEvent(name, UnitEventKind.STARTED, self.clock.monotonic(), {"pid": ident.pid}))
        return ident

    async def stop(self, name: str, *, timeout_s: float) -> None:
        if self.running.pop(name, None) is not None:
            self.emit(UnitEvent(name, UnitEventKind.STOPPED, self.clock.monotonic(), {}))

    async def adopt(self, name: str, spec: Any, identity: Identity) -> bool:
        return False

    def alive(self, name: str) -> bool:
        return name in self.running

    def identity(self, name: str) -> Identity | None:
        return self.running.get(name)

    async def stats(self, name: str) -> dict[str, float]:
        return {"rss_bytes": 1e6} if name in self.running else {}

    def crash(self, name: str) -> None:
        ident = self.running.pop(name)
        self.emit(UnitEvent(name, UnitEventKind.EXITED, self.clock.monotonic(),
                            {"code": 3, "signal": None, "pid": ident.pid, "uptime_s": 1.0}))

    async def snapshot_save(self, name: str, tag: str) -> None:
        self.snapshots.setdefault(name, []).append(tag)

    async def snapshot_load(self, name: str, tag: str) -> None:
        assert tag in self.snapshots.get(name, [])

    async def snapshot_list(self, name: str) -> list[str]:
        return list(self.snapshots.get(name, []))

    async def snapshot_delete(self, name: str, tag: str) -> None:
        self.snapshots.get(name, []).remove(tag)


def _check(name: str, spec: Any, base_dir: Path) -> list[tuple[tuple[str, ...], str]]:
    """The toy backend's machine check, run by ``enmei check``: a toy unit must greet."""
    return [(("greeting",), "a toy unit must greet")] if isinstance(spec, ToyUnit) and not spec.greeting else []


class Stash(Remedy):
    """Take a snapshot of the unit, tagged ``tag``."""

    name: ClassVar[str] = "stash"
    description: ClassVar[str] = "take a snapshot"
    arguments: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"tag": str}
    needs: ClassVar[frozenset[Capability]] = frozenset({Capability.SNAPSHOT})

    def deadline_s(self, unit: UnitControl, args: Mapping[str, Any]) -> float:
        return 5.0

    async def run(self, unit: UnitControl, args: Mapping[str, Any]) -> Result:
        tag = str(args.get("tag", "stash"))
        await need(unit.backend, Capability.SNAPSHOT, unit.name).snapshot_save(unit.name, tag)
        return Result.ok(f"snapshot {tag} taken", tag=tag)


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    register_backend(BackendKind("toy", ToyUnit, ToyBackend, ToyBackend.capabilities, "a test-only backend", _check))
    register(Stash)
    yield
    unregister("stash")
    unregister_backend("toy")


CONFIG = """
[units.t]
backend = "toy"
greeting = "hi"
start_s = 0.5

[units.p]
command = ["/bin/true"]
start_s = 0.5
"""


def test_the_toy_backend_keeps_the_backend_contract() -> None:
    assert missing_verbs(ToyBackend) == {}


def test_a_config_naming_the_new_backend_is_validated_with_its_own_keys(tmp_path: Path) -> None:
    loaded = load_text(CONFIG, tmp_path / "enmei.toml")
    assert isinstance(loaded.config.units["t"], ToyUnit) and loaded.config.units["t"].greeting == "hi"
    bad = tmp_path / "bad.toml"
    bad.write_text('[units.t]\nbackend = "toy"\ngreting = "hi"\n')
    (problem,) = check(bad)
    assert (problem.key, problem.line) == ("units.t.greting", 3)
    assert "did you mean 'greeting'?" in problem.message
    bad.write_text('[units.t]\nbackend = "toy"\ngreeting = ""\n')
    (problem,) = check(bad)  # the backend's own machine check, located like any other problem
    assert (problem.key, problem.line, problem.message) == ("units.t.greeting", 3, "a toy unit must greet")


async def test_a_real_engine_runs_the_new_backend_and_remedy(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)  # the default policy library; "toy" made by the registry
    try:
        toy = rig.engine.backend("toy")
        assert isinstance(toy, ToyBackend)
        assert await rig.advance_until(lambda: rig.engine.units["t"].state == "running", 5.0)
        assert rig.engine.view().units["t"].capabilities == {"stats", "snapshot"}

        rig.engine.submit("stash", "t", {"tag": "before"})
        assert await rig.advance_until(lambda: any(b.get("action") == "stash" and b.get("state") == "succeeded"
                                                   for b in rig.bodies("remedy.outcome", "t")), 5.0)
        assert toy.snapshots["t"] == ["before"]

        rig.engine.submit("stash", "p")  # the process backend has no snapshots: refused, with why
        assert await rig.until(lambda: any(b.get("action") == "stash" for b in rig.bodies("decision", "p")))
        body = next(b for b in rig.bodies("decision", "p") if b["action"] == "stash")
        assert body["rejected"].startswith("remedy 'stash' needs snapshot, which the process backend lacks")

        old = toy.running["t"].pid
        toy.crash("t")  # the shipped policy restarts a toy unit like any other
        assert await rig.advance_until(lambda: "t" in toy.running and toy.running["t"].pid != old, 10.0)
        assert [b["rule"] for b in rig.bodies("decision", "t") if b["action"] == "restart"] == ["exit-restart"]
    finally:
        await rig.close()
    assert "t" not in toy.running  # stopped at shutdown through the toy backend


def test_this_module_only_registers() -> None:
    """The examples need no edit of enmei and patch nothing: one registration call each, public imports."""
    tree = ast.parse(Path(__file__).read_text())
    calls = [n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    assert calls.count("register_backend") == 1 and calls.count("register") == 1
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.attr for a in ast.walk(tree) if isinstance(a, ast.Attribute)}
    assert not {"monkeypatch", "setattr", "setitem"} & names
    private = [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
               and (n.module or "").startswith("enmei") for a in n.names if a.name.startswith("_")]
    assert private == []
    assert "stash" not in REMEDIES or REMEDIES["stash"] is Stash
