"""Remedy intents left open: what a crashed supervisor was doing when it died.

Before a remedy touches its unit the engine makes a ``remedy.start`` record durable (its intent); its
``remedy.outcome`` follows when it ends. A ``remedy.start`` without an outcome of the same ``remedy_id``
was interrupted. This is the journal's own SQL: the engine asks here instead of reading the tables.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from enmei.box.store import connect

__all__ = ["LOOKBACK", "interrupted_remedies"]

LOOKBACK = 200_000  # records; a remedy older than this cannot still be open


def interrupted_remedies(journal: Path, *, lookback: int = LOOKBACK) -> list[dict[str, Any]]:
    """``remedy.start`` records with no ``remedy.outcome`` of the same ``remedy_id``, oldest first.

    Each is ``{"seq", "unit", "remedy_id", "action"}``. Only the last ``lookback`` records are searched.
    A missing journal, or one that is not (yet) a journal, has none: ``[]`` (start-up must not fail on it;
    ``enmei box verify`` is where a damaged journal is reported).
    """
    if not journal.exists():
        return []
    conn = connect(journal, readonly=True)
    try:
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
        low = max(0, int(last) - lookback)
        started = conn.execute(
            "SELECT seq, unit, json_extract(body, '$.remedy_id'), json_extract(body, '$.action') FROM records"
            " WHERE kind = 'remedy.start' AND seq > ? ORDER BY seq", (low,)).fetchall()
        ended = {row[0] for row in conn.execute(
            "SELECT json_extract(body, '$.remedy_id') FROM records WHERE kind = 'remedy.outcome' AND seq > ?",
            (low,))}
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()
    return [{"seq": s, "unit": u, "remedy_id": r, "action": a} for s, u, r, a in started if r not in ended]
