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
        self.location = str(self.path)
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

    # -- the counters of ``/metrics``, seeded at start (``enmei.web.counters``) ----------------------
    # Each is one GROUP BY query over the records up to a seq: the answer is bounded by the number of
    # units times the label values, however long the journal is.

    def count_by(self, kind: str, fields: Sequence[str], up_to_seq: int) -> list[tuple[Any, ...]]:
        """(unit, body field values..., n) for the records of ``kind`` with ``seq <= up_to_seq``, grouped by
        the unit and the top-level body ``fields`` (a missing field reads as None)."""
        cols = "".join(f", json_extract(body, '$.{_field(f)}')" for f in fields)
        groups = ", ".join(str(i) for i in range(1, len(fields) + 2))
        return self._all(f"SELECT unit{cols}, COUNT(*) FROM records WHERE kind = ? AND seq <= ?"  # noqa: S608
                         f" GROUP BY {groups}", (kind, up_to_seq))

    def exit_counts(self, up_to_seq: int) -> list[tuple[str, str, int]]:
        """(unit, reason, n) of the units' ends with ``seq <= up_to_seq``: every ``exited`` unit event (reason
        ``signal`` if it names a signal, else ``clean`` for code 0, ``error`` for another code, ``other`` for
        a backend's reason) and every move to EXITED because a start failed (``start_failed``)."""
        rows = self._all(
            "SELECT unit, CASE WHEN kind = 'unit.state' THEN 'start_failed'"
            " WHEN json_type(body, '$.signal') = 'text' AND json_extract(body, '$.signal') != '' THEN 'signal'"
            " WHEN json_type(body, '$.code') = 'integer' AND json_extract(body, '$.code') = 0 THEN 'clean'"
            " WHEN json_type(body, '$.code') = 'integer' THEN 'error' ELSE 'other' END, COUNT(*)"
            " FROM records WHERE seq <= ? AND ((kind = 'unit.event' AND json_extract(body, '$.event') = 'exited')"
            " OR (kind = 'unit.state' AND json_extract(body, '$.to') = 'exited'"
            " AND json_extract(body, '$.reason') LIKE 'start failed%')) GROUP BY 1, 2", (up_to_seq,))
        return [(str(u), str(r), int(n)) for u, r, n in rows]

    def restart_counts(self, up_to_seq: int, actions: Sequence[str]) -> list[tuple[str, str, str, int]]:
        """(unit, action, reason, n) of the decisions with ``seq <= up_to_seq`` the engine carried out (not
        rejected, not suppressed) that count as a restart: one of ``actions``, or one the engine marked
        ``counted_as_restart`` (a start after an exit). The reason: ``operator`` for an operator's command,
        else what caused it — ``exit`` (a unit event), ``verdict`` (a probe's or detector's), ``retry`` (a remedy's
        outcome), ``other``."""
        marks = ",".join("?" * len(actions)) or "NULL"
        sql = _RESTARTS.replace("$marks", marks)
        rows = self._all(sql, (up_to_seq, *actions))
        return [(str(u), str(a), str(r), int(n)) for u, a, r, n in rows]

    def value_buckets(self, kind: str, field: str, label: str, bounds: Sequence[float],
                      up_to_seq: int) -> list[tuple[str, int, int, float]]:
        """(label value, bucket, n, sum) of the numeric, non-negative body ``field`` of the records of ``kind``
        with ``seq <= up_to_seq``, grouped by the body field ``label`` and the histogram bucket: the index of
        the first of the sorted ``bounds`` the value is at most, ``len(bounds)`` past the last."""
        f, lab = _field(field), _field(label)
        case, args = _bucket_case(f"json_extract(body, '$.{f}')", bounds)
        rows = self._all(
            f"SELECT json_extract(body, '$.{lab}'), {case}, COUNT(*), SUM(json_extract(body, '$.{f}'))"  # noqa: S608
            f" FROM records WHERE kind = ? AND seq <= ? AND json_type(body, '$.{f}') IN ('integer', 'real')"
            f" AND json_extract(body, '$.{f}') >= 0 GROUP BY 1, 2", (*args, kind, up_to_seq))
        return [(str(a), int(b), int(n), _f(s)) for a, b, n, s in rows]

    def sample_histogram(self, suffix: str, bounds: Sequence[float],
                         up_to_wall: float) -> list[tuple[str, str, int, int, float]]:
        """(unit, metric, bucket, n, sum) of the samples whose metric ends with ``suffix`` (e.g. ``.duration_s``)
        and ``wall <= up_to_wall``, grouped by unit, metric and bucket (as in ``value_buckets``). Samples older
        than the journal's retention are gone: they are not in the answer."""
        case, args = _bucket_case("value", bounds)
        rows = self._all(f"SELECT unit, metric, {case}, COUNT(*), SUM(value) FROM samples"  # noqa: S608
                         " WHERE substr(metric, -?) = ? AND wall <= ? AND value >= 0 GROUP BY 1, 2, 3",
                         (*args, len(suffix), suffix, up_to_wall))
        return [(str(u), str(m), int(b), int(n), _f(s)) for u, m, b, n, s in rows]

    def flood_counts(self, up_to_seq: int) -> list[tuple[str, str, int, int]]:
        """(unit, stream, flood episodes begun, bytes dropped in the episodes that ended) of the ``log_flood``
        unit events with ``seq <= up_to_seq``."""
        rows = self._all(
            "SELECT unit, json_extract(body, '$.stream'), SUM(json_extract(body, '$.phase') = 'begin'),"
            " SUM(CASE WHEN json_extract(body, '$.phase') = 'end' AND json_type(body, '$.dropped_bytes') = 'integer'"
            " AND json_extract(body, '$.dropped_bytes') >= 0 THEN json_extract(body, '$.dropped_bytes') ELSE 0 END)"
            " FROM records WHERE kind = 'unit.event' AND json_extract(body, '$.event') = 'log_flood' AND seq <= ?"
            " GROUP BY 1, 2", (up_to_seq,))
        return [(str(u), str(s), int(b or 0), int(d or 0)) for u, s, b, d in rows]

    def flood_phases(self, first_seq: int, last_seq: int) -> list[tuple[str, str, str]]:
        """(unit, stream, phase) of the newest ``log_flood`` unit event of each unit and stream with
        ``first_seq <= seq <= last_seq``."""
        rows = self._all(
            "SELECT unit, json_extract(body, '$.stream'), json_extract(body, '$.phase'), MAX(seq) FROM records"
            " WHERE kind = 'unit.event' AND json_extract(body, '$.event') = 'log_flood' AND seq >= ? AND seq <= ?"
            " GROUP BY 1, 2", (first_seq, last_seq))
        return [(str(u), str(s), str(p)) for u, s, p, _ in rows]


def _field(name: str) -> str:
    # Field names are spliced into JSON paths: only plain identifiers, never text from outside.
    if not name.isidentifier():
        raise ValueError(f"not a field name: {name!r}")
    return name


def _bucket_case(expr: str, bounds: Sequence[float]) -> tuple[str, list[float]]:
    """A CASE giving the index of the first bound ``expr`` is at most (``len(bounds)`` past the last)."""
    whens = "".join(f" WHEN {expr} <= ? THEN {i}" for i in range(len(bounds)))
    return f"CASE{whens} ELSE {len(bounds)} END", [float(b) for b in bounds]


_RESTARTS = (
    "SELECT d.unit, json_extract(d.body, '$.action'), CASE WHEN json_extract(d.body, '$.rule') = 'manual'"
    " THEN 'operator' WHEN c.kind = 'unit.event' THEN 'exit' WHEN c.kind = 'verdict' THEN 'verdict'"
    " WHEN c.kind = 'remedy.outcome' THEN 'retry' ELSE 'other' END, COUNT(*) FROM records d LEFT JOIN records c"
    " ON c.seq = json_extract(d.body, '$.cause_seq') AND json_type(d.body, '$.cause_seq') = 'integer'"
    " WHERE d.kind = 'decision' AND d.seq <= ? AND json_type(d.body, '$.rejected') IS NULL"
    " AND json_type(d.body, '$.suppressed') IS NULL AND (json_extract(d.body, '$.action') IN ($marks)"
    " OR json_type(d.body, '$.counted_as_restart') = 'true') GROUP BY 1, 2, 3")
_WINDOW = "FROM samples WHERE unit = ? AND metric = ? AND wall >= ? AND wall <= ?"


def _f(v: Any) -> float:
    # SQLite may hand back an int for a REAL column's integral value.
    return float(v)
