from __future__ import annotations

from enmei.model import (
    Health,
    Outcome,
    RemedyState,
    Severity,
    Tick,
    UnitEvent,
    UnitEventKind,
    UnitState,
    Verdict,
    VerdictKind,
)
from enmei.policy.base import UnitView, View
from enmei.policy.builtin import BuiltinPolicy


def uview(**kw: object) -> UnitView:
    base: dict[str, object] = dict(
        name="a", backend="process", state=UnitState.EXITED, health=Health.UNKNOWN, alive=False, uptime_s=None,
        remedy=None, restarts_in_window=0, budget=3, window_s=60.0, next_delay_s=0.0, escalate_retry_s=30.0,
        rejuvenate_every_s=None, rejuvenate_window_s=10.0, stop_timeout_s=5.0)
    base.update(kw)
    return UnitView(**base)  # type: ignore[arg-type]


def view(**kw: object) -> View:
    return View(100.0, {"a": uview(**kw)})


EXIT = UnitEvent("a", UnitEventKind.EXITED, 100.0, {"code": 1, "uptime_s": 3.2})


def test_exit_restarts_with_the_backoff_from_the_view() -> None:
    [d] = BuiltinPolicy().decide(EXIT, view(restarts_in_window=2, next_delay_s=1.0))
    assert (d.action, d.rule, d.args) == ("restart", "exit-restart", {"delay_s": 1.0})
    assert d.reason == "exited with code 1 after 3.2s" and d.policy == "builtin-1"


def test_spent_budget_escalates_never_gives_up() -> None:
    [d] = BuiltinPolicy().decide(EXIT, view(restarts_in_window=3))
    assert d.action == "escalate" and d.rule == "budget-escalate" and d.args["retry_in_s"] == 30.0
    failed = Outcome("a-1", "a", "escalate", RemedyState.FAILED, 1.0, 2.0, "died during start")
    [again] = BuiltinPolicy().decide(failed, view(restarts_in_window=5))
    assert again.action == "escalate"


def test_nothing_while_a_remedy_runs_or_for_unknown_units() -> None:
    assert BuiltinPolicy().decide(EXIT, view(remedy="restart")) == []
    other = UnitEvent("zz", UnitEventKind.EXITED, 1.0, {})
    assert BuiltinPolicy().decide(other, view()) == []


def test_probe_failure_restarts_and_aging_rejuvenates_within_a_quarter_of_the_time_left() -> None:
    failed = Verdict("a", "probe-failures:http", VerdictKind.PROBE_FAILED, Severity.CRITICAL, 1.0, "3 failures")
    [d] = BuiltinPolicy().decide(failed, view(alive=True, state=UnitState.RUNNING))
    assert d.action == "restart" and d.rule == "probe-restart"
    aging = Verdict("a", "aging:rss_bytes", VerdictKind.AGING, Severity.WARNING, 1.0, "rss leaks",
                    {"exhaust_in_s": 20.0})
    [r] = BuiltinPolicy().decide(aging, view(alive=True, state=UnitState.RUNNING))
    assert r.action == "rejuvenate" and r.args == {"window_s": 5.0}


def test_successful_outcomes_and_live_units_need_nothing() -> None:
    ok = Outcome("a-1", "a", "restart", RemedyState.SUCCEEDED, 1.0, 2.0)
    assert BuiltinPolicy().decide(ok, view()) == []
    failed_but_up = Outcome("a-1", "a", "restart", RemedyState.FAILED, 1.0, 2.0)
    assert BuiltinPolicy().decide(failed_but_up, view(alive=True)) == []


def test_scheduled_rejuvenation_on_tick() -> None:
    tick = Tick(100.0, 1e9)
    assert BuiltinPolicy().decide(tick, view(alive=True, uptime_s=50.0, rejuvenate_every_s=60.0)) == []
    [d] = BuiltinPolicy().decide(tick, view(alive=True, uptime_s=61.0, rejuvenate_every_s=60.0))
    assert d.action == "rejuvenate" and d.rule == "scheduled-rejuvenate"
