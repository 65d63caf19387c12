from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from enmei.box import GENESIS, Journal, Reader, canonical_json, chain_hash, verify
from enmei.box.verify import verify_range
from enmei.errors import BoxError


def _fill(path: Path, n: int) -> None:
    with Journal(path) as j:
        for i in range(n):
            j.append("unit.state", f"u{i % 3}", {"i": i, "to": "running"})
        assert j.flush(5)


def test_append_is_durable_after_flush_and_chain_continues_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, 10)
    with Journal(path) as j:
        assert j.last_seq == 10
        seq = j.append("alert", None, {"message": "x"})
        assert seq == 11
        assert j.flush(5)
        assert j.durable_seq == 11
    res = verify(path)
    assert res.ok and res.records == 11
    with Reader(path) as r:
        rec = r.get(11)
        assert rec is not None and rec.unit == "" and rec.data() == {"message": "x"}
        assert r.get(10).hash == rec.prev  # type: ignore[union-attr]
        assert [x.seq for x in r.tail(3)] == [9, 10, 11]
        assert [x.seq for x in r.records(unit="u0", since_seq=3)] == [4, 7, 10]


def test_first_record_chains_from_genesis(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, 1)
    with Reader(path) as r:
        rec = r.get(1)
    assert rec is not None and rec.prev == GENESIS
    assert rec.hash == chain_hash(GENESIS, 1, rec.wall_ns, rec.mono_ns, rec.kind, rec.unit, rec.body)
    assert rec.valid_after(GENESIS)


def _tamper(path: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql, args)
    conn.commit()
    conn.close()


def test_one_changed_byte_is_named(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, 50)
    _tamper(path, "UPDATE records SET body = replace(body, '\"i\":17', '\"i\":71') WHERE seq = 18")
    res = verify(path)
    assert not res.ok and res.first_bad == 18 and "do not match its hash" in res.reason
    assert res.records == 17


@pytest.mark.parametrize("column", ["kind", "unit", "wall_ns", "mono_ns"])
def test_every_field_is_covered_by_the_hash(tmp_path: Path, column: str) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, 5)
    value = "x" if column in ("kind", "unit") else 12345
    _tamper(path, f"UPDATE records SET {column} = ? WHERE seq = 3", value)
    assert verify(path).first_bad == 3


def test_deleted_record_is_named(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, 20)
    _tamper(path, "DELETE FROM records WHERE seq = 7")
    res = verify(path)
    assert not res.ok and res.first_bad == 7 and "missing" in res.reason


def test_reordered_records_are_caught(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, 20)
    conn = sqlite3.connect(path)
    a = conn.execute("SELECT wall_ns, mono_ns, kind, unit, body, prev, hash FROM records WHERE seq=5").fetchone()
    b = conn.execute("SELECT wall_ns, mono_ns, kind, unit, body, prev, hash FROM records WHERE seq=6").fetchone()
    upd = "UPDATE records SET wall_ns=?, mono_ns=?, kind=?, unit=?, body=?, prev=?, hash=? WHERE seq=?"
    conn.execute(upd, (*b, 5))
    conn.execute(upd, (*a, 6))
    conn.commit()
    conn.close()
    assert verify(path).first_bad == 5


def test_verify_range_matches_whole(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    _fill(path, 30)
    whole = verify(path, workers=1)
    a, b = verify_range(str(path), 1, 15), verify_range(str(path), 16, 30)
    assert a.ok and b.ok and a.records + b.records == whole.records and b.last_hash == whole.last_hash
    _tamper(path, "DELETE FROM records WHERE seq = 15")
    assert verify_range(str(path), 1, 15).first_bad == 15
    assert verify_range(str(path), 16, 30).first_bad == 15


def test_canonical_json_is_sorted_compact_and_finite() -> None:
    assert canonical_json({"b": 1, "a": [1.5, None]}) == '{"a":[1.5,null],"b":1}'
    assert canonical_json({"x": float("nan"), "y": float("inf")}) == '{"x":"NaN","y":"Infinity"}'
    assert canonical_json({"p": Path("/tmp")}) == '{"p":"/tmp"}'


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path), pytest.raises(BoxError, match="another enmei is writing"):
        Journal(path).open()


def test_not_a_journal_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(BoxError, match="not a usable journal"):
        Journal(path).open()
    with pytest.raises(BoxError, match="no journal here"):
        Reader(tmp_path / "missing.sqlite")


def test_appends_from_many_threads_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        def worker(k: int) -> None:
            for i in range(200):
                j.append("samples", f"t{k}", {"i": i})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        j.append_many([("alert", None, {"n": 1}), ("alert", None, {"n": 2})])
        assert j.flush(5)
    res = verify(path)
    assert res.ok and res.records == 802


def test_samples_are_kept_apart_and_queried(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    t0 = time.time() - 20
    with Journal(path) as j:
        j.add_samples([("web", "http.latency_s", t0 + i, i / 100) for i in range(10)])
        j.add_samples([("web", "http.latency_s", t0 - 90_000, 9.9)])  # past the retention: pruned
        j.append("alert", None, {})
        assert j.flush(5)
    with Reader(path) as r:
        pts = r.samples("web", "http.latency_s", since_wall=t0 + 5)
        assert len(r.samples("web", "http.latency_s")) == 10
        assert [v for _, v in pts] == [0.05, 0.06, 0.07, 0.08, 0.09]
        assert r.metrics("web") == ["http.latency_s"]
    assert verify(path).records == 1  # samples are not in the chain


def test_failed_commits_buffer_and_retry_without_loss(tmp_path: Path) -> None:
    """A commit that fails (disk full, I/O error) keeps the batch; once writes work, all of it lands."""
    path = tmp_path / "j.sqlite"
    troubles: list[str | None] = []
    j = Journal(path, on_trouble=troubles.append).open()
    real_commit = j._commit
    fail = threading.Event()
    fail.set()

    def flaky_commit(batch, samples):  # type: ignore[no-untyped-def]
        if fail.is_set():
            raise sqlite3.OperationalError("database or disk is full")
        real_commit(batch, samples)

    j._commit = flaky_commit  # type: ignore[method-assign]
    for i in range(100):
        j.append("unit.state", "u", {"i": i})
    assert not j.flush(0.3)
    assert j.status == "degraded" and "disk is full" in (j.error or "")
    assert j.durable_seq == 0
    fail.clear()
    assert j.flush(10)
    assert j.status == "ok" and j.durable_seq == 100
    j.close()
    assert troubles[0] and "disk is full" in troubles[0] and troubles[-1] is None
    assert verify(path).records == 100
