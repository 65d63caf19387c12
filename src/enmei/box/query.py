"""Read a journal: records by seq, the newest ones, filtered by unit and kind, chart samples, and the
few aggregate queries the dashboard, the report, the CLI and the benchmarks need.

This is where the journal is queried: no module outside ``enmei.box`` writes SQL against ``records`` or
``samples`` (checked by ``tests/unit/test_box_sql_boundary.py``). Every method reads the journal
read-only (it can run while ``enmei up`` writes) and raises ``BoxError`` — never ``sqlite3.Error`` —
when the file cannot be read (damaged, truncated, not a journal).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from enmei.box.record import Record
from enmei.box.store import connect
from enmei.errors import BoxError

__all__ = ["Reader"]

_COLS = "seq, wall_ns, mono_ns, kind, unit, body, prev, hash"


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    # One error type for callers: the report and the dashboard catch BoxError, not SQLite's.
    try:
        yield
    except sqlite3.DatabaseError as exc:
        raise BoxError(f"{path}: cannot read the journal: {exc}") from exc


def _record(row: tuple[int, int, int, str, str, str, bytes, bytes]) -> Record:
    return Record(row[0], row[1], row[2], row[3], row[4], row[5], bytes(row[6]), bytes(row[7]))


class Reader:
    """A read-only view of one journal file."""

    def __init__(self, path: str | Path) -> None:
        """Open ``path`` read-only. Raises ``BoxError`` if it is missing or not (yet) a journal."""
        self.path = Path(path)
        self.conn: sqlite3.Connection = connect(self.path, readonly=True)
        try:
            self.conn.execute("SELECT seq FROM records LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            self.conn.close()
            raise BoxError(f"{self.path}: not a journal (or not yet): {exc}") from exc

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _where(self, unit: str | None, kinds: list[str] | None, since_seq: int | None,
               since_wall: float | None) -> tuple[str, list[object]]:
        clauses: list[str] = []
        args: list[object] = []
        if unit is not None:
            clauses.append("unit = ?")
            args.append(unit)
        if kinds:
            clauses.append(f"kind IN ({','.join('?' * len(kinds))})")
            args.extend(kinds)
        if since_seq is not None:
            clauses.append("seq > ?")
            args.append(since_seq)
        if since_wall is not None:
            clauses.append("wall_ns >= ?")
            args.append(int(since_wall * 1e9))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def _all(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        with _reading(self.path):
            return [tuple(r) for r in self.conn.execute(sql, args).fetchall()]

    def get(self, seq: int) -> Record | None:
        with _reading(self.path):
            row = self.conn.execute(f"SELECT {_COLS} FROM records WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
        return _record(row) if row else None

    def last_seq(self) -> int:
        with _reading(self.path):
            row = self.conn.execute("SELECT MAX(seq) FROM records").fetchone()
        return int(row[0] or 0)

    def count(self) -> int:
        with _reading(self.path):
            row = self.conn.execute("SELECT COUNT(*) FROM records").fetchone()
        return int(row[0])

    def tail(self, n: int = 20, *, unit: str | None = None, kinds: list[str] | None = None) -> list[Record]:
        """The newest ``n`` records (oldest first), optionally of one unit and some kinds."""
        where, args = self._where(unit, kinds, None, None)
        sql = f"SELECT {_COLS} FROM records{where} ORDER BY seq DESC LIMIT ?"  # noqa: S608 - placeholders only
        with _reading(self.path):
            rows = self.conn.execute(sql, (*args, n)).fetchall()
        return [_record(r) for r in reversed(rows)]

    def records(self, *, unit: str | None = None, kinds: list[str] | None = None,
                since_seq: int | None = None, since_wall: float | None = None,
                limit: int | None = None) -> Iterator[Record]:
        """Records in seq order after ``since_seq`` / from ``since_wall``, filtered."""
        where, args = self._where(unit, kinds, since_seq, since_wall)
        sql = f"SELECT {_COLS} FROM records{where} ORDER BY seq"  # noqa: S608 - placeholders only
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with _reading(self.path):
            for row in self.conn.execute(sql, args):
                yield _record(row)

    def samples(self, unit: str, metric: str, *, since_wall: float = 0.0,
                limit: int = 10_000) -> list[tuple[float, float]]:
        """(wall, value) pairs of one metric of one unit, oldest first."""
        rows = self._all(
            "SELECT wall, value FROM (SELECT wall, value FROM samples WHERE unit = ? AND metric = ? AND wall >= ?"
            " ORDER BY wall DESC LIMIT ?) ORDER BY wall",
            (unit, metric, since_wall, limit))
        return [(_f(w), _f(v)) for w, v in rows]

    def metrics(self, unit: str) -> list[str]:
        rows = self._all("SELECT DISTINCT metric FROM samples WHERE unit = ?", (unit,))
        return sorted(str(r[0]) for r in rows)

    # -- aggregate queries (one per caller's need; the SQL stays here) ---------------------------

    def latest_sample(self, unit: str, metric: str) -> float | None:
        """The newest value of one metric of one unit (an index seek), or None if it has none."""
        rows = self._all("SELECT value FROM samples WHERE unit = ? AND metric = ? ORDER BY wall DESC LIMIT 1",
                         (unit, metric))
        return _f(rows[0][0]) if rows else None

    def sample_count(self, unit: str, metric: str, since: float, until: float) -> int:
        """How many samples of one metric of one unit have ``since <= wall <= until``."""
        rows = self._all(f"SELECT COUNT(*) {_WINDOW}", (unit, metric, since, until))
        return int(rows[0][0])

    def samples_between(self, unit: str, metric: str, since: float, until: float) -> list[tuple[float, float]]:
        """(wall, value) of every sample of one metric of one unit with ``since <= wall <= until``, oldest first."""
        rows = self._all(f"SELECT wall, value {_WINDOW} ORDER BY wall", (unit, metric, since, until))
        return [(_f(w), _f(v)) for w, v in rows]

    def sample_buckets(self, unit: str, metric: str, since: float, until: float,
                       step: float) -> list[tuple[float, float, float]]:
        """(mean wall, min value, max value) of the window's samples per ``step``-second bucket from ``since``,
        oldest first (the reduction is done by SQLite, so a long window costs a bounded answer)."""
        rows = self._all(f"SELECT AVG(wall), MIN(value), MAX(value) {_WINDOW}"
                         " GROUP BY CAST((wall - ?) / ? AS INTEGER) ORDER BY 1",
                         (unit, metric, since, until, since, step))
        return [(_f(w), _f(lo), _f(hi)) for w, lo, hi in rows]

    def units_between(self, since: float, until: float) -> list[str]:
        """The units (not ``""``) with records or samples with ``since <= wall <= until``, sorted."""
        rows = self._all(
            "SELECT DISTINCT unit FROM records WHERE wall_ns >= ? AND wall_ns <= ? AND unit != ''"
            " UNION SELECT DISTINCT unit FROM samples WHERE wall >= ? AND wall <= ?",
            (int(since * 1e9), int(until * 1e9), since, until))
        return sorted(str(r[0]) for r in rows)

    def counts_by_kind_unit(self) -> list[tuple[str, str, int]]:
        """(kind, unit, number of records) for every kind and unit present, sorted by kind then unit."""
        rows = self._all("SELECT kind, unit, COUNT(*) FROM records GROUP BY kind, unit ORDER BY kind, unit")
        return [(str(k), str(u), int(n)) for k, u, n in rows]

    def hashes(self) -> dict[int, bytes]:
        """Every record's seq mapped to its chain hash (for comparing two moments of one journal)."""
        return {int(seq): bytes(h) for seq, h in self._all("SELECT seq, hash FROM records")}

    def repeated_remedy_starts(self) -> list[tuple[object, int]]:
        """(decision_seq, n) for each decision that more than one ``remedy.start`` record names (n > 1).

        The decision_seq is as the records hold it (an int, or None where a start names none).
        """
        rows = self._all("SELECT json_extract(body, '$.decision_seq'), COUNT(*) FROM records"
                         " WHERE kind = 'remedy.start' GROUP BY 1 HAVING COUNT(*) > 1")
        return [(d, int(n)) for d, n in rows]

    def last_start_seq(self, up_to_seq: int) -> int | None:
        """The seq of the newest ``supervisor`` record with event ``started`` at or below ``up_to_seq``."""
        rows = self._all("SELECT MAX(seq) FROM records WHERE kind = 'supervisor' AND seq <= ? AND "
                         "json_extract(body, '$.event') = 'started'", (up_to_seq,))
        return int(rows[0][0]) if rows and rows[0][0] is not None else None

    def counted_records(self, first_seq: int, last_seq: int) -> Iterator[tuple[str, str, str]]:
        """(kind, unit, raw JSON body) of the records ``/metrics`` counts with ``first_seq <= seq <= last_seq``,
        in seq order: verdicts, decisions, remedy outcomes, alerts and ``unit.event`` log floods."""
        sql = ("SELECT kind, unit, body FROM records WHERE seq >= ? AND seq <= ? AND (kind IN "
               "('verdict', 'decision', 'remedy.outcome', 'alert') OR (kind = 'unit.event' AND "
               "json_extract(body, '$.event') = 'log_flood')) ORDER BY seq")
        with _reading(self.path):
            for kind, unit, body in self.conn.execute(sql, (first_seq, last_seq)):
                yield str(kind), str(unit), str(body)


_WINDOW = "FROM samples WHERE unit = ? AND metric = ? AND wall >= ? AND wall <= ?"


def _f(v: Any) -> float:
    # SQLite may hand back an int for a REAL column's integral value.
    return float(v)
