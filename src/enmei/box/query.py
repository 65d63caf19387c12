"""Read a journal: records by seq, the newest ones, filtered by unit and kind, and chart samples.

Every function opens the journal read-only; it can run while ``enmei up`` writes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

from enmei.box.record import Record
from enmei.box.store import connect
from enmei.errors import BoxError

__all__ = ["Reader"]

_COLS = "seq, wall_ns, mono_ns, kind, unit, body, prev, hash"


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

    def get(self, seq: int) -> Record | None:
        row = self.conn.execute(f"SELECT {_COLS} FROM records WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
        return _record(row) if row else None

    def last_seq(self) -> int:
        row = self.conn.execute("SELECT MAX(seq) FROM records").fetchone()
        return int(row[0] or 0)

    def count(self) -> int:
        row = self.conn.execute("SELECT COUNT(*) FROM records").fetchone()
        return int(row[0])

    def tail(self, n: int = 20, *, unit: str | None = None, kinds: list[str] | None = None) -> list[Record]:
        """The newest ``n`` records (oldest first), optionally of one unit and some kinds."""
        where, args = self._where(unit, kinds, None, None)
        sql = f"SELECT {_COLS} FROM records{where} ORDER BY seq DESC LIMIT ?"  # noqa: S608 - placeholders only
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
        for row in self.conn.execute(sql, args):
            yield _record(row)

    def samples(self, unit: str, metric: str, *, since_wall: float = 0.0,
                limit: int = 10_000) -> list[tuple[float, float]]:
        """(wall, value) pairs of one metric of one unit, oldest first."""
        rows = self.conn.execute(
            "SELECT wall, value FROM (SELECT wall, value FROM samples WHERE unit = ? AND metric = ? AND wall >= ?"
            " ORDER BY wall DESC LIMIT ?) ORDER BY wall",
            (unit, metric, since_wall, limit),
        ).fetchall()
        return [(float(w), float(v)) for w, v in rows]

    def metrics(self, unit: str) -> list[str]:
        rows = self.conn.execute("SELECT DISTINCT metric FROM samples WHERE unit = ?", (unit,)).fetchall()
        return sorted(str(r[0]) for r in rows)
