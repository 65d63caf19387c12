"""The tally behind the counters, seeding it from a journal (counters that continue across restarts),
and the series a scrape shows: every one of a configured unit from the first scrape, stable labels."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from enmei.box import Journal
from enmei.model import Health, Observation, UnitState
from enmei.policy.base import UnitView
from enmei.web.counters import EXIT_REASONS, PROBE_BUCKETS, RESTART_REASONS, exit_reason
from enmei.web.metrics import BUCKETS, Snapshot, Tally, _Collector, render, seed_tally

# What an engine writes over two supervisor runs: exits of every kind, restarts with their causes,
# operator commands, refused and suppressed decisions, alerts, remedies, floods.
HISTORY: list[tuple[str, str | None, dict[str, Any]]] = [
    ("supervisor", None, {"event": "started"}),
    ("unit.event", "web", {"event": "exited", "code": 1, "signal": None}),  # seq 2
    ("decision", "web", {"action": "restart", "rule": "crash", "cause_seq": 2}),
    ("remedy.outcome", "web", {"action": "restart", "state": "succeeded", "duration_s": 0.7}),
    ("unit.event", "web", {"event": "exited", "code": None, "signal": "SIGKILL"}),  # seq 5
    ("decision", "web", {"action": "restart", "rule": "crash", "cause_seq": 5, "suppressed": "busy"}),
    ("decision", "web", {"action": "restart", "rule": "crash", "cause_seq": 5, "rejected": "budget"}),
    ("decision", "web", {"action": "escalate", "rule": "budget-enforced", "cause_seq": 7}),
    ("alert", "web", {"severity": "critical", "message": "escalated"}),
    ("alert", None, {"severity": "warning", "message": "3 alert(s) coalesced"}),
    ("alert", "web", {"severity": "loud", "message": "a severity nobody knows"}),
    ("supervisor", None, {"event": "stopped"}),
    ("supervisor", None, {"event": "started"}),
    ("unit.event", "web", {"event": "exited", "code": 0, "signal": None}),
    ("unit.event", "vm", {"event": "exited", "code": None, "reason": "guest-panicked"}),
    ("verdict", "vm", {"kind": "panic"}),  # seq 16
    ("decision", "vm", {"action": "restart", "rule": "panic", "cause_seq": 16}),
    ("unit.state", "web", {"from": "starting", "to": "exited", "reason": "start failed: no such file"}),
    ("unit.state", "web", {"from": "running", "to": "exited", "reason": "exited with code 1"}),  # counted above
    ("decision", "web", {"action": "start", "rule": "crash", "cause_seq": 14, "counted_as_restart": True}),
    ("decision", "web", {"action": "start", "rule": "autostart", "cause_seq": None}),  # not a restart
    ("decision", "web", {"action": "restart", "rule": "manual", "cause_seq": None}),
    ("decision", "web", {"action": "restart", "rule": "nightly", "cause_seq": None}),
    ("unit.event", "web", {"event": "log_flood", "stream": "stdout", "phase": "begin"}),
    ("unit.event", "web", {"event": "log_flood", "stream": "stdout", "phase": "end", "dropped_bytes": 5000}),
    ("unit.event", "web", {"event": "log_flood", "stream": "stderr", "phase": "begin"}),
    ("remedy.outcome", "web", {"action": "restart", "state": "failed", "duration_s": 9999}),
    ("remedy.outcome", "web", {"action": "restart", "state": "failed", "duration_s": True}),
    ("decision", "web", {"action": "restart", "rule": "retry-after-failure", "cause_seq": 4}),
    ("decision", "web", {"action": "x" * 300, "rule": "hostile", "rejected": "no remedy named that"}),
]


def _journal(path: Path, history: list[tuple[str, str | None, dict[str, Any]]] = HISTORY) -> int:
    with Journal(path) as j:
        for kind, unit, body in history:
            last = j.append(kind, unit, body)
        j.flush(5)
    return last


def _live(history: list[tuple[str, str | None, dict[str, Any]]] = HISTORY) -> Tally:
    t = Tally()
    for seq, (kind, unit, body) in enumerate(history, 1):
        t(seq, kind, unit or "", body)
    return t


def test_tally_counts_what_the_engine_writes() -> None:
    t = _live()
    assert t.exits == {("web", "error"): 1, ("web", "signal"): 1, ("web", "clean"): 1, ("vm", "other"): 1,
                       ("web", "start_failed"): 1}
    assert t.restarts == {("web", "restart", "exit"): 1, ("web", "escalate", "other"): 1,
                          ("vm", "restart", "verdict"): 1, ("web", "start", "exit"): 1,
                          ("web", "restart", "operator"): 1, ("web", "restart", "other"): 1,
                          ("web", "restart", "retry"): 1}
    assert t.alerts == {("web", "critical"): 1, ("", "warning"): 1, ("web", "other"): 1}
    assert t.remedies == {("web", "restart", "succeeded"): 1, ("web", "restart", "failed"): 2}
    assert t.decisions[("web", "unknown")] == 1 and not any(len(a) > 20 for _, a in t.decisions)
    counts = t.durations["restart"]
    assert len(counts) == len(BUCKETS) + 1 and counts[BUCKETS.index(1.0)] == 1 and counts[-1] == 1
    assert t.duration_sum["restart"] == 0.7 + 9999
    assert t.floods == {("web", "stdout"): 1, ("web", "stderr"): 1}
    assert t.flood_dropped == {("web", "stdout"): 5000}
    assert t.flooding == {("web", "stdout"): False, ("web", "stderr"): True}
    c = t.copy()
    t(99, "verdict", "web", {"kind": "anomaly"})
    assert ("web", "anomaly") not in c.verdicts and c.exits == t.exits


def test_records_before_the_tally_began_are_left_to_the_seed() -> None:
    t = Tally(after_seq=2)
    t(1, "verdict", "web", {"kind": "anomaly"})
    t(2, "unit.event", "web", {"event": "exited", "code": 3})
    t(3, "verdict", "web", {"kind": "anomaly"})
    assert t.verdicts == {("web", "anomaly"): 1} and not t.exits


def test_the_seed_counts_the_whole_journal_as_the_live_tally_does(tmp_path: Path) -> None:
    # Counters continue across restarts only if the journal's counts equal what the last run showed.
    last = _journal(tmp_path / "j.sqlite")
    seeded, live = seed_tally(tmp_path / "j.sqlite", last), _live()
    for family in ("verdicts", "decisions", "remedies", "alerts", "exits", "restarts", "floods", "flood_dropped",
                   "durations", "duration_sum"):
        assert getattr(seeded, family) == {k: v for k, v in getattr(live, family).items() if v}, family
    assert seeded.flooding == {("web", "stdout"): False, ("web", "stderr"): True}
    assert seeded.after_seq == last
    assert seed_tally(tmp_path / "j.sqlite", 3).restarts == {("web", "restart", "exit"): 1}  # up to a seq


def test_exit_reasons_are_one_rule_in_python_and_sql(tmp_path: Path) -> None:
    bodies: list[dict[str, Any]] = [
        {"event": "exited", "code": 0}, {"event": "exited", "code": 2}, {"event": "exited", "code": True},
        {"event": "exited", "signal": "SIGTERM", "code": None}, {"event": "exited", "signal": "", "code": 0},
        {"event": "exited"}, {"event": "exited", "code": "3"}, {"event": "stopped", "code": 0},
    ]
    history = [("unit.event", f"u{i}", b) for i, b in enumerate(bodies)]
    last = _journal(tmp_path / "j.sqlite", history)
    sql = seed_tally(tmp_path / "j.sqlite", last).exits
    python = {(f"u{i}", r): 1 for i, b in enumerate(bodies) if (r := exit_reason("unit.event", b)) is not None}
    assert sql == python
    assert [python.get((f"u{i}", r)) is not None for i, r in enumerate(
        ("clean", "error", "other", "signal", "clean", "other", "other"))] == [True] * 7


def test_flooding_is_the_state_of_this_run_only(tmp_path: Path) -> None:
    history = [("supervisor", None, {"event": "started"}),
               ("unit.event", "web", {"event": "log_flood", "stream": "stdout", "phase": "begin"}),
               ("supervisor", None, {"event": "started"}),  # the earlier run's episode is over
               ("unit.event", "web", {"event": "log_flood", "stream": "stderr", "phase": "begin"})]
    last = _journal(tmp_path / "j.sqlite", history)
    t = seed_tally(tmp_path / "j.sqlite", last)
    assert t.flooding == {("web", "stderr"): True}
    assert t.floods == {("web", "stdout"): 1, ("web", "stderr"): 1}


def _obs(unit: str, probe: str, wall: float, **values: float) -> Observation:
    return Observation(unit, probe, True, 0.0, wall, values)


def test_probe_durations_are_a_histogram_seeded_from_the_samples(tmp_path: Path) -> None:
    w = time.time() - 1000  # within the samples' retention
    with Journal(tmp_path / "j.sqlite") as j:
        j.append("supervisor", None, {"event": "started"})
        j.add_samples([("web", "http.duration_s", w + 100, 0.003), ("web", "http.duration_s", w + 101, 7.0),
                       ("web", "http.latency_s", w + 101, 7.0), ("web", "tcp.duration_s", w + 102, 0.0004),
                       ("web", "http.duration_s", w + 200, 0.003)])  # after the cut-off: counted live
        last = j.append("supervisor", None, {"event": "stopped"})
        j.flush(5)
    seeded = seed_tally(tmp_path / "j.sqlite", last, up_to_wall=w + 150)
    live = Tally(after_wall=w + 150)
    for o in (_obs("web", "http", w + 100, duration_s=0.003), _obs("web", "http", w + 101, duration_s=7.0),
              _obs("web", "tcp", w + 102, duration_s=0.0004), _obs("web", "http", w + 200, duration_s=20.0)):
        live.observe(o)
    assert live.probe_counts == {("web", "http"): [0] * len(PROBE_BUCKETS) + [1]}  # only the one after 150
    expected = Tally()
    for o in (_obs("web", "http", w + 100, duration_s=0.003), _obs("web", "http", w + 101, duration_s=7.0),
              _obs("web", "tcp", w + 102, duration_s=0.0004)):
        expected.observe(o)
    assert seeded.probe_counts == expected.probe_counts
    assert seeded.probe_sum == expected.probe_sum
    live.merge(seeded)
    assert sum(live.probe_counts[("web", "http")]) == 3 and live.probe_sum[("web", "http")] == 27.003


def _view(name: str, *, remedy: str | None = None, alive: bool = True) -> UnitView:
    return UnitView(name=name, backend="process", state=UnitState.RUNNING if alive else UnitState.EXITED,
                    health=Health.OK, alive=alive, uptime_s=3.0 if alive else None, remedy=remedy,
                    restarts_in_window=0, budget=5, window_s=300.0, next_delay_s=0.0, escalate_retry_s=60.0,
                    rejuvenate_every_s=None, rejuvenate_window_s=60.0, stop_timeout_s=5.0)


def _snap(tmp_path: Path, tally: Tally, **units: UnitView) -> Snapshot:
    return Snapshot(version="0", policy="p", units=units, probes={"web": ["http", "proc"]}, tally=tally,
                    journal_path=tmp_path / "none.sqlite", journal_last_seq=0, journal_durable_seq=0,
                    journal_pending=0, journal_ok=True, journal_dropped_samples=0, verify_ok=None, verify_wall=None,
                    timed={"web": ["http"], "db": []}, stats_units=frozenset({"web"}))


def _series(text: bytes) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[s.name + "{" + ",".join(f"{k}={v}" for k, v in sorted(s.labels.items())) + "}"] = s.value
    return out


def test_every_series_of_a_unit_is_there_from_the_first_scrape_with_stable_labels(tmp_path: Path) -> None:
    first = _series(render(_snap(tmp_path, Tally(), web=_view("web"), db=_view("db"))))
    for unit in ("web", "db"):
        for reason in EXIT_REASONS:
            assert first[f"enmei_unit_exits_total{{reason={reason},unit={unit}}}"] == 0
        for action in ("restart", "escalate", "start"):
            for reason in RESTART_REASONS:
                assert first[f"enmei_unit_restarts_total{{action={action},reason={reason},unit={unit}}}"] == 0
        for sev in ("info", "warning", "critical"):
            assert first[f"enmei_alerts_total{{severity={sev},unit={unit}}}"] == 0
        assert first[f"enmei_unit_remedy_running{{unit={unit}}}"] == 0
        assert first[f"enmei_verdicts_total{{kind=probe_failed,unit={unit}}}"] == 0
        assert first[f"enmei_unit_remedy_action{{action=restart,unit={unit}}}"] == 0
    assert first["enmei_alerts_total{severity=critical,unit=}"] == 0
    assert first["enmei_probe_duration_seconds_count{probe=http,unit=web}"] == 0
    assert first["enmei_probe_duration_seconds_bucket{le=+Inf,probe=http,unit=web}"] == 0
    assert first["enmei_unit_resident_memory_bytes{unit=web}"] == 0
    assert "enmei_unit_resident_memory_bytes{unit=db}" not in first  # db has no process probe
    # A remedy runs, the unit has exited, restarted and been observed: the same series, other values.
    t = _live()
    t.observe(_obs("web", "http", 1e12, duration_s=0.002))
    t.observe(_obs("web", "proc", 1e12, rss_bytes=5e6, cpu_seconds=1.5, num_fds=7, num_threads=2))
    later = _series(render(_snap(tmp_path, t, web=_view("web", remedy="restart"), db=_view("db"))))
    assert set(first) <= set(later)
    fixed = ("enmei_unit_exits_total", "enmei_verdicts_total", "enmei_unit_restarts_total", "enmei_alerts_total",
             "enmei_unit_remedy", "enmei_probe_duration", "enmei_unit_resident", "enmei_unit_cpu", "enmei_unit_open",
             "enmei_unit_threads")
    assert {k for k in later if k.startswith(fixed) and "unit=vm" not in k} == {k for k in first if k.startswith(fixed)}
    assert later["enmei_unit_remedy_running{unit=web}"] == 1
    assert later["enmei_unit_remedy_action{action=restart,unit=web}"] == 1
    assert later["enmei_unit_remedy_action{action=stop,unit=web}"] == 0
    assert later["enmei_unit_exits_total{reason=signal,unit=web}"] == 1
    assert later["enmei_unit_restarts_total{action=restart,reason=exit,unit=web}"] == 1
    assert later["enmei_probe_duration_seconds_bucket{le=0.0025,probe=http,unit=web}"] == 1
    assert later["enmei_probe_duration_seconds_bucket{le=0.001,probe=http,unit=web}"] == 0
    assert later["enmei_unit_resident_memory_bytes{unit=web}"] == 5e6
    assert later["enmei_unit_cpu_seconds_total{unit=web}"] == 1.5
    assert later["enmei_unit_open_fds{unit=web}"] == 7 and later["enmei_unit_threads{unit=web}"] == 2
    gone = _series(render(_snap(tmp_path, t, web=_view("web", alive=False), db=_view("db"))))
    assert gone["enmei_unit_resident_memory_bytes{unit=web}"] == 0  # no process, no memory
    assert set(gone) == set(later)


def test_an_exit_forgets_the_instance_stats() -> None:
    t = Tally()
    t.observe(_obs("web", "proc", 1.0, rss_bytes=5e6))
    t(1, "unit.event", "web", {"event": "exited", "code": 1})
    assert "web" not in t.stats


def test_flood_series_render(tmp_path: Path) -> None:
    metrics = {m.name: m for m in _Collector._counters(_live())}
    assert {s.labels["stream"]: s.value for s in metrics["enmei_log_floods"].samples} == {"stdout": 1, "stderr": 1}
    assert metrics["enmei_log_dropped_bytes"].samples[0].value == 5000
