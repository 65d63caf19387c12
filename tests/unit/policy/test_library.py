"""The shipped default library, path by path: it does at least what the built-in policy does, and more."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from enmei.model import (
    Decision,
    Event,
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
from enmei.policy.builtin import BuiltinPolicy
from enmei.policy.manager import PolicyManager

from .common import unit, view

Make = Callable[..., PolicyManager]


def _exit(t: float, name: str = "api") -> UnitEvent:
    return UnitEvent(name, UnitEventKind.EXITED, t, {"code": 3, "signal": None, "uptime_s": 12.5})


def _verdict(kind: VerdictKind, t: float, severity: Severity = Severity.WARNING, **evidence: Any) -> Verdict:
    return Verdict("api", f"test:{kind}", kind, severity, t, f"{kind} seen", evidence)


def _brief(ds: list[Decision]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(d.action, d.rule, dict(d.args)) for d in ds]


def test_exit_restarts_after_the_backoff_delay_then_escalates_when_the_budget_is_spent(manager: Make) -> None:
    m = manager()
    down = unit(state=UnitState.EXITED, alive=False, uptime_s=None)
    d = m.decide(_exit(1000.0), view(1000.0, down))
    assert _brief(d) == [("restart", "exit-restart", {"delay_s": 0.0})]
    assert d[0].reason == "exited with code 3 after 12.5s"
    d = m.decide(_exit(1100.0), view(1100.0, unit(state=UnitState.EXITED, alive=False, next_delay_s=4.0,
                                                     restarts_in_window=2)))
    assert _brief(d) == [("restart", "exit-restart", {"delay_s": 4.0})]
    spent = unit(state=UnitState.EXITED, alive=False, restarts_in_window=3, escalate_retry_s=90.0)
    d = m.decide(_exit(1200.0), view(1200.0, spent))
    assert [(x.action, x.rule, x.args["retry_in_s"]) for x in d] == [("escalate", "budget-escalate", 90.0)]
    assert "restart budget spent (3 restarts in 300s)" in d[0].reason


def test_a_burst_of_failures_opens_the_circuit_breaker_with_a_cool_down(manager: Make) -> None:
    m = manager()
    down = unit(state=UnitState.EXITED, alive=False, budget=100)
    rules = [m.decide(_exit(1000.0 + 10 * i), view(1000.0 + 10 * i, down))[0].rule for i in range(4)]
    assert rules == ["exit-restart"] * 3 + ["flapping/open"]
    # Failing again soon after the cool-down (on probation) re-opens it; long after, it is closed.
    d = m.decide(_exit(1000.0 + 30 + 300 + 50), view(1000.0 + 30 + 300 + 50, down))
    assert [(x.action, x.rule, x.args["retry_in_s"]) for x in d] == [("escalate", "flapping/open", 300.0)]
    assert "failed again on probation" in d[0].reason
    later = 1380.0 + 300 + 120 + 1
    assert m.decide(_exit(later), view(later, down))[0].rule == "exit-restart"


def test_failed_repairs_count_towards_the_breaker(manager: Make) -> None:
    m = manager()
    down = unit(state=UnitState.EXITED, alive=False, budget=100)
    m.decide(_exit(1000.0), view(1000.0, down))
    rules = []
    for i in range(3):
        t = 1010.0 + 10 * i
        o = Outcome(f"api-{i}", "api", "restart", RemedyState.FAILED, t - 5, t, "died during start", {})
        rules.append(m.decide(o, view(t, down))[0].rule)
    assert rules == ["retry-after-failure", "retry-after-failure", "flapping/open"]


def test_probe_failures_restart_then_degrade_and_alert_once_the_budget_is_spent(manager: Make) -> None:
    m = manager()
    v = _verdict(VerdictKind.PROBE_FAILED, 1000.0, Severity.CRITICAL, probe="http")
    assert _brief(m.decide(v, view(1000.0, unit(next_delay_s=0.5)))) == [("restart", "probe-restart",
                                                                          {"delay_s": 0.5})]
    spent = unit(restarts_in_window=3)
    d = m.decide(_verdict(VerdictKind.PROBE_FAILED, 1010.0, Severity.CRITICAL), view(1010.0, spent))
    assert [(x.action, x.rule) for x in d] == [("alert", "budget-alert"), ("degrade", "budget-degrade")]
    assert d[0].args == {"severity": "critical"} and "restart budget spent" in d[0].reason
    # Again within the alert interval: said on the record, not alerted again.
    d = m.decide(_verdict(VerdictKind.PROBE_FAILED, 1020.0, Severity.CRITICAL), view(1020.0, spent))
    assert [(x.action, x.rule) for x in d] == [("none", "budget-quiet")]
    # A degrade that failed is alerted and not tried again for a while.
    failed = Outcome("api-9", "api", "degrade", RemedyState.FAILED, 1025.0, 1026.0, "no degrade mode", {})
    assert [(x.action, x.rule) for x in m.decide(failed, view(1026.0, spent))] == [("alert", "degrade-failed")]
    d = m.decide(_verdict(VerdictKind.PROBE_FAILED, 1400.0, Severity.CRITICAL), view(1400.0, spent))
    assert [(x.action, x.rule) for x in d] == [("alert", "budget-alert")]


def test_a_probe_failure_of_a_dead_unit_is_handled_like_its_exit(manager: Make) -> None:
    m = manager()
    v = _verdict(VerdictKind.PROBE_FAILED, 1000.0, Severity.CRITICAL)
    d = m.decide(v, view(1000.0, unit(alive=False, state=UnitState.EXITED, restarts_in_window=3)))
    assert [(x.action, x.rule) for x in d] == [("escalate", "budget-escalate")]


def test_a_latency_warning_is_watched_closer_first_then_repaired(manager: Make) -> None:
    m = manager()
    d = m.decide(_verdict(VerdictKind.ANOMALY, 1000.0, probe="http"), view(1000.0))
    assert _brief(d) == [("monitor", "anomaly-watch", {"probe": "http", "interval_s": 0.5, "for_s": 300.0})]
    d = m.decide(_verdict(VerdictKind.ANOMALY, 1060.0, probe="http"), view(1060.0))
    assert _brief(d) == [("restart", "anomaly/0", {"delay_s": 0.0})]
    # The restart step is used for this hour: the next one degrades and alerts (a process has no phases).
    d = m.decide(_verdict(VerdictKind.ANOMALY, 1500.0, Severity.CRITICAL), view(1500.0))
    assert [(x.action, x.rule) for x in d] == [("alert", "anomaly/exhausted"), ("degrade", "anomaly/exhausted")]


VM = unit(backend="qemu", capabilities=frozenset({"stats", "snapshot", "phase_reboot", "reboot", "panic_events"}))


def test_a_vm_with_a_latency_anomaly_gets_a_phase_based_reboot_after_a_restart(manager: Make) -> None:
    m = manager()
    crit = Severity.CRITICAL
    assert m.decide(_verdict(VerdictKind.ANOMALY, 1000.0, crit), view(1000.0, VM))[0].rule == "anomaly/0"
    d = m.decide(_verdict(VerdictKind.ANOMALY, 1100.0, crit), view(1100.0, VM))
    assert [(x.action, x.rule) for x in d] == [("phase_reboot", "anomaly/1")]
    failed = Outcome("api-2", "api", "phase_reboot", RemedyState.FAILED, 1100.0, 1130.0, "no snapshot", {})
    assert [(x.action, x.rule) for x in m.decide(failed, view(1130.0, VM))] == [("cold_reboot", "phase-then-cold")]
    cold = Outcome("api-3", "api", "cold_reboot", RemedyState.FAILED, 1130.0, 1200.0, "no boot", {})
    assert [(x.action, x.rule) for x in m.decide(cold, view(1200.0, VM))] == [("restart", "cold-then-restart")]
    # A process unit (or a VM without snapshots) never gets one.
    for other in (unit(), unit(backend="qemu")):
        assert m.decide(_verdict(VerdictKind.ANOMALY, 1300.0, crit), view(1300.0, other))[0].rule != "anomaly/1"


def test_a_guest_panic_gets_phase_based_reboots_then_a_cold_one_then_a_restart(manager: Make) -> None:
    m = manager()
    rules = []
    for i in range(5):
        t = 1000.0 + 60 * i
        d = m.decide(_verdict(VerdictKind.PANIC, t, Severity.CRITICAL), view(t, VM))
        rules.append([(x.action, x.rule) for x in d])
    assert rules == [[("phase_reboot", "panic/0")]] * 3 + [[("cold_reboot", "panic/1")],
                                                           [("restart", "panic/exhausted")]]


def test_aging_rejuvenates_at_a_quiet_moment_before_exhaustion(manager: Make) -> None:
    m = manager()
    d = m.decide(_verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=3600.0, metric="rss_bytes"),
                 view(1000.0, unit(rejuvenate_window_s=600.0)))
    assert [(x.action, x.rule, x.args["window_s"]) for x in d] == [("rejuvenate", "aging-rejuvenate", 600.0)]
    d = m.decide(_verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=800.0), view(1000.0, unit(rejuvenate_window_s=600.0)))
    assert d[0].args["window_s"] == 200.0  # a quarter of the time left
    d = m.decide(_verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=30.0), view(1000.0))
    assert d[0].args["window_s"] == 0.0 and "at once" in d[0].reason
    assert m.decide(_verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=30.0), view(1000.0, unit(remedy="restart"))) == []


def test_the_aging_of_a_vms_qemu_process_gets_a_fresh_qemu_not_a_reboot(manager: Make) -> None:
    m = manager()
    vm = unit(backend="qemu", capabilities=frozenset({"stats", "phase_reboot", "reboot", "replace_vmm"}))
    d = m.decide(_verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=3600.0, metric="qemu_private_bytes"),
                 view(1000.0, vm))
    assert [(x.action, x.rule) for x in d] == [("rejuvenate_vmm", "aging-vmm")]
    # the guest's own aging (rss of the whole VM) is rejuvenated as before; so is a VM without the capability
    d = m.decide(_verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=3600.0, metric="rss_bytes"), view(1000.0, vm))
    assert [x.action for x in d] == ["rejuvenate"]
    d = m.decide(_verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=3600.0, metric="qemu_fds"), view(1000.0, VM))
    assert [x.action for x in d] == ["rejuvenate"]


def test_log_anomalies_are_alerted_at_most_once_per_interval(manager: Make) -> None:
    m = manager()
    first = m.decide(_verdict(VerdictKind.LOG_ANOMALY, 1000.0), view(1000.0))
    assert [(x.action, x.args["severity"]) for x in first] == [("alert", "warning")]
    assert m.decide(_verdict(VerdictKind.LOG_ANOMALY, 1100.0), view(1100.0)) == []
    assert len(m.decide(_verdict(VerdictKind.LOG_ANOMALY, 1400.0), view(1400.0))) == 1


def test_ticks_rejuvenate_on_schedule_and_restart_a_stranded_unit(manager: Make) -> None:
    m = manager()
    old = unit(name="old", rejuvenate_every_s=3600.0, uptime_s=3700.0)
    down = unit(name="down", state=UnitState.EXITED, alive=False, uptime_s=None)
    busy = unit(name="busy", state=UnitState.EXITED, alive=False, remedy="restart")
    d = m.decide(Tick(1000.0, 0.0), view(1000.0, old, down, busy))
    assert sorted((x.unit, x.action, x.rule) for x in d) == [("down", "restart", "stranded-restart"),
                                                             ("old", "rejuvenate", "scheduled-rejuvenate")]
    # The stranded unit is not restarted again while its last decision is recent.
    d = m.decide(Tick(1001.0, 0.0), view(1001.0, down))
    assert d == []


@pytest.mark.parametrize("event", [
    _exit(1000.0),
    _verdict(VerdictKind.PROBE_FAILED, 1000.0, Severity.CRITICAL),
    _verdict(VerdictKind.PANIC, 1000.0, Severity.CRITICAL),
    _verdict(VerdictKind.AGING, 1000.0, exhaust_in_s=7200.0),
    Outcome("api-1", "api", "restart", RemedyState.FAILED, 995.0, 1000.0, "died", {}),
    Outcome("api-2", "api", "phase_reboot", RemedyState.FAILED, 995.0, 1000.0, "no snapshot", {}),
    Outcome("api-3", "api", "cold_reboot", RemedyState.TIMED_OUT, 995.0, 1000.0, "no boot", {}),
    Tick(1000.0, 0.0),
])
@pytest.mark.parametrize("state", ["running", "exited", "spent", "busy", "vm"])
def test_never_less_than_the_builtin_policy(manager: Make, event: Event, state: str) -> None:
    """Wherever the built-in policy acts, the library acts too (never a silent give-up)."""
    u = {"running": unit(rejuvenate_every_s=30.0), "exited": unit(state=UnitState.EXITED, alive=False, uptime_s=None),
         "spent": unit(restarts_in_window=3, state=UnitState.EXITED, alive=False),
         "busy": unit(remedy="restart"), "vm": VM}[state]
    v = view(1000.0, u)
    builtin = BuiltinPolicy().decide(event, v)
    ours = manager().decide(event, v)
    if builtin:
        assert ours, (event, state, builtin)
    assert not m_errors(ours)


def m_errors(decisions: list[Decision]) -> list[Decision]:
    return [d for d in decisions if d.policy == "builtin-1"]  # a fallback would mean the library failed


SHADOW_VM = unit(backend="qemu", capabilities=frozenset({"stats", "phase_reboot", "reboot", "shadow_update"}))


def test_an_update_that_left_the_unit_down_restarts_it_and_one_rolled_back_needs_nothing(manager: Make) -> None:
    m = manager()
    o = Outcome("vm-1", "api", "shadow_update", RemedyState.FAILED, 1000.0, 1030.0,
                "the original QEMU exited during the clone's boot; rolled back, the original kept serving", {})
    down = unit(backend="qemu", state=UnitState.EXITED, alive=False)
    d = m.decide(o, view(1030.0, down))
    assert [(x.action, x.rule) for x in d] == [("restart", "update-failed-down")]
    assert "the original QEMU exited" in d[0].reason
    assert m.decide(o, view(1030.0, unit(backend="qemu"))) == []  # rolled back, still serving


_UPDATE_POLICY = '''
load("@enmei/default", "on_exit", "on_outcome", "on_tick", default_on_verdict = "on_verdict")
load("@enmei/update", "update_on_signal")

def on_verdict(v, ctx):
    d = update_on_signal(v, ctx, detector = "reboot-needed", image = "v2")
    return default_on_verdict(v, ctx) if d == None else d
'''


def _reboot_needed(t: float, detector: str = "log:reboot-needed") -> Verdict:
    return Verdict("api", detector, VerdictKind.LOG_ANOMALY, Severity.WARNING, t,
                   "1 log line(s) matching 'reboot-required' within 60s (probe console)",
                   {"pattern": "reboot-required", "lines": ["*** System restart required ***"]})


def test_a_guest_saying_it_needs_a_reboot_is_shadow_updated_to_the_policys_image_once(manager: Make) -> None:
    m = manager(_UPDATE_POLICY)
    d = m.decide(_reboot_needed(1000.0), view(1000.0, SHADOW_VM))
    assert _brief(d) == [("shadow_update", "update-on-signal", {
        "image": "v2", "why": "the guest needs a reboot: " + _reboot_needed(0).summary})]
    # the same signal again within the hour: no second update (it is running or done)
    assert m.decide(_reboot_needed(1100.0), view(1100.0, SHADOW_VM)) == []
    # it failed (rolled back): one alert, not a loop of updates
    failed = Outcome("api-9", "api", "shadow_update", RemedyState.FAILED, 1100.0, 1200.0, "clone panicked", {})
    assert m.decide(failed, view(1200.0, SHADOW_VM)) == []  # the unit still serves
    d = m.decide(_reboot_needed(1300.0), view(1300.0, SHADOW_VM))
    assert [(x.action, x.rule) for x in d] == [("alert", "update-on-signal/failed")]
    assert m.decide(_reboot_needed(1400.0), view(1400.0, SHADOW_VM)) == []
    # an hour later it is tried again
    assert [x.action for x in m.decide(_reboot_needed(5000.0), view(5000.0, SHADOW_VM))] == ["shadow_update"]


def test_the_update_signal_is_ignored_where_it_cannot_apply(manager: Make) -> None:
    m = manager(_UPDATE_POLICY)
    # another detector's log verdict goes to the default policy (an alert)
    d = m.decide(_reboot_needed(1000.0, "log:errors"), view(1000.0, SHADOW_VM))
    assert [(x.action, x.rule) for x in d] == [("alert", "log-alert")]
    # a unit that cannot be shadow-updated (a process): the default's alert; one that is down, one being
    # repaired: not now
    d = m.decide(_reboot_needed(2000.0), view(2000.0, unit()))
    assert [(x.action, x.rule) for x in d] == [("alert", "log-alert")]
    for u in (unit(backend="qemu", capabilities=SHADOW_VM.capabilities, alive=False, state=UnitState.EXITED),
              unit(backend="qemu", capabilities=SHADOW_VM.capabilities, remedy="phase_reboot")):
        assert m.decide(_reboot_needed(2000.0), view(2000.0, u)) == []


def test_a_suspected_keylogger_is_isolated_and_alerted_never_restarted(manager: Make) -> None:
    m = manager()
    vm = unit(backend="qemu", capabilities=frozenset({"stats", "snapshot", "net_link", "inject_keys"}))
    d = m.decide(_verdict(VerdictKind.KEYLOGGER_SUSPECTED, 1000.0, Severity.CRITICAL, p_value=0.0004),
                 view(1000.0, vm))
    assert [(x.action, x.rule) for x in d] == [("isolate", "malware-isolate"), ("alert", "malware-alert")]
    assert d[1].args["severity"] == "critical" and "keylogger suspected" in d[1].reason
    # once per alert interval: the same verdict again changes nothing
    again = m.decide(_verdict(VerdictKind.KEYLOGGER_SUSPECTED, 1100.0, Severity.CRITICAL), view(1100.0, vm))
    assert [(x.action, x.rule) for x in again] == [("none", "malware-quiet")]
    # a bot too; a unit that cannot be isolated (a process) is alerted about, not restarted
    d = manager().decide(_verdict(VerdictKind.BOT_SUSPECTED, 1000.0, Severity.CRITICAL), view(1000.0, unit()))
    assert [(x.action, x.rule) for x in d] == [("alert", "malware-alert")]
    # a process hidden in a guest (cross-view) too
    d = manager().decide(_verdict(VerdictKind.HIDDEN_PROCESS, 1000.0, Severity.CRITICAL, pid=42), view(1000.0, vm))
    assert [(x.action, x.rule) for x in d] == [("isolate", "malware-isolate"), ("alert", "malware-alert")]
    assert "hidden process" in d[1].reason
    d = manager().decide(_verdict(VerdictKind.HIDDEN_MODULE, 1000.0, Severity.CRITICAL, name="rk"), view(1000.0, vm))
    assert [(x.action, x.rule) for x in d] == [("isolate", "malware-isolate"), ("alert", "malware-alert")]
    assert "hidden module" in d[1].reason
    d = manager().decide(_verdict(VerdictKind.HIDDEN_FILE, 1000.0, Severity.CRITICAL, path="/data/x"), view(1000.0, vm))
    assert [(x.action, x.rule) for x in d] == [("isolate", "malware-isolate"), ("alert", "malware-alert")]
    # clean and inconclusive verdicts ask for nothing
    for kind in (VerdictKind.CLEAN, VerdictKind.INCONCLUSIVE):
        assert m.decide(_verdict(kind, 2000.0, Severity.INFO), view(2000.0, vm)) == []


def test_a_log_signature_applies_its_remedy_hint_and_only_known_hints(manager: Make) -> None:
    # restart (budget left) -> restart; rejuvenate -> at once; alert or an unknown hint -> alert, once
    d = manager().decide(_verdict(VerdictKind.LOG_SIGNATURE, 1000.0, Severity.CRITICAL, **{
        "class": "memory_leak", "remedy": "restart", "p": 0.97}), view(1000.0, unit()))
    assert [(x.action, x.rule) for x in d] == [("restart", "signature-restart")]
    assert "log signature" in d[0].reason
    d = manager().decide(_verdict(VerdictKind.LOG_SIGNATURE, 1000.0, Severity.CRITICAL, **{
        "class": "memory_leak", "remedy": "rejuvenate"}), view(1000.0, unit()))
    assert [(x.action, x.rule) for x in d] == [("rejuvenate", "signature-rejuvenate")]
    m = manager()
    d = m.decide(_verdict(VerdictKind.LOG_SIGNATURE, 1000.0, Severity.CRITICAL, **{
        "class": "disk_full", "remedy": "rm -rf /"}), view(1000.0, unit()))
    assert [(x.action, x.rule) for x in d] == [("alert", "signature-alert")]
    assert "not one this policy applies" in d[0].reason and d[0].args["severity"] == "critical"
    again = m.decide(_verdict(VerdictKind.LOG_SIGNATURE, 1100.0, Severity.CRITICAL, **{
        "class": "disk_full", "remedy": "alert"}), view(1100.0, unit()))
    assert [(x.action, x.rule) for x in again] == [("none", "signature-quiet")]
    # isolate only where the backend can (a process cannot): an alert instead
    d = manager().decide(_verdict(VerdictKind.LOG_SIGNATURE, 1000.0, Severity.WARNING, **{
        "class": "bot", "remedy": "isolate"}), view(1000.0, unit()))
    assert [(x.action, x.rule) for x in d] == [("alert", "signature-alert")]
