"""A real Engine (fake backend, fake clock) runs the shipped default library; replaying its journal through
the same library reproduces every decision it took."""

from __future__ import annotations

from pathlib import Path

from enmei.model import Severity, Verdict, VerdictKind
from enmei.policy.manager import load_default
from enmei.policy.replay import replay
from enmei.policy.sandbox import InProcessSandbox
from support.harness import Rig, start_rig

TWO = """
[supervisor]
tick_s = 1.0
[units.a]
command = ["/bin/true"]
start_s = 1.0
stop_timeout_s = 2.0
[units.a.restart]
backoff_first_s = 1.0
budget = 6
window_s = 300
[units.a.escalate]
retry_every_s = 20
[units.b]
command = ["/bin/true"]
start_s = 1.0
stop_timeout_s = 2.0
[units.b.restart]
budget = 2
window_s = 600
[units.b.rejuvenate]
window_s = 5
[units.c]
command = ["/bin/true"]
start_s = 1.0
[units.c.rejuvenate]
every_s = 30
window_s = 0
"""


def _verdict(rig: Rig, unit: str, kind: VerdictKind, severity: Severity, evidence: dict[str, object]) -> None:
    now = rig.clock.monotonic()
    rig.engine.emit_verdict(Verdict(unit, f"test:{kind}", kind, severity, now, f"{kind} seen", evidence))


async def _run(rig: Rig) -> None:
    await rig.advance(1.5)
    # a: a crash, a restart; then a burst of crashes trips the flapping breaker.
    for _ in range(5):
        rig.backend.crash("a", code=2)
        await rig.quiesce()
        await rig.advance(3.0)
    # b: probe failures use up its budget of 2, then it is degraded and alerted (no degrade mode: the
    # remedy fails, which is alerted too); anomalies are watched, then acted on; aging rejuvenates.
    for _ in range(3):
        _verdict(rig, "b", VerdictKind.PROBE_FAILED, Severity.CRITICAL, {"probe": "http", "streak": 3})
        await rig.quiesce()
        await rig.advance(2.5)
    _verdict(rig, "b", VerdictKind.ANOMALY, Severity.WARNING, {"probe": "http", "value": 0.4})
    await rig.advance(1.0)
    _verdict(rig, "b", VerdictKind.ANOMALY, Severity.CRITICAL, {"probe": "http", "value": 3.0})
    await rig.advance(3.0)
    _verdict(rig, "b", VerdictKind.AGING, Severity.WARNING, {"metric": "rss_bytes", "exhaust_in_s": 900.0})
    await rig.advance(12.0)
    _verdict(rig, "b", VerdictKind.LOG_ANOMALY, Severity.WARNING, {})
    await rig.advance(40.0, step=0.5)


async def test_replay_of_an_engine_journal_agrees_with_every_decision(tmp_path: Path) -> None:
    policy = load_default(sandbox=InProcessSandbox)
    rig = await start_rig(tmp_path, TWO, policy=policy)
    try:
        await _run(rig)
    finally:
        await rig.close()
    decided = [b for b in rig.bodies("decision") if b["policy"] == policy.version]
    rules = {b["rule"] for b in decided}
    assert {"exit-restart", "flapping/open", "probe-restart", "budget-alert", "anomaly-watch",
            "aging-rejuvenate", "log-alert", "scheduled-rejuvenate"} <= rules, rules
    assert all("view" in b for b in decided)

    again = load_default(sandbox=InProcessSandbox)
    report = replay(again, rig.journal.path)
    summary = report.summary()
    assert {p.kind for p in report.points} == {"exit", "verdict", "outcome", "tick"}
    bad = [p for p in report.points if not p.agree]
    assert not bad, bad[:3]
    assert summary["agreement"] == 1.0
    assert summary["decisions_original"] >= len(decided) > 10
    assert summary["decisions_matched"] == summary["decisions_original"] == summary["decisions_replayed"]
    assert summary["policy_errors"] == 0


def test_views_recorded_before_the_reboot_capabilities_keep_their_vm_reboots() -> None:
    """A VM view journaled when the reboots were allowed by backend name still allows them in a replay."""
    from enmei.policy.replay import _view_of

    base = {"name": "vm", "backend": "qemu", "state": "running", "health": "ok", "alive": True,
            "restarts_in_window": 0, "budget": 3, "window_s": 60.0, "next_delay_s": 1.0,
            "escalate_retry_s": 60.0, "rejuvenate_window_s": 60.0, "stop_timeout_s": 5.0}
    old_vm = _view_of({**base, "capabilities": ["snapshot", "stats"]})
    assert {"reboot", "phase_reboot"} <= old_vm.capabilities
    no_snapshots = _view_of({**base, "capabilities": ["stats"]})
    assert "reboot" in no_snapshots.capabilities and "phase_reboot" not in no_snapshots.capabilities
    today = _view_of({**base, "capabilities": ["reboot", "stats"]})  # today's record: taken as it is
    assert today.capabilities == {"reboot", "stats"}
    process = _view_of({**base, "backend": "process", "capabilities": ["logs", "stats"]})
    assert process.capabilities == {"logs", "stats"}
