"""``enmei bench tamper``: tamper with a journal in every way we know, and count what verify catches.

A journal of ``records`` records with anchors (key outside the journal) is written once; each trial
copies it, applies one tampering at random, and verifies the copy with the anchor key. Kinds:

* ``flip``: one byte of one field of one record (body, kind, unit, times, prev, hash);
* ``delete``: one record in the middle; ``reorder``: two neighbouring records swapped;
* ``truncate``: the last records cut off;
* ``rewrite``: a record changed and every hash after it recomputed (what someone with write access but
  no key can do), anchors kept; ``rewrite_drop``: the same, with the anchors after it removed.

``detected`` counts trials verify reported; ``named_exactly`` those where it named the tampered record
itself (for the kinds where that is knowable: flip, delete, reorder, truncate). A rewrite with recomputed
hashes is consistent in itself: verify names the first record after the last anchor that still holds,
at or before the first forged record (``named_at_or_before``).
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from enmei.box import GENESIS, Anchors, Journal, chain_hash, head_path, verify

__all__ = ["KINDS", "run", "tamper"]

KINDS = ("flip", "delete", "reorder", "truncate", "rewrite", "rewrite_drop")
_COLS = ("body", "kind", "unit", "wall_ns", "mono_ns", "prev", "hash")


def _base(path: Path, records: int, rng: random.Random) -> Anchors:
    anchors = Anchors.from_files(path.with_name("anchor.key"), head_path(path))
    kinds = ["unit.state", "verdict", "decision", "remedy.start", "remedy.outcome", "samples"]
    with Journal(path, anchors=anchors, anchor_every_s=0.0, head_every_s=0.0) as j:
        for i in range(records):
            kind = kinds[i % len(kinds)]
            j.append(kind, f"unit{i % 4}", {"i": i, "value": rng.random(), "note": "x" * rng.randint(0, 40)})
            if i % 50 == 49:
                j.flush()
    return anchors


def _flip(conn: sqlite3.Connection, seq: int, rng: random.Random) -> None:
    col = rng.choice(_COLS)
    (value,) = conn.execute(f"SELECT {col} FROM records WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
    if isinstance(value, int):
        new: Any = value ^ (1 << rng.randrange(0, 40))
    elif isinstance(value, bytes):
        b = bytearray(value)
        k = rng.randrange(len(b))
        b[k] ^= 1 << rng.randrange(8)
        new = bytes(b)
    else:
        s = value.encode()
        if not s:
            new = "x"
        else:
            b = bytearray(s)
            k = rng.randrange(len(b))
            b[k] = (b[k] + 1 - 32) % 95 + 32 if 32 <= b[k] < 127 else 65
            new = b.decode(errors="replace")
    conn.execute(f"UPDATE records SET {col} = ? WHERE seq = ?", (new, seq))  # noqa: S608


def _rewrite(conn: sqlite3.Connection, start: int, drop_anchors: bool) -> None:
    if drop_anchors:
        conn.execute("DELETE FROM records WHERE kind = 'anchor' AND seq >= ?", (start,))
        rows = conn.execute("SELECT seq FROM records WHERE seq >= ? ORDER BY seq", (start,)).fetchall()
        for new, (old,) in enumerate(rows, start=start):
            conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (new, old))
    row = conn.execute("SELECT hash FROM records WHERE seq = ?", (start - 1,)).fetchone()
    prev = bytes(row[0]) if row else GENESIS
    rows = conn.execute("SELECT seq, wall_ns, mono_ns, kind, unit, body FROM records WHERE seq >= ? ORDER BY seq",
                        (start,)).fetchall()
    for seq, wall, mono, kind, unit, old_body in rows:
        body = json.dumps({"forged": True}) if seq == start else old_body
        h = chain_hash(prev, seq, wall, mono, kind, unit, body)
        conn.execute("UPDATE records SET body = ?, prev = ?, hash = ? WHERE seq = ?", (body, prev, h, seq))
        prev = h


def tamper(path: Path, kind: str, rng: random.Random) -> int:
    """Apply one tampering of ``kind`` to the journal at ``path``; returns the first record it touched."""
    conn = sqlite3.connect(path)
    try:
        (last,) = conn.execute("SELECT MAX(seq) FROM records").fetchone()
        seq = rng.randint(2, last - 2)
        if kind == "flip":
            _flip(conn, seq, rng)
        elif kind == "delete":
            conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
        elif kind == "reorder":
            cols = "wall_ns, mono_ns, kind, unit, body, prev, hash"
            a = conn.execute(f"SELECT {cols} FROM records WHERE seq = ?", (seq,)).fetchone()  # noqa: S608
            b = conn.execute(f"SELECT {cols} FROM records WHERE seq = ?", (seq + 1,)).fetchone()  # noqa: S608
            upd = "UPDATE records SET wall_ns=?, mono_ns=?, kind=?, unit=?, body=?, prev=?, hash=? WHERE seq=?"
            conn.execute(upd, (*b, seq))
            conn.execute(upd, (*a, seq + 1))
        elif kind == "truncate":
            seq = rng.randint(max(2, last - 50), last)
            conn.execute("DELETE FROM records WHERE seq >= ?", (seq,))
        elif kind in ("rewrite", "rewrite_drop"):
            _rewrite(conn, seq, drop_anchors=kind == "rewrite_drop")
        else:
            raise ValueError(f"unknown tampering {kind!r}")
        conn.commit()
        return seq
    finally:
        conn.close()


def run(trials: int = 600, records: int = 2000, seed: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    tmp = Path(tempfile.mkdtemp(prefix="enmei-bench-tamper-"))
    try:
        base = tmp / "base.sqlite"
        anchors = _base(base, records, rng)
        by_kind: Counter[str] = Counter()
        caught: Counter[str] = Counter()
        exact: Counter[str] = Counter()
        bounded: Counter[str] = Counter()  # rewrites: verify names a record at or before the first forged one
        for i in range(trials):
            kind = KINDS[i % len(KINDS)]
            trial = tmp / "trial.sqlite"
            shutil.copyfile(base, trial)
            shutil.copyfile(head_path(base), head_path(trial))
            touched = tamper(trial, kind, rng)
            res = verify(trial, workers=1, anchors=anchors.for_head(head_path(trial)))
            by_kind[kind] += 1
            if not res.ok:
                caught[kind] += 1
                if res.first_bad == touched:
                    exact[kind] += 1
                if res.first_bad is not None and res.first_bad <= touched:
                    bounded[kind] += 1
            trial.unlink()
        knowable = ("flip", "delete", "reorder", "truncate")
        return {
            "trials": trials,
            "detected": sum(caught.values()),
            "named_exactly": sum(exact[k] for k in knowable),
            "named_exactly_of": sum(by_kind[k] for k in knowable),
            "by_kind": {k: {"trials": by_kind[k], "detected": caught[k], "named_exactly": exact[k],
                            "named_at_or_before": bounded[k]} for k in KINDS},
            "journal_records": records,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
