"""What a crashed supervisor left behind: remedies whose intent is in the journal but not their outcome."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from enmei.box.store import connect

__all__ = ["interrupted_remedies"]

_LOOKBACK = 200_000  # records; a remedy older than this cannot still be open


def interrupted_remedies(journal: Path) -> list[dict[str, Any]]:
    """``remedy.start`` records with no ``remedy.outcome`` of the same ``remedy_id``, oldest first."""
    if not journal.exists():
        return []
    conn = connect(journal, readonly=True)
    try:
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
        low = max(0, int(last) - _LOOKBACK)
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
