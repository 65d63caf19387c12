"""The named queries of ``enmei.box.Reader`` that the dashboard, report, CLI and benchmarks use instead of
their own SQL: their answers on a real journal, and ``BoxError`` (never a SQLite error) on a damaged one."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from enmei.box import Journal, Reader
from enmei.errors import BoxError

#: Sample times: integral (their means are exact) and recent (older samples are pruned by retention).
T = float(int(time.time()) - 1000)


def _journal(path: Path) -> None:
    with Journal(path) as j:
        j.add_samples([("a", "http.ok", T, 1.0), ("a", "http.ok", T + 1, 0.0), ("a", "http.ok", T + 2, 1.0),
                       ("a", "http.ok", T + 10, 1.0), ("c", "cpu", T + 5, 3.0)])
        j.append("supervisor", None, {"event": "started"})                       # 1
        j.append("verdict", "a", {"kind": "latency"})                            # 2
        d = j.append("decision", "a", {"action": "restart"})                     # 3
        j.append("remedy.start", "a", {"decision_seq": d, "remedy_id": "r1"})     # 4
        j.append("remedy.start", "a", {"decision_seq": d, "remedy_id": "r2"})     # 5
        j.append("remedy.start", "b", {"decision_seq": 99, "remedy_id": "r3"})    # 6
        j.append("supervisor", None, {"event": "started"})                       # 7
        j.append("unit.event", "b", {"event": "log_flood", "stream": "stderr"})  # 8
        j.append("unit.event", "b", {"event": "exited"})                         # 9
        j.append("alert", None, {"message": "x"})                                # 10
        assert j.flush(10)


def test_aggregate_queries_answer_from_the_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _journal(path)
    with Reader(path) as r:
        assert r.counts_by_kind_unit() == [
            ("alert", "", 1), ("decision", "a", 1), ("remedy.start", "a", 2), ("remedy.start", "b", 1),
            ("supervisor", "", 2), ("unit.event", "b", 2), ("verdict", "a", 1)]
        assert r.hashes() == {rec.seq: rec.hash for rec in r.records()}
        assert r.repeated_remedy_starts() == [(3, 2)]
        assert r.last_start_seq(6) == 1
        assert r.last_start_seq(10) == 7
        assert r.last_start_seq(0) is None
        assert r.count_by("verdict", ["kind"], 10) == [("a", "latency", 1)]
        assert r.count_by("decision", ["action", "nope"], 10) == [("a", "restart", None, 1)]
        assert r.count_by("verdict", ["kind"], 1) == []
        assert r.exit_counts(10) == [("b", "other", 1)] and r.exit_counts(8) == []
        assert r.restart_counts(10, ["restart"]) == [("a", "restart", "other", 1)]  # no cause_seq
        assert r.restart_counts(10, []) == []
        assert r.flood_counts(10) == [("b", "stderr", 0, 0)]
        assert r.sample_histogram(".ok", [0.5], T + 2) == [("a", "http.ok", 0, 1, 0.0), ("a", "http.ok", 1, 2, 2.0)]
        with pytest.raises(ValueError, match="not a field name"):
            r.count_by("verdict", ["kind') --"], 10)
        assert r.latest_sample("a", "http.ok") == 1.0
        assert r.latest_sample("a", "nope") is None
        assert r.sample_count("a", "http.ok", T, T + 2) == 3
        assert r.samples_between("a", "http.ok", T + 0.5, T + 10) == [(T + 1, 0.0), (T + 2, 1.0), (T + 10, 1.0)]
        # buckets of 5 s from T: [T, T+5) holds T..T+2, [T+10, T+15) holds T+10
        assert r.sample_buckets("a", "http.ok", T, T + 20, 5.0) == [(T + 1, 0.0, 1.0), (T + 10, 1.0, 1.0)]
        assert r.units_between(T + 4, T + 6) == ["c"]
        assert r.units_between(0.0, T + 1e6) == ["a", "b", "c"]


def test_a_damaged_journal_raises_box_error_not_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _journal(path)
    conn = sqlite3.connect(path)  # the test plays the damage: a table gone under the reader
    conn.execute("DROP TABLE samples")
    conn.commit()
    conn.close()
    with Reader(path) as r:
        assert r.count() == 10  # what is intact still reads
        for query in (lambda: r.latest_sample("a", "http.ok"), lambda: r.sample_count("a", "x", 0, 1),
                      lambda: r.units_between(0, 1), lambda: r.samples("a", "http.ok")):
            with pytest.raises(BoxError, match="cannot read the journal"):
                query()


def test_a_corrupt_page_raises_box_error_from_a_scan(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        for i in range(3000):
            j.append("unit.state", f"u{i % 7}", {"i": i, "pad": "x" * 100})
        assert j.flush(30)
    size = path.stat().st_size
    with path.open("r+b") as f:  # garbage over the second half of the file: interior b-tree pages
        f.seek(size // 2)
        f.write(b"\xff" * (size // 4))
    with Reader(path) as r:
        with pytest.raises(BoxError, match="cannot read the journal"):
            r.counts_by_kind_unit()
        with pytest.raises(BoxError, match="cannot read the journal"):
            list(r.records())
