"""The typing schedule run by the engine (``kind = "typing_schedule"``), over the fake backend with a
keyboard, a disk and a network link: its rounds are journaled slot by slot, the keylogger detector's
verdict goes through the shipped policy (isolate: the link cut), a benign guest's round ends without
an accusation, and rounds start and stop as the policy and the unit's state say."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from typer.testing import CliRunner

from enmei.cli.main import app
from enmei.clock import FakeClock
from enmei.config.model import TypingScheduleInjector
from enmei.model import Observation
from enmei.monitor.rounds import ScheduleInjection
from enmei.visor.base import Capability
from enmei.visor.fake import FakeBackend
from support.harness import start_rig


class Guest(FakeBackend):
    """Overrides only the I/O edge: keys typed go to ``typed``; ``log_keys`` makes each one a disk
    write (a keylogger); ``periodic_s`` writes on a timer whatever is typed (a benign logger); the
    link is a list of what was asked."""

    capabilities: ClassVar[frozenset[Capability]] = FakeBackend.capabilities | {Capability.NET_LINK}
    log_keys = False
    periodic_s = 0.0

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.typed = ""
        self.writes = 0.0
        self.link: list[bool] = []

    async def send_keys(self, name: str, text: str) -> None:
        self.typed += text
        if self.log_keys:
            self.writes += len(text)

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        timer = int(self.clock.monotonic() / self.periodic_s) if self.periodic_s else 0
        return {"data": {"wr_operations": self.writes + timer, "wr_bytes": (self.writes + timer) * 512}}

    async def net_stats(self, name: str) -> dict[str, float]:
        return {"tx_bytes": 0.0, "rx_bytes": 0.0}

    async def guest_running(self, name: str) -> bool:
        return True

    async def set_link(self, name: str, up: bool) -> None:
        self.link.append(up)


def config(auto: bool = True) -> str:
    return f"""
[units.vm]
command = ["/bin/true"]
start_s = 0.5

[[units.vm.injectors]]
kind = "typing_schedule"
auto = {str(auto).lower()}
every_s = 100
round_slots = 24
round_s = 120
gap_s = 2.0
jitter_s = 0.5
key_gap_s = 0.01
seed = 5

[[units.vm.detectors]]
kind = "keylogger"
windows_s = [0.5, 1.0]
max_looks = 3
permutations = 999
"""


async def test_the_engine_runs_a_round_journals_it_and_isolates_a_keylogger(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, config(), backend_cls=Guest, prepare={"log_keys": True})
    try:
        def ended() -> bool:
            return any(b["event"] == "round_end" for b in rig.bodies("injection", "vm"))

        assert await rig.advance_until(ended, 200.0)
        await rig.advance(5.0)
        inj = rig.bodies("injection", "vm")
        start = next(b for b in inj if b["event"] == "round_start")
        assert start["seed"] == 5 and start["round"] == 1 and start["bait"].startswith("pw=")
        slots = [b for b in inj if b["event"] == "inject"]
        # every slot journaled as it ended, bursts and controls alike, with its delivered state
        assert {b["keys"] for b in slots} == {True, False}
        assert all(b["delivered"] is True for b in slots if b["keys"])
        assert all(b["delivered"] is None for b in slots if not b["keys"])
        assert [b["slot"] for b in slots] == list(range(1, len(slots) + 1))
        (end,) = [b for b in inj if b["event"] == "round_end"]
        assert end["why"] == "verdict keylogger_suspected" and end["slots"] >= 12
        # the verdict with its evidence, the shipped policy's isolation (the link cut) and its alert
        (verdict,) = [b for b in rig.bodies("verdict", "vm") if b["kind"] == "keylogger_suspected"]
        assert verdict["detector"] == "keylogger:typing-schedule"
        assert float(verdict["evidence"]["p_value"]) <= 0.01 / 3
        assert any(d["action"] == "isolate" for d in rig.bodies("decision", "vm"))
        assert any(o["action"] == "isolate" and o["state"] == "succeeded" for o in rig.bodies("remedy.outcome", "vm"))
        g = rig.engine.backend("process")
        assert isinstance(g, Guest) and g.link == [False]
        # what an operator reads: enmei box tail --kind injection --unit vm
        out = CliRunner().invoke(app, ["box", "tail", "--journal", str(rig.journal.path), "--kind", "injection",
                                       "--unit", "vm", "-n", "500"])
        assert out.exit_code == 0, out.output
        assert out.output.count(" injection ") == len(inj) and '"event":"round_end"' in out.output
        # no probe_failures verdict from the schedule's observations, no restart
        assert not [b for b in rig.bodies("verdict", "vm") if b["kind"] == "probe_failed"]
        assert not [d for d in rig.bodies("decision", "vm") if d["action"] == "restart"]
    finally:
        await rig.close()


async def test_a_benign_guest_round_ends_with_no_accusation(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, config(), backend_cls=Guest, prepare={"periodic_s": 1.7})
    try:
        def ended() -> bool:
            return any(b["event"] == "round_end" for b in rig.bodies("injection", "vm"))

        assert await rig.advance_until(ended, 300.0)
        g = rig.engine.backend("process")
        assert isinstance(g, Guest) and g.typed  # keys were typed
        kinds = [b["kind"] for b in rig.bodies("verdict", "vm")]
        assert "keylogger_suspected" not in kinds and "bot_suspected" not in kinds
        assert g.link == []
        (end,) = [b for b in rig.bodies("injection", "vm") if b["event"] == "round_end"]
        assert end["why"] in ("verdict clean", "verdict inconclusive", "slots used up"), end
    finally:
        await rig.close()


async def test_no_round_without_auto_until_triggered_and_a_pause_ends_it(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, config(auto=False), backend_cls=Guest)
    try:
        await rig.advance(60.0)
        assert rig.bodies("injection", "vm") == []  # auto = false: the policy starts rounds
        inj = rig.engine.injectors["vm"]["typing-schedule"]
        assert isinstance(inj, ScheduleInjection)
        assert inj.trigger() is None
        await rig.advance(5.0)
        assert [b["event"] for b in rig.bodies("injection", "vm")][:1] == ["round_start"]
        inj.pause(30.0)  # the policy's pause ends the round at the next observation
        await rig.advance(2.0)
        ends = [b for b in rig.bodies("injection", "vm") if b["event"] == "round_end"]
        assert len(ends) == 1 and ends[0]["why"] == "paused by the policy for 30 s"
    finally:
        await rig.close()


async def test_a_round_ends_when_the_gate_closes_and_a_backend_without_a_keyboard_is_refused_once(
        tmp_path: Path) -> None:
    clock = FakeClock()
    cfg = TypingScheduleInjector.model_validate({"kind": "typing_schedule", "every_s": 0, "gap_s": 1.0,
                                                 "key_gap_s": 0.01, "seed": 1})
    g = Guest(clock=clock, state_dir=tmp_path, emit=lambda e: None)
    inj = ScheduleInjection("vm", cfg, clock, g)
    records: list[tuple[str, Mapping[str, Any]]] = []
    seen: list[Observation] = []
    closed: list[str] = []
    task = asyncio.ensure_future(
        inj.run(lambda: closed[0] if closed else None, seen.append, lambda k, d: records.append((k, d))))
    try:
        for _ in range(400):
            if any(k == "inject" for k, _ in records):
                break
            clock.advance(0.05)
            await asyncio.sleep(0)
        assert any(k == "inject" for k, _ in records)
        closed.append("a remedy runs on the unit")
        for _ in range(100):
            if any(k == "round_end" for k, _ in records):
                break
            clock.advance(0.05)
            await asyncio.sleep(0)
        (end,) = [d for k, d in records if k == "round_end"]
        assert end["why"] == "a remedy runs on the unit"
        n = len(records)
        for _ in range(100):  # the gate stays closed: no new round
            clock.advance(0.5)
            await asyncio.sleep(0)
        assert len(records) == n
    finally:
        task.cancel()
    bare = ScheduleInjection("vm", cfg, clock, FakeBackend(clock=clock, state_dir=tmp_path, emit=lambda e: None))
    refused: list[tuple[str, Mapping[str, Any]]] = []
    await bare.run(lambda: None, seen.append, lambda k, d: refused.append((k, d)))
    assert [k for k, _ in refused] == ["refused"] and "cannot type" in str(refused[0][1]["reason"])
