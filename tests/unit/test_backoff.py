"""Backoff by cause, reset after a healthy period, and the shipped breaker's keys (issue 12 item 7, issue 13).

A real engine with the shipped Starlark library over the fake backend and a fake clock. Each test failed
on the code before these keys: the first retry of a crash loop came after 0.0 s, a healthy hour did not
reset the backoff (it counted restarts in the window), probe-caused restarts grew the crash backoff, and
the breaker's 4 / 120 s / 300 s were constants of the library whatever the config said.

A retry starts no sooner than its backoff step after the start it retries: it waits the step less the
time the crashed instance lived (``RestartBudget.crash_delay_s``). Before that rule a crash 1.5 s after a
start still waited the whole step (``bench daemons``: enmei 0.5 s behind Monit on a Redis kill -9).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from enmei.model import Severity, UnitState, Verdict, VerdictKind
from support.harness import Rig, start_rig

CONFIG = """
[units.a]
command = ["/bin/true"]
start_s = 1.0
[units.a.restart]
backoff_first_s = 1.0
backoff_factor = 2.0
reset_after_s = 20
budget = 50
window_s = 3600
[units.a.escalate]
retry_every_s = 30
breaker_failures = 20
"""


def _restart_delays(rig: Rig) -> list[float]:
    return [float(b["args"].get("delay_s", 0.0)) for b in rig.bodies("decision", "a") if b["action"] == "restart"]


async def _crash_and_restart(rig: Rig) -> float:
    rig.backend.crash("a", code=3)
    await rig.quiesce()
    delay = _restart_delays(rig)[-1]
    assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING, delay + 5)
    return delay


async def test_a_crash_loop_retry_starts_no_sooner_than_its_step_after_the_start_it_retries(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    unit = rig.engine.units["a"]
    try:
        await rig.advance(1.5)  # running, but not yet for reset_after_s: a crash now is a retry
        steps, delays, lived, gaps = [1.0, 2.0, 4.0, 8.0], [], [], []
        for _ in steps:
            assert unit.started_mono is not None
            began = unit.started_mono
            lived.append(rig.clock.monotonic() - began)
            delays.append(await _crash_and_restart(rig))
            assert unit.started_mono is not None
            gaps.append(unit.started_mono - began)
        for step, delay, age, gap in zip(steps, delays, lived, gaps, strict=True):
            assert delay == pytest.approx(max(0.0, step - age), abs=1e-6)
            assert gap >= step - 1e-6  # never a start sooner than the step after the one retried
        # the first crash came 1.5 s after its start, past the 1 s step: restarted at once (old code: 1.0)
        assert delays[0] == 0.0 and delays[1] > 0.0 and delays[3] > delays[2] > delays[1]
        assert unit.crash_retries == 4
    finally:
        await rig.close()


async def test_a_failed_start_is_retried_after_backoff_first_s(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG, prepare={"fail_starts": 2})
    try:
        await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING, 30)
        assert _restart_delays(rig) == [1.0, 2.0]
    finally:
        await rig.close()


async def test_backoff_resets_after_a_healthy_period(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await rig.advance(1.5)
        grown = [await _crash_and_restart(rig) for _ in range(3)]
        assert grown[2] > grown[1] > 0.0  # steps 1, 2, 4 less the ~1 s each instance lived
        await rig.advance(21)  # running for reset_after_s: it proved itself
        assert rig.engine.view().units["a"].next_delay_s == 0.0
        assert await _crash_and_restart(rig) == 0.0  # restarted at once (old code: 8.0)
        # a new streak begins: its 1st step (1 s) has passed since the start, its 2nd (2 s) has not
        assert await _crash_and_restart(rig) == 0.0
        assert 0.0 < await _crash_and_restart(rig) < grown[2]
    finally:
        await rig.close()


async def test_probe_caused_restarts_do_not_grow_the_crash_backoff(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await rig.advance(1.5)
        probe_delays = []
        for i in range(3):
            rig.engine.queue.put_nowait(Verdict("a", "probe-failures:http", VerdictKind.PROBE_FAILED,
                                                Severity.CRITICAL, rig.clock.monotonic(), f"probe failed ({i})"))
            await rig.quiesce()
            probe_delays.append(_restart_delays(rig)[-1])
            assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.RUNNING,
                                           probe_delays[-1] + 5)
        # the probe's own failures were the first wait; then its own streak grows
        assert probe_delays == [0.0, 1.0, 2.0]  # old code: [0.0, 1.0, 2.0] too, but ...
        # ... a crash now is the first crash retry: backoff_first_s less the ~1 s the instance lived
        # (old code: 4.0, grown by the probes)
        assert await _crash_and_restart(rig) < 1.0
    finally:
        await rig.close()


async def test_the_shipped_breaker_follows_the_escalate_keys(tmp_path: Path) -> None:
    config = CONFIG.replace("breaker_failures = 20", "breaker_failures = 2\nbreaker_within_s = 60\n"
                            "breaker_open_s = 100")
    rig = await start_rig(tmp_path, config)
    try:
        await rig.advance(1.5)
        view = rig.engine.view().units["a"]
        assert (view.breaker_failures, view.breaker_within_s, view.breaker_open_s) == (2, 60.0, 100.0)
        assert view.as_dict()["breaker_open_s"] == 100.0  # the API shows what the breaker uses
        await _crash_and_restart(rig)
        rig.backend.crash("a", code=3)  # the 2nd failure within 60 s trips it (the library's 4 did not)
        await rig.quiesce()
        last = rig.bodies("decision", "a")[-1]
        assert last["action"] == "escalate" and last["rule"] == "flapping/open"
        assert last["args"]["retry_in_s"] == 100  # max(breaker_open_s, retry_every_s); old code: 300
        assert rig.engine.units["a"].state is UnitState.ESCALATED
        assert await rig.advance_until(lambda: rig.engine.units["a"].state is UnitState.STARTING, 101)
        assert rig.clock.monotonic() >= 100
    finally:
        await rig.close()


async def test_a_reload_in_place_takes_the_new_reset_after_s(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        unit = rig.engine.units["a"]
        new = unit.spec.model_copy(update={"restart": unit.spec.restart.model_copy(update={"reset_after_s": 3.0})})
        unit.respec(new)
        assert unit.budget.reset_after_s == 3.0 and unit.view(rig.clock.monotonic()).reset_after_s == 3.0
    finally:
        await rig.close()


async def test_a_start_up_that_never_completes_is_retried_with_backoff(tmp_path: Path) -> None:
    config = CONFIG.replace("start_s = 1.0", 'start_s = 1.0\nstartup_log = "never printed"\nstartup_timeout_s = 5')
    rig = await start_rig(tmp_path, config)
    try:
        assert await rig.advance_until(lambda: len(_restart_delays(rig)) >= 4, 120)
        assert any(b["event"] == "startup_timeout" for b in rig.bodies("unit.event", "a"))
        # Each try lived its 5 s start-up timeout: steps 1, 2 and 4 s have passed by then (retried at
        # once), the 4th step (8 s) has not: it waits the ~3 s left. (Between c87691f and cd36a19 the
        # retries were not counted at all: the stop of a starting unit is not a crash; a 4th retry also
        # waited 0 then.)
        delays = _restart_delays(rig)[:4]
        assert delays[:3] == [0.0, 0.0, 0.0]
        assert delays[3] == pytest.approx(3.0, abs=0.5)
    finally:
        await rig.close()
