"""Witnesses: is the journal still the one a signed ``(seq, hash)`` — a head or a witness — names?

A witness (see ``box.anchor``) names the newest durable record when it was written; a journal that
ends before that record, or holds another record there, was cut, rolled back or replaced. These
functions only read.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from enmei.box.anchor import Anchors, Head
from enmei.box.record import GENESIS
from enmei.errors import BoxError, IntegrityError

__all__ = ["Witnessed", "against", "check_witnesses", "read_witnesses"]


def _hash_at(path: Path, seq: int) -> bytes | None:
    if seq == 0:
        return GENESIS
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        row = conn.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None
    finally:
        conn.close()


def against(path: Path, last: int, what: str, signed: Head) -> IntegrityError | None:
    """Whether the journal (ending at ``last``) still holds the record ``signed`` names."""
    if signed.seq > last:
        return IntegrityError(last + 1, f"records {last + 1} to {signed.seq} are missing: {what} names record "
                                        f"{signed.seq} but the journal ends at {last} — it was cut or rolled back")
    held = _hash_at(path, signed.seq) if last else GENESIS
    if held != signed.hash:
        return IntegrityError(signed.seq, f"record {signed.seq} is not the one {what} names: the journal was "
                                          "rewritten or replaced")
    return None


Witnessed = list[tuple[Path, Head | BoxError | None]]


def read_witnesses(anchors: Anchors) -> Witnessed:
    """Every witness of ``anchors`` as it is now: its head, the error reading it, or None if absent.
    Read them *before* the records, as the head file: a supervisor writing meanwhile only adds records."""
    out: Witnessed = []
    for wpath in anchors.witnesses:
        try:
            out.append((wpath, anchors.read_witness(wpath)))
        except BoxError as exc:
            out.append((wpath, exc))
    return out


def check_witnesses(path: Path, anchors: Anchors, last: int,
                    witnessed: Witnessed | None = None) -> IntegrityError | None:
    """The first witness (``witnessed``, else read now) that the journal at ``path``, ending at ``last``,
    contradicts, as an ``IntegrityError`` (not raised); None if every witness that exists agrees."""
    for wpath, w in witnessed if witnessed is not None else read_witnesses(anchors):
        if isinstance(w, BoxError):
            return IntegrityError(0, str(w))
        if w is not None:
            bad = against(path, last, f"the witness {wpath}", w)
            if bad is not None:
                return bad
    return None


