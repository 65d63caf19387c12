"""The PostgreSQL reader answers every aggregate query of the dashboard, /metrics and the report exactly as
the SQLite reader does, over the same records and samples (the contract between the two journals)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from enmei.box import Journal, Reader
from enmei.box.intents import LOOKBACK, interrupted_remedies
from enmei.box.pgread import PgReader
from enmei.box.pgstore import PgJournal

pytestmark = pytest.mark.integration

BODIES: list[tuple[str, str | None, dict[str, Any]]] = [
    ("supervisor", None, {"event": "started", "pid": 1}),
    ("unit.event", "web", {"event": "exited", "code": 0}),
    ("unit.event", "web", {"event": "exited", "code": 3}),
    ("unit.event", "web", {"event": "exited", "signal": "SIGKILL", "code": None}),
    ("unit.event", "db", {"event": "exited", "reason": "panic"}),
    ("unit.state", "db", {"from": "starting", "to": "exited", "reason": "start failed: no such file"}),
    ("verdict", "web", {"detector": "latency", "score": 0.9, "probe": "http"}),
    ("decision", "web", {"action": "restart", "rule": "builtin", "cause_seq": 7}),
    ("decision", "web", {"action": "restart", "rule": "manual"}),
    ("decision", "db", {"action": "start", "cause_seq": 5, "counted_as_restart": True}),
    ("decision", "db", {"action": "restart", "rejected": "budget spent"}),
    ("decision", "db", {"action": "restart", "cause_seq": 2.5}),
    ("remedy.start", "web", {"decision_seq": 8, "remedy_id": "r1", "action": "restart"}),
    ("remedy.start", "web", {"decision_seq": 8, "remedy_id": "r2", "action": "restart"}),
    ("remedy.outcome", "web", {"remedy_id": "r1", "state": "succeeded", "duration_s": 0.7, "action": "restart"}),
    ("remedy.outcome", "db", {"remedy_id": "r3", "state": "failed", "duration_s": 42.0, "action": "start"}),
    ("alert", "web", {"severity": "warning", "message": "x"}),
    ("unit.event", "web", {"event": "log_flood", "stream": "stdout", "phase": "begin"}),
    ("unit.event", "web", {"event": "log_flood", "stream": "stdout", "phase": "end", "dropped_bytes": 1234}),
    ("unit.event", "db", {"event": "log_flood", "stream": "stderr", "phase": "begin"}),
    ("supervisor", None, {"event": "started", "pid": 2}),
]


def _fill(j: Any, now: float) -> None:
    for _ in range(3):
        for kind, unit, body in BODIES:
            j.append(kind, unit, body)
    if isinstance(j, Journal):
        j.samples_every_s = 0.0
    j.add_samples([("web", m, now + i, v) for i, (m, v) in enumerate(
        [("http.duration_s", 0.002), ("http.duration_s", 0.3), ("http.duration_s", 7.0), ("rss", 1e6),
         ("tcp.duration_s", 0.04), ("rss", 2e6)])])
    assert j.flush(60)


def test_every_aggregate_query_agrees_with_sqlite(pg_dsn: str, tmp_path: Path) -> None:
    now = time.time()
    clock = itertools.count(int(now * 1e9), 1_000_000)
    kw: dict[str, Any] = {"wall_ns": lambda: next(clock), "mono_ns": lambda: 1}
    with Journal(tmp_path / "j.sqlite", **kw) as sj:
        _fill(sj, now)
    clock = itertools.count(int(now * 1e9), 1_000_000)
    with PgJournal(pg_dsn, supervisor="h", spool_path=tmp_path / "s", anchor_every_s=1e9, **kw) as pj:
        _fill(pj, now)
    bounds = (0.001, 0.01, 0.1, 1.0, 10.0)
    with Reader(tmp_path / "j.sqlite") as s, PgReader(pg_dsn, "h") as p:
        s_last, p_last = s.last_seq(), p.last_seq()
        # the PostgreSQL writer closes with an anchor (its cross-links), after the same 63 records
        assert s_last == 3 * len(BODIES) and p_last == s_last + 1 and p.get(p_last).kind == "anchor"  # type: ignore[union-attr]
        up = s_last
        checks = {
            "count_by": lambda r: r.count_by("decision", ["action", "rule"], up),
            "count_by_alerts": lambda r: r.count_by("alert", ["severity"], up),
            "exit_counts": lambda r: r.exit_counts(up),
            "restart_counts": lambda r: r.restart_counts(up, ["restart", "rejuvenate"]),
            "value_buckets": lambda r: r.value_buckets("remedy.outcome", "duration_s", "action", bounds, up),
            "sample_histogram": lambda r: r.sample_histogram(".duration_s", bounds, now + 100),
            "flood_counts": lambda r: r.flood_counts(up),
            "flood_phases": lambda r: r.flood_phases(1, up),
            "last_start_seq": lambda r: r.last_start_seq(up),
            "repeated_remedy_starts": lambda r: r.repeated_remedy_starts(),
            "units_between": lambda r: r.units_between(now - 10, now + 100),
            "samples_between": lambda r: r.samples_between("web", "rss", now - 1, now + 100),
            "sample_count": lambda r: r.sample_count("web", "http.duration_s", now - 1, now + 100),
            "sample_buckets": lambda r: r.sample_buckets("web", "http.duration_s", now, now + 100, 2.0),
            "latest_sample": lambda r: r.latest_sample("web", "rss"),
            "metrics": lambda r: r.metrics("web"),
            "counts_by_kind_unit": lambda r: [c for c in r.counts_by_kind_unit() if c[0] != "anchor"],
            "hashes": lambda r: {k: v for k, v in r.hashes().items() if k <= up},
            "tail": lambda r: r.tail(5, unit="web", kinds=["decision", "alert"]),
            "interrupted_remedies": lambda r: (interrupted_remedies(tmp_path / "j.sqlite") if isinstance(r, Reader)
                                               else r.interrupted_remedies(LOOKBACK)),
        }
        for name, fn in checks.items():
            a, b = fn(s), fn(p)
            if isinstance(a, list):
                a, b = sorted(a, key=repr), sorted(b, key=repr)
            assert a == b, (name, a, b)
            assert a not in ([], None, 0, {}), f"{name}: an empty answer proves nothing"
