"""The probes' schedules go on across ``enmei ctl upgrade``: the stopping engine keeps each probe's next
due time (``Engine.probe_next``), and an engine given them (``probe_due``) probes at those times, not a
fresh interval after it started (issue 15 item 3: no interval missed by more than one period). Fake clock,
fake backend; the real handover is ``tests/integration/test_upgrade.py``."""

from __future__ import annotations

from pathlib import Path

from enmei.clock import FakeClock
from enmei.engine import Engine
from enmei.model import Observation
from support.harness import start_rig

CFG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[[units.a.probes]]
kind = "process"
interval_s = 4
"""


async def test_a_successor_engine_probes_at_the_due_times_the_old_one_handed_on(tmp_path: Path) -> None:
    clock = FakeClock()
    rig = await start_rig(tmp_path, CFG, clock=clock)
    await rig.advance(5.0)  # the first probe ran at +4 s: the next is due at +8 s
    due = rig.engine.probe_next[("a", "proc")]
    assert due == clock.monotonic() + 3.0
    rig.engine.stop(leave_running=True)
    await rig.quiesce()
    await rig.task
    rig.journal.close()

    seen: list[float] = []

    def successor(engine: Engine) -> None:
        engine.probe_due = {("a", "proc"): due}
        engine.observers.append(lambda obs: seen.append(obs.mono) if isinstance(obs, Observation) else None)

    rig2 = await start_rig(tmp_path, CFG, clock=clock, before_run=successor)
    try:
        await rig2.advance(3.5)
        # At the old schedule's +8 s, 3 s after the takeover — not 4 s after it, as a fresh loop would.
        assert seen == [due]
        await rig2.advance(4.0)
        assert seen == [due, due + 4.0]
        assert rig2.engine.probe_due == {}  # used once
    finally:
        await rig2.close()


async def test_an_overdue_probe_runs_at_once_and_a_far_one_is_not_waited_for(tmp_path: Path) -> None:
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    cfg = CFG + '[[units.a.probes]]\nkind = "process"\nname = "far"\ninterval_s = 4\n'

    def successor(engine: Engine) -> None:
        now = clock.monotonic()
        engine.probe_due = {("a", "proc"): now - 10.0, ("a", "far"): now + 600.0}
        engine.observers.append(lambda obs: seen.append((obs.probe, obs.mono)))

    rig = await start_rig(tmp_path, cfg, clock=clock, before_run=successor)
    start = clock.monotonic()
    try:
        await rig.advance(1.2)  # running now; "proc" was overdue: its first slot passed while not running
        await rig.advance(4.0)
        probes = {p for p, _ in seen}
        assert "far" in probes  # bounded by one interval, not 600 s
        assert next(t for p, t in seen if p == "far") <= start + 4.0 + 1e-6
        assert next(t for p, t in seen if p == "proc") <= start + 4.0 + 1e-6
    finally:
        await rig.close()
