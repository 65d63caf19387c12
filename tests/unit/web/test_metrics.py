"""The tally behind the counters, and seeding it from a journal."""

from __future__ import annotations

from pathlib import Path

from enmei.box import Journal
from enmei.web.metrics import BUCKETS, Tally, _Collector, seed_tally


def test_tally_counts_what_the_engine_writes() -> None:
    t = Tally(after_seq=2)
    t(1, "verdict", "web", {"kind": "anomaly"})  # before the web server: counted by seeding instead
    t(3, "verdict", "web", {"kind": "anomaly"})
    t(4, "decision", "web", {"action": "restart"})
    t(5, "remedy.outcome", "web", {"action": "restart", "state": "succeeded", "duration_s": 0.7})
    t(6, "remedy.outcome", "web", {"action": "restart", "state": "failed", "duration_s": 9999})
    t(7, "remedy.outcome", "web", {"action": "restart", "state": "failed", "duration_s": True})
    t(8, "alert", "", {"severity": "critical"})
    assert t.verdicts == {("web", "anomaly"): 1}
    assert t.decisions == {("web", "restart"): 1}
    assert t.remedies == {("web", "restart", "succeeded"): 1, ("web", "restart", "failed"): 2}
    counts = t.durations["restart"]
    assert len(counts) == len(BUCKETS) + 1 and counts[BUCKETS.index(1.0)] == 1 and counts[-1] == 1
    assert t.duration_sum["restart"] == 0.7 + 9999
    assert t.alerts == {"critical": 1}
    c = t.copy()
    t(9, "verdict", "web", {"kind": "anomaly"})
    assert c.verdicts[("web", "anomaly")] == 1


def test_seed_counts_this_supervisor_run_only(tmp_path: Path) -> None:
    with Journal(tmp_path / "j.sqlite") as j:
        j.append("supervisor", None, {"event": "started"})
        j.append("verdict", "web", {"kind": "anomaly"})  # an earlier run
        j.append("supervisor", None, {"event": "started"})
        j.append("verdict", "web", {"kind": "probe_failed"})
        j.append("remedy.outcome", "web", {"action": "restart", "state": "succeeded", "duration_s": 1.2})
        last = j.append("verdict", "web", {"kind": "aging"})  # after the cut-off
        j.flush(5)
    t = seed_tally(tmp_path / "j.sqlite", last - 1)
    assert t.verdicts == {("web", "probe_failed"): 1}
    assert t.remedies == {("web", "restart", "succeeded"): 1}
    assert t.after_seq == last - 1


def test_flood_episodes_are_counted_from_their_unit_events(tmp_path: Path) -> None:
    t = Tally()
    t(1, "unit.event", "web", {"event": "log_flood", "stream": "stdout", "phase": "begin"})
    assert t.floods == {("web", "stdout"): 1} and t.flooding == {("web", "stdout"): True}
    t(2, "unit.event", "web", {"event": "log_flood", "stream": "stdout", "phase": "end", "dropped_bytes": 5000})
    t(3, "unit.event", "web", {"event": "exited", "stream": "stdout", "phase": "begin"})  # not a flood
    assert t.flooding == {("web", "stdout"): False} and t.flood_dropped == {("web", "stdout"): 5000}
    assert t.copy().floods == t.floods
    metrics = {m.name: m for m in _Collector._counters(t)}
    assert metrics["enmei_log_floods"].samples[0].value == 1
    assert metrics["enmei_log_dropped_bytes"].samples[0].value == 5000
    assert metrics["enmei_log_flooding"].samples[0].value == 0
    with Journal(tmp_path / "j.sqlite") as j:
        j.append("supervisor", None, {"event": "started"})
        last = j.append("unit.event", "web", {"event": "log_flood", "stream": "stderr", "phase": "begin"})
        j.flush(5)
    assert seed_tally(tmp_path / "j.sqlite", last).flooding == {("web", "stderr"): True}
