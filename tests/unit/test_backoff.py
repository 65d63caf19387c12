"""Backoff by cause, reset after a healthy period, and the shipped breaker's keys (issue 12 item 7, issue 13).

A real engine with the shipped Starlark library over the fake backend and a fake clock. Each test failed
on the code before these keys: the first retry of a crash loop came after 0.0 s, a healthy hour did not
reset the backoff (it counted restarts in the window), probe-caused restarts grew the crash backoff, and
the breaker's 4 / 120 s / 300 s were constants of the library whatever the config said.
"""

from __future__ import annotations

from pathlib import Path

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


async def test_the_first_retry_of_a_crash_loop_waits_backoff_first_s(tmp_path: Path) -> None:
    rig = await start_rig(tmp_path, CONFIG)
    try:
        await rig.advance(1.5)  # running, but not yet for reset_after_s: a crash now is a retry
        delays = [await _crash_and_restart(rig) for _ in range(4)]
        assert delays == [1.0, 2.0, 4.0, 8.0]  # old code: [0.0, 1.0, 2.0, 4.0]
        assert rig.engine.units["a"].crash_retries == 4
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
        assert [await _crash_and_restart(rig) for _ in range(3)] == [1.0, 2.0, 4.0]
        await rig.advance(21)  # running for reset_after_s: it proved itself
        assert rig.engine.view().units["a"].next_delay_s == 0.0
        assert await _crash_and_restart(rig) == 0.0  # restarted at once (old code: 8.0)
        assert await _crash_and_restart(rig) == 1.0  # and a new streak begins
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
        # ... a crash now is the first crash retry: backoff_first_s (old code: 4.0, grown by the probes)
        assert await _crash_and_restart(rig) == 1.0
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
        assert await rig.advance_until(lambda: len(_restart_delays(rig)) >= 2, 60)
        assert any(b["event"] == "startup_timeout" for b in rig.bodies("unit.event", "a"))
        # (between c87691f and cd36a19 this was [0.0, 0.0]: the stop of a starting unit is not a crash)
        assert _restart_delays(rig)[:2] == [1.0, 2.0]
    finally:
        await rig.close()
