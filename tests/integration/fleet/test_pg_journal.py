"""The D-Box on a real PostgreSQL: the chain, reads, verify (a changed byte, a rewritten chain caught by a
peer's cross-link), one writer per chain, and PostgreSQL killed mid-run with nothing acknowledged lost."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
import pytest

from enmei.box.api import JournalReader, JournalWriter
from enmei.box.pgread import PgReader, export_pg, verify_pg
from enmei.box.pgstore import PgJournal
from enmei.box.record import chain_hash
from enmei.errors import BoxError
from enmei.fleet.pgserver import TempPostgres
from support.wait import scaled, until

pytestmark = pytest.mark.integration


def _journal(dsn: str, tmp_path: Path, name: str = "a", **kw: object) -> PgJournal:
    return PgJournal(dsn, supervisor=name, spool_path=tmp_path / f"{name}.spool", **kw)  # type: ignore[arg-type]


def test_records_read_back_verify_and_export(pg_dsn: str, tmp_path: Path) -> None:
    j = _journal(pg_dsn, tmp_path)
    assert isinstance(j, JournalWriter)
    with j:
        for i in range(300):
            j.append("unit.event", "web" if i % 2 else "db", {"i": i})
        now = time.time()
        j.add_samples([("web", "rss", now + i, float(i)) for i in range(5)])
        assert j.flush(scaled(20))
        assert j.durable_seq == j.committed_seq == 300
    with PgReader(pg_dsn) as r:
        assert isinstance(r, JournalReader)
        assert r.count() == 301  # and the anchor written at close
        assert r.get(7) is not None and r.get(7).data() == {"i": 6}  # type: ignore[union-attr]
        assert [x.data()["i"] for x in r.tail(3, unit="web")] == [295, 297, 299]
        assert sum(1 for _ in r.records(unit="db", since_seq=290)) == 5
        assert r.samples("web", "rss") == [(now + i, float(i)) for i in range(5)]
        assert ("unit.event", "web", 150) in r.counts_by_kind_unit()
    res = verify_pg(pg_dsn)
    assert res.ok and res.chains["a"].records == 301
    lines = list(export_pg(pg_dsn))
    assert len(lines) == 301 and lines[0]["supervisor"] == "a" and lines[0]["body"] == {"i": 0}


def test_verify_names_a_changed_record_and_a_chain_rewritten_under_a_peers_link(pg_dsn: str, tmp_path: Path) -> None:
    with _journal(pg_dsn, tmp_path, "b") as b:
        for i in range(20):
            b.append("k", "u", {"i": i})
        assert b.flush(scaled(20))
    # a's anchor (written at close) names b's newest record: the chains cross-link
    with _journal(pg_dsn, tmp_path, "a") as a:
        a.append("k", "u", {"x": 1})
        assert a.flush(scaled(20))
    assert verify_pg(pg_dsn).ok
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("UPDATE enmei_records SET body = '{\"i\":99}' WHERE supervisor = 'b' AND seq = 5")
    res = verify_pg(pg_dsn)
    assert not res.ok and res.chains["b"].first_bad == 5 and res.chains["a"].ok
    # Now rewrite b from record 5 on with recomputed hashes: b's chain alone holds again, a's link does not.
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        rows = c.execute("SELECT seq, wall_ns, mono_ns, kind, unit, body, prev FROM enmei_records"
                         " WHERE supervisor = 'b' ORDER BY seq").fetchall()
        prev = bytes(rows[0][6])
        for seq, wall, mono, kind, unit, body, _ in rows:
            h = chain_hash(prev, seq, wall, mono, kind, unit, body)
            c.execute("UPDATE enmei_records SET prev = %s, hash = %s WHERE supervisor = 'b' AND seq = %s",
                      (prev, h, seq))
            prev = h
    res = verify_pg(pg_dsn)
    assert res.chains["b"].ok and not res.ok
    assert any("names b record" in why and "another hash" in why for why in res.broken_links)


def test_one_writer_per_chain(pg_dsn: str, tmp_path: Path) -> None:
    with _journal(pg_dsn, tmp_path, "a"):
        with pytest.raises(BoxError, match="another enmei is writing supervisor 'a'"):
            _journal(pg_dsn, tmp_path / "x", "a").open()
        with _journal(pg_dsn, tmp_path, "other"):
            pass


def test_unreachable_postgres_is_a_clear_error_at_open(tmp_path: Path) -> None:
    from enmei.daemons.base import free_port

    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(BoxError, match="cannot connect to the PostgreSQL journal"):
        _journal(dsn, tmp_path, connect_timeout_s=1).open()


def test_postgres_down_then_back_flushes_in_order(pg_server: TempPostgres, pg_dsn: str, tmp_path: Path) -> None:
    troubles: list[str | None] = []
    with _journal(pg_dsn, tmp_path, on_trouble=troubles.append, retry_max_s=0.5) as j:
        for i in range(100):
            j.append("k", "u", {"i": i})
        assert j.flush(scaled(20)) and j.committed_seq == 100
        pg_server.kill()
        for i in range(100, 400):
            j.append("k", "u", {"i": i})  # supervision goes on: appends never block
        assert j.flush(scaled(30)), "records are acknowledged in the spool while PostgreSQL is down"
        assert j.status == "degraded" and j.committed_seq <= 100 < j.durable_seq
        assert j.spooled >= 1 and troubles and troubles[0]
        pg_server.start()
        until(lambda: j.committed_seq >= 400 and j.status == "ok", scaled(60), "written to PostgreSQL again")
        assert troubles[-1] is None and j.spooled == 0
    with PgReader(pg_dsn, "a") as r:
        assert [x.data()["i"] for x in r.records(kinds=["k"])] == list(range(400))
    assert verify_pg(pg_dsn).ok


_WRITER = textwrap.dedent("""
    import sys, time
    from enmei.box.pgstore import PgJournal
    j = PgJournal(sys.argv[1], supervisor="w", spool_path=sys.argv[2], retry_max_s=0.3).open()
    i = 0
    while True:  # killed by the test
        for _ in range(20):
            j.append("k", "u", {"i": i})
            i += 1
        if j.flush(30):
            print(j.durable_seq, j.committed_seq, flush=True)
        time.sleep(0.01)
""")


def test_postgres_killed_mid_run_then_supervisor_killed_loses_nothing_acknowledged(
        pg_server: TempPostgres, pg_dsn: str, tmp_path: Path) -> None:
    """Acknowledged = ``flush`` returned (committed in PostgreSQL, or fsynced in the spool). The writer
    reports every acknowledged seq; PostgreSQL is killed -9, the writer goes on into its spool, then the
    writer is killed -9 too; a new writer of the chain must bring every acknowledged record to PostgreSQL."""
    spool = tmp_path / "w.spool"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, pg_dsn, str(spool)], stdout=subprocess.PIPE, text=True)
    acked: list[tuple[int, int]] = []
    try:
        assert proc.stdout is not None
        while len(acked) < 5:
            acked.append(tuple(map(int, proc.stdout.readline().split())))  # type: ignore[arg-type]
        pg_server.kill()
        before = acked[-1][0]
        while not acked or acked[-1][0] < before + 200:
            line = proc.stdout.readline()
            assert line, "the writer died"
            acked.append(tuple(map(int, line.split())))  # type: ignore[arg-type]
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()
    last_acked = acked[-1][0]
    assert acked[-1][1] < last_acked, "the last acknowledgements came from the spool"
    pg_server.start()
    with PgJournal(pg_dsn, supervisor="w", spool_path=spool) as j:
        assert j.last_seq >= last_acked and not spool.exists()
    with PgReader(pg_dsn, "w") as r:
        got = [x.data()["i"] for x in r.records(kinds=["k"])]
    assert got == list(range(len(got))) and len(got) >= last_acked - 1, (len(got), last_acked)
    res = verify_pg(pg_dsn)
    assert res.ok, res.to_json()
    print(json.dumps({"acknowledged": last_acked, "in_postgres": len(got)}))
