"""Injectors only inject and observe; the ``reaction`` detector judges (the keys injector's old verdict)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import pytest

from enmei.clock import FakeClock
from enmei.config.load import load_text
from enmei.config.model import KeysInjector, ProcessUnit
from enmei.monitor.inject import KeysInjection
from enmei.visor.base import Capability
from enmei.visor.fake import FakeBackend
from enmei.visor.registry import BackendContext, BackendKind, register_backend, unregister_backend
from support.harness import start_rig


class TypewriterUnit(ProcessUnit):
    """``backend = "typewriter"``: a fake process unit with a keyboard and a disk."""

    backend: Literal["typewriter"]  # type: ignore[assignment]


class Typewriter(FakeBackend):
    """The fake backend with a keyboard and a disk: each key typed writes ``per_key`` bytes."""

    kind: ClassVar[str] = "typewriter"
    capabilities: ClassVar[frozenset[Capability]] = FakeBackend.capabilities | {
        Capability.INJECT_KEYS, Capability.BLOCK_STATS}
    per_key = 0.0
    written = 0.0

    async def send_keys(self, name: str, text: str) -> None:
        self.written += len(text) * self.per_key

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        return {"vda": {"wr_bytes": self.written, "rd_bytes": 0.0}}


def _typewriter(ctx: BackendContext) -> Typewriter:
    return Typewriter(clock=ctx.clock, state_dir=ctx.state_dir, emit=ctx.emit)


@pytest.fixture(autouse=True, scope="module")
def _registered() -> Iterator[None]:
    register_backend(BackendKind("typewriter", TypewriterUnit, _typewriter, Typewriter.capabilities,
                                 "a test-only fake with keys and block stats"))
    yield
    unregister_backend("typewriter")


CONFIG = """
[units.a]
backend = "typewriter"
command = ["/bin/true"]
start_s = 1.0
[[units.a.injectors]]
kind = "keys"
name = "typing"
text = "hello"
react_s = 1.0
max_reaction = 100
"""


async def test_the_keys_injector_reports_its_reaction_and_does_not_judge_it(tmp_path: Path) -> None:
    clock = FakeClock()
    backend = Typewriter(clock=clock, state_dir=tmp_path, emit=lambda ev: None)
    backend.per_key = 1000.0
    cfg = KeysInjector(kind="keys", name="typing", text="hello", react_s=1.0, max_reaction=100)
    task = asyncio.create_task(KeysInjection("a", cfg, clock, backend).observe())
    for _ in range(100):  # the injector waits react_s of fake time for the reaction
        if task.done():
            break
        await asyncio.sleep(0)
        clock.advance(0.25)
    obs = await task
    assert obs.ok and obs.error is None  # far past the bound, and still only an observation
    assert obs.values == {"reaction_wr_bytes": 5000.0}


async def test_an_out_of_bounds_reaction_is_a_verdict_of_the_reaction_detector(tmp_path: Path) -> None:
    assert load_text(CONFIG, tmp_path / "enmei.toml").config.units["a"].detectors == []  # the default set
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await rig.advance(1.2)
        assert [d.name for d in rig.engine.judges["a"]] == ["probe_failures", "reaction:typing"]
        rig.engine.submit("inject", "a", {"injector": "typing"})
        assert await rig.advance_until(lambda: rig.bodies("unit.health", "a"), 5.0)
        assert rig.bodies("unit.health", "a")[-1]["to"] == "ok" and not rig.bodies("verdict", "a")
        b = rig.engine.backend("typewriter")
        assert isinstance(b, Typewriter)
        b.per_key = 1000.0  # now the guest writes whenever someone types
        rig.engine.submit("inject", "a", {"injector": "typing"})
        assert await rig.advance_until(lambda: rig.bodies("verdict", "a"), 5.0)
        (verdict,) = rig.bodies("verdict", "a")
        assert verdict["kind"] == "probe_failed" and verdict["detector"] == "reaction:typing"
        assert verdict["evidence"]["value"] == 5000.0 and verdict["evidence"]["limit"] == 100.0
        health = [h for h in rig.bodies("unit.health", "a") if h["to"] == "failing"]
        assert health and "moved by 5000" in health[0]["reason"]
        # The policy answers it as it answered the injector's own verdict before: a restart.
        seq = next(s for s, k, u, _ in rig.records if k == "verdict" and u == "a")
        assert await rig.advance_until(
            lambda: any(d.get("cause_seq") == seq and d["action"] == "restart" for d in rig.bodies("decision", "a")),
            5.0)
    finally:
        await rig.close()
