"""The engine keeps ``after``/``requires`` (``enmei.engine.order``), on the fake backend and fake time:
a unit after another is started once that one runs, enmei is ready (``first_starts``) only after both
had their attempt, shutdown stops in reverse, and a required unit's crash is not decided for its
dependent (which waits, journaled). The loop's progress signal feeds the sd_notify watchdog."""

from __future__ import annotations

from pathlib import Path

from enmei.model import UnitState
from support.harness import start_rig

TWO = """
[units.web]
command = ["/bin/true"]
start_s = 1.0
stop_timeout_s = 3.0
requires = ["db"]
[units.db]
command = ["/bin/true"]
start_s = 1.0
stop_timeout_s = 3.0
"""


async def test_a_unit_starts_after_what_it_requires_and_stops_before_it(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, TWO)
    e = rig.engine
    try:
        assert e.units["web"].state is UnitState.PENDING and not e.first_starts.is_set()
        assert rig.bodies("unit.event", "web")[0] == {
            "event": "waiting", "for": ["db"], "cause": "waiting for db to start first (after)"}
        assert await rig.advance_until(lambda: e.units["web"].state is UnitState.RUNNING, 10)
        assert e.first_starts.is_set()
        seq = {(u, b.get("to")): s for s, k, u, b in rig.records if k == "unit.state"}
        start = next(s for s, k, u, b in rig.records if k == "decision" and u == "web")
        assert seq[("db", "running")] < start
        assert e.progress()  # a drained queue is progress
    finally:
        await rig.close()
    seq = {(u, b.get("to")): s for s, k, u, b in rig.records if k == "unit.state"}
    assert seq[("web", "stopped")] < seq[("db", "stopping")]


async def test_a_crash_of_what_it_requires_is_not_decided_for_the_dependent(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, TWO)
    e = rig.engine
    try:
        assert await rig.advance_until(lambda: e.units["web"].state is UnitState.RUNNING, 10)
        before = len(rig.records)
        e.backend("process").crash("db")  # type: ignore[attr-defined]
        e.backend("process").crash("web")  # type: ignore[attr-defined]
        await rig.until(lambda: e.units["web"].state is UnitState.STOPPED)
        later = rig.records[before:]
        waiting = [b for _, k, u, b in later if k == "unit.event" and u == "web" and b["event"] == "waiting"]
        assert waiting and waiting[0]["for"] == ["db"], later
        assert not [b for _, k, u, b in later if k == "decision" and u == "web"]
        # db is restarted by the policy; web is started once db runs again.
        assert await rig.advance_until(lambda: e.units["web"].state is UnitState.RUNNING, 30)
        web = [b for _, k, u, b in rig.records[before:] if k == "decision" and u == "web"]
        assert [(b["action"], b["rule"]) for b in web] == [("start", "requires")]
    finally:
        await rig.close()


async def test_enmei_is_ready_when_what_a_unit_requires_is_not_going_to_start(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, TWO.replace('[units.db]\n', '[units.db]\nautostart = false\n'))
    e = rig.engine
    try:
        assert await rig.until(e.first_starts.is_set)
        assert e.units["web"].state is UnitState.PENDING and e.units["db"].state is UnitState.STOPPED
        causes = [b["cause"] for b in rig.bodies("unit.event", "web") if b["event"] == "waiting"]
        assert causes[-1] == "not started: requires db, which is not running", causes
        e.submit("start", "db")  # once db runs, web starts
        assert await rig.advance_until(lambda: e.units["web"].state is UnitState.RUNNING, 10)
    finally:
        await rig.close()
