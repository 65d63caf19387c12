"""The typing schedule against a fake guest (the fake backend with a keyboard, a disk and a network):
never types into a paused guest, records every slot, finds the bait in the sink, feeds the detector."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enmei.clock import SystemClock
from enmei.detect.keylogger import KeyloggerDetector, KeyloggerOptions
from enmei.errors import VisorError
from enmei.model import Observation, VerdictKind
from enmei.monitor.schedule import ScheduleSettings, TypingSchedule
from enmei.visor.fake import FakeBackend

FAST = ScheduleSettings(interval_s=0.005, gap_s=0.06, jitter_s=0.01, key_gap_s=0.0, echo_timeout_s=0.05,
                        max_slots=24, max_s=30.0)


class Keyboard(FakeBackend):
    """Overrides only the I/O edge: keys typed go to ``typed``; ``log_keys`` makes each one a disk
    write; ``leak`` appends them to a sink file; ``paused`` makes the guest refuse keys."""

    paused = False
    log_keys = False
    leak: Path | None = None

    typed: str = ""
    writes = 0.0

    async def send_keys(self, name: str, text: str) -> None:
        if self.paused:
            raise VisorError(name, "key injection", "the guest is paused")
        self.typed += text
        if self.log_keys:
            self.writes += len(text)
        if self.leak is not None:
            with self.leak.open("a") as f:
                f.write(text)

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        return {"data": {"wr_operations": self.writes, "wr_bytes": self.writes * 512}}

    async def net_stats(self, name: str) -> dict[str, float]:
        return {"tx_bytes": 0.0, "rx_bytes": 0.0}

    async def guest_running(self, name: str) -> bool:
        return not self.paused


def _backend(tmp_path: Path) -> Keyboard:
    return Keyboard(clock=SystemClock(), state_dir=tmp_path, emit=lambda e: None)


async def _run(b: Keyboard, tmp_path: Path, *, sink: Path | None = None,
               det: KeyloggerDetector | None = None) -> tuple[dict[str, Any], list[Mapping[str, Any]],
                                                              list[Observation], list[VerdictKind]]:
    records: list[Mapping[str, Any]] = []
    seen: list[Observation] = []
    verdicts: list[VerdictKind] = []

    def emit(obs: Observation) -> bool:
        seen.append(obs)
        if det is not None:
            verdicts.extend(v.kind for v in det.feed(obs).verdicts)
        return bool(verdicts)

    sched = TypingSchedule(b, "vm", SystemClock(), seed=7, settings=FAST, sink=sink,
                           record=lambda kind, detail: records.append({"kind": kind, **detail}))
    summary = await sched.run(emit)
    return summary, records, seen, verdicts


async def test_a_paused_guest_gets_no_keys_and_every_slot_is_recorded(tmp_path: Path) -> None:
    b = _backend(tmp_path)
    b.paused = True
    summary, records, seen, _ = await _run(b, tmp_path)
    assert b.typed == ""
    bursts = [r for r in records if r["keys"]]
    assert bursts and all(r["delivered"] is False and r["error"] == "the guest is paused" for r in bursts)
    assert summary["dropped"] == len(bursts) and summary["bursts"] == 0
    assert len(records) == summary["slots"] == FAST.max_slots
    assert all(o.values["running"] == 0.0 for o in seen)


async def test_keys_that_are_logged_make_the_detector_suspect_a_keylogger(tmp_path: Path) -> None:
    b = _backend(tmp_path)
    b.log_keys = True
    det = KeyloggerDetector("vm", KeyloggerOptions(kind="keylogger", injector="typing-schedule",
                                                   windows_s=(0.01, 0.03), min_slots=6))
    summary, records, _, verdicts = await _run(b, tmp_path, det=det)
    assert verdicts == [VerdictKind.KEYLOGGER_SUSPECTED], (summary, verdicts)
    typed = [r for r in records if r["keys"]]
    assert all(r["delivered"] for r in typed) and sum(r["chars"] for r in typed) == len(b.typed)


async def test_the_bait_found_in_the_sink_is_reported(tmp_path: Path) -> None:
    b = _backend(tmp_path)
    sink = tmp_path / "sink.bin"
    sink.touch()
    b.leak = sink
    det = KeyloggerDetector("vm", KeyloggerOptions(kind="keylogger", injector="typing-schedule"))
    summary, _, seen, verdicts = await _run(b, tmp_path, sink=sink, det=det)
    assert verdicts == [VerdictKind.KEYLOGGER_SUSPECTED]
    assert summary["bait_found"] >= 1 and any(o.values.get("bait_found") for o in seen)


async def test_a_clean_guest_with_its_keys_unlogged_is_not_accused(tmp_path: Path) -> None:
    b = _backend(tmp_path)
    det = KeyloggerDetector("vm", KeyloggerOptions(kind="keylogger", injector="typing-schedule",
                                                   windows_s=(0.01, 0.03), min_slots=6, max_looks=2, look_every=4))
    _, _, _, verdicts = await _run(b, tmp_path, det=det)
    assert VerdictKind.KEYLOGGER_SUSPECTED not in verdicts


class Gone(Keyboard):
    """A guest whose counters cannot be read (its QEMU is gone)."""

    async def block_stats(self, name: str) -> dict[str, dict[str, float]]:
        raise VisorError(name, "block stats", "unit is not running")


async def test_an_unobservable_guest_gives_failed_observations_and_an_inconclusive_verdict(tmp_path: Path) -> None:
    b = Gone(clock=SystemClock(), state_dir=tmp_path, emit=lambda e: None)
    det = KeyloggerDetector("vm", KeyloggerOptions(kind="keylogger", injector="typing-schedule",
                                                   windows_s=(0.01, 0.03), min_slots=3, max_looks=1, look_every=1))
    _, _, seen, verdicts = await _run(b, tmp_path, det=det)
    assert seen and all(not o.ok and o.values["running"] == 0.0 for o in seen)
    assert verdicts == [VerdictKind.INCONCLUSIVE], verdicts  # no verdict from missing data, no crash
    assert b.typed == ""  # not running: no keys


def test_the_bait_is_found_with_two_keys_lost_but_not_three_nor_in_unrelated_traffic(tmp_path: Path) -> None:
    import random
    import string

    sink = tmp_path / "sink.bin"
    sink.write_bytes(b"")
    sched = TypingSchedule(_backend(tmp_path), "vm", SystemClock(), seed=3, settings=FAST, sink=sink)
    bait = sched.bait
    assert len(bait) == 13 and bait.startswith("pw=")
    lost2 = bait[:2] + bait[3:8] + bait[9:]  # '=' and one secret character lost on the way
    lost3 = bait[1:4] + bait[5:9] + bait[10:]
    with sink.open("ab") as f:
        f.write(f"k=abc {lost3}\n".encode())
    assert sched._read_sink() == 0  # three keys lost: no find
    with sink.open("ab") as f:
        f.write(f"k=abc {lost2}\n".encode())
    assert sched._read_sink() == 1
    # a bait cut by a read is found once, when its end arrives; a whole one is one find, not several
    with sink.open("ab") as f:
        f.write(f"k=x {bait[:6]}".encode())
    assert sched._read_sink() == 0
    with sink.open("ab") as f:
        f.write(f"{bait[6:]}\nk=y {bait}".encode())
    assert sched._read_sink() == 2
    assert sched._read_sink() == 0
    # 2 MB of random letters, digits and "pw=" prefixes the monitor did not type: no find
    rng = random.Random(99)
    noise = "".join(rng.choices(string.ascii_lowercase + string.digits, k=2_000_000))
    noise = noise.replace("q", "pw=")
    with sink.open("ab") as f:
        f.write(noise.encode())
    assert sched._read_sink() + sched._read_sink() == 0


def test_every_burst_is_long_enough_to_fill_a_24_key_buffer(tmp_path: Path) -> None:
    sched = TypingSchedule(_backend(tmp_path), "vm", SystemClock(), seed=4)
    texts = [sched._burst_text() for _ in range(200)]
    assert all(24 <= len(t) <= 28 and t.endswith("\n") and "\n" not in t[:-1] for t in texts)
    with_bait = [t for t in texts if sched.bait in t]
    assert 60 <= len(with_bait) <= 140 and all(t.rstrip("\n").endswith(sched.bait) for t in with_bait)


class Echoing(Keyboard):
    """Echoes each typed line on its console ``delay_s`` after its Enter (a guest slow to take keys)."""

    console: Path
    delay_s = 0.04
    line = ""

    async def send_keys(self, name: str, text: str) -> None:
        await super().send_keys(name, text)
        if text != "\n":
            self.line += text
            return
        line, self.line = self.line, ""

        def echo() -> None:
            with self.console.open("a") as f:
                f.write(f"enmei-keys: {line}\r\n")

        asyncio.get_running_loop().call_later(self.delay_s, echo)


async def test_a_fast_phase_then_long_silences_each_in_its_own_blocks(tmp_path: Path) -> None:
    """The phased schedule: 6 fast slots, then slots with at least min_quiet_s of silence after each
    burst; a burst ends when the guest echoed its line (end_at_echo); no slot starts before the one
    before it ended plus its silence; each reports when the next starts; the phases' label blocks are
    separate (a block cut short at the change)."""
    b = Echoing(clock=SystemClock(), state_dir=tmp_path, emit=lambda e: None)
    b.console = tmp_path / "console.log"
    b.console.touch()
    settings = ScheduleSettings(interval_s=0.005, gap_s=0.02, jitter_s=0.0, key_gap_s=0.0, echo_timeout_s=1.0,
                                max_slots=14, max_s=30.0, block_slots=4, fast_slots=6, fast_gap_s=0.01,
                                fast_jitter_s=0.0, fast_quiet_s=0.01, min_quiet_s=0.08, end_at_echo=True)
    records: list[Mapping[str, Any]] = []
    slots: list[Mapping[str, float]] = []

    def emit(obs: Observation) -> bool:
        if "slot" in obs.values:
            slots.append(obs.values)
        return False

    sched = TypingSchedule(b, "vm", SystemClock(), seed=5, settings=settings, console=b.console,
                           record=lambda kind, detail: records.append(detail))
    await sched.run(emit)
    assert len(slots) == 14 and all(r["delivered"] for r in records if r["keys"])
    slots.sort(key=lambda v: v["slot_start"])
    assert [v["slot_phase"] for v in slots] == [0.0] * 6 + [1.0] * 8
    for v, nxt in itertools.pairwise(slots):
        quiet = 0.01 if v["slot_phase"] == 0 else 0.08
        assert nxt["slot_start"] >= v["slot_end"] + quiet - 1e-6  # the silence was kept
        assert abs(v["slot_next"] - nxt["slot_start"]) < 0.05  # and reported
    for r in records:
        if r["keys"]:  # the burst lasted until its echo, after its last key
            assert r["end_mono"] - r["start_mono"] >= r["typed_s"] + b.delay_s - 0.01
    blocks = [int(v["slot_block"]) for v in slots]
    assert blocks == [0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]  # the fast phase's second block cut at 2
    for blk in (0, 2, 3):
        assert sum(v["slot"] for v in slots if v["slot_block"] == blk) == 2  # half keys, shuffled
