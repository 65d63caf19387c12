"""Connections to a journal's SQLite file: the one place its pragmas are set (a leaf of ``enmei.box``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from enmei.errors import BoxError

__all__ = ["connect"]


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection to the journal at ``path`` (read-only ones never create or write it)."""
    if readonly:
        if not path.exists():
            raise BoxError(f"{path}: no journal here")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn
