"""Continuity: a journal is only continued if it is the one that was left, and a break is sealed openly.

``check_start`` runs before a supervisor writes to a journal with anchors. It compares what is on disk
with what the key signed when the journal was last written — the head file and every witness — and
raises ``IntegrityError`` (exit 4) instead of continuing a journal that was

* **cut** (records the signed head or a witness names are gone: a ``DELETE``, an emptied ``-wal``, an
  older copy put back),
* **rewritten or replaced** (the record there has another hash, the head's signature is wrong, a journal
  with records has no head),
* or whose tail after the head does not chain on from the signed record.

Records written after the last head (the head is rewritten at most every ``head_every_s``) are checked
by their chain only: a cut inside that window cannot be seen (a witness does not help there either).

``box.seal.seal`` is the operator's way out: it moves the journal, its WAL and head aside untouched (the
evidence, still verifiable with ``enmei box verify -j``) and starts a new segment whose record 1, of
kind ``seal``, holds the reason, what verify found, and the last seq and hash of the old segment (the
link). ``verify`` reports every seal of a journal, so a break stays visible for as long as the journal
exists.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from enmei.box.anchor import Anchors
from enmei.box.record import GENESIS
from enmei.box.verify import verify_range
from enmei.box.witness import against, check_witnesses
from enmei.errors import BoxError, IntegrityError

__all__ = ["SEAL_HINT", "check_start", "journal_end"]

SEAL_HINT = ("enmei will not continue it. See `enmei box verify`; to keep it as evidence and start a new, "
             "linked segment: enmei box seal --reason '...'")


def journal_end(path: Path) -> tuple[int, bytes, bool]:
    """``(last seq, its hash, whether the file holds a records table)``; (0, GENESIS, False) if absent."""
    if not path.exists():
        return 0, GENESIS, False
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise IntegrityError(0, f"{path} cannot be opened as a journal ({exc}): it was replaced or damaged") from exc
    try:
        has = conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='records'").fetchone()
        if not has:
            return 0, GENESIS, False
        row = conn.execute("SELECT seq, hash FROM records ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), bytes(row[1]), True) if row else (0, GENESIS, True)
    except sqlite3.DatabaseError as exc:
        raise IntegrityError(0, f"{path} is not a readable journal ({exc}): it was replaced or damaged") from exc
    finally:
        conn.close()


def check_start(path: Path, anchors: Anchors) -> None:
    """Raise ``IntegrityError`` unless the journal at ``path`` is the one the key last signed (head file
    and witnesses), with a tail that chains on from the signed record. A journal that does not exist
    yet, with no head and no witness naming a record, passes. Only reads."""
    last, _, _ = journal_end(path)
    try:
        head = anchors.read_head()
    except BoxError as exc:
        raise IntegrityError(0, f"{exc}. {SEAL_HINT}") from exc
    if head is None:
        if last:
            raise IntegrityError(1, f"the journal has {last} records but its signed head file "
                                    f"{anchors.head_path} is missing: where it ended cannot be checked. {SEAL_HINT}")
    elif not anchors.valid(head.seq, head.hash, head.mac):
        raise IntegrityError(0, f"the head file {anchors.head_path} has an invalid signature (forged, or made "
                                f"with another key). {SEAL_HINT}")
    else:
        bad = against(path, last, "the signed head", head)
        if bad is not None:
            raise IntegrityError(bad.seq, f"{bad.reason}. {SEAL_HINT}")
        if last > head.seq:
            rest = verify_range(str(path), head.seq + 1, last)
            if not rest.ok:
                raise IntegrityError(rest.first_bad or head.seq + 1,
                                     f"after the signed head (record {head.seq}): {rest.reason}. {SEAL_HINT}")
    bad = check_witnesses(path, anchors, last)
    if bad is not None:
        raise IntegrityError(bad.seq, f"{bad.reason}. {SEAL_HINT}")


