"""``enmei bench tamper``: tamper with a journal in every way we know, and count what verify catches.

A journal of ``records`` records with anchors (key outside the journal) is written once; each trial
copies it, applies one tampering at random, and verifies the copy with the anchor key. Kinds:

* ``flip``: one byte of one field of one record (body, kind, unit, times, prev, hash);
* ``delete``: one record in the middle; ``reorder``: two neighbouring records swapped;
* ``truncate``: the last records cut off;
* ``rewrite``: a record changed and every hash after it recomputed (what someone with write access but
  no key can do), anchors kept; ``rewrite_drop``: the same, with the anchors after it removed;
* ``cut_restart``: the tail cut off, then a supervisor started on it: detected if the start is refused
  *and* verify still reports the cut afterwards (issue 11 D3);
* ``replace``: the journal swapped for another one signed with the same key, head kept: detected if
  both the start is refused and verify fails;
* ``rollback_witness``: journal and head put back to an older copy of both, a witness kept elsewhere:
  detected if verify, given the witness, fails and a start is refused;
* ``rollback_no_witness``: the same rollback without a witness. Head and anchors are consistent with
  themselves there: the threat model says it *cannot* be detected, and it is counted apart
  (``undetectable_kinds``); a detection there would be a false claim.

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
from enmei.errors import IntegrityError

__all__ = ["KINDS", "UNDETECTABLE", "run", "tamper"]

KINDS = ("flip", "delete", "reorder", "truncate", "rewrite", "rewrite_drop",
         "cut_restart", "replace", "rollback_witness", "rollback_no_witness")
UNDETECTABLE = ("rollback_no_witness",)  # what the README's threat model says verify cannot see
_COLS = ("body", "kind", "unit", "wall_ns", "mono_ns", "prev", "hash")


def _fill(path: Path, anchors: Anchors, lo: int, hi: int, rng: random.Random) -> None:
    kinds = ["unit.state", "verdict", "decision", "remedy.start", "remedy.outcome", "samples"]
    with Journal(path, anchors=anchors, anchor_every_s=0.0, head_every_s=0.0) as j:
        for i in range(lo, hi):
            kind = kinds[i % len(kinds)]
            j.append(kind, f"unit{i % 4}", {"i": i, "value": rng.random(), "note": "x" * rng.randint(0, 40)})
            if i % 50 == 49:
                j.flush()


def _copy(src: Path, dst: Path) -> None:
    """A journal and its head file, as they are on disk after a clean close."""
    shutil.copyfile(src, dst)
    shutil.copyfile(head_path(src), head_path(dst))


def _base(path: Path, records: int, rng: random.Random) -> Anchors:
    """The journal every trial starts from, written in two sessions with a witness beside it; a copy of
    journal and head after the first session is kept as ``<path>.old`` (what a rollback puts back), and
    another journal signed with the same key as ``<path>.other`` (what a replacement puts in)."""
    witness = path.with_name("base.witness")
    anchors = Anchors.from_files(path.with_name("anchor.key"), head_path(path), witnesses=[witness])
    _fill(path, anchors, 0, records // 2, rng)
    _copy(path, path.with_name(path.name + ".old"))
    _fill(path, anchors, records // 2, records, rng)
    other = path.with_name(path.name + ".other")
    _fill(other, anchors.for_head(head_path(other)), 0, records + 20, rng)
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
    """Apply one tampering of ``kind`` to the journal at ``path``; returns the first record it touched.
    (The kinds that swap whole files — replace, rollback — are done by ``run``.)"""
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
        elif kind in ("truncate", "cut_restart"):
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


def _refused(trial: Path, anchors: Anchors) -> bool:
    """Whether a supervisor starting on ``trial`` refuses it (the journal is left as it was)."""
    try:
        Journal(trial, anchors=anchors).open().close()
    except IntegrityError:
        return True
    return False


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
            witness = tmp / "trial.witness"
            plain = anchors.for_head(head_path(trial))  # key and head, no witness
            if kind == "replace":
                shutil.copyfile(base.with_name(base.name + ".other"), trial)
                shutil.copyfile(head_path(base), head_path(trial))
                touched = records  # the record the signed head names
            elif kind.startswith("rollback"):
                _copy(base.with_name(base.name + ".old"), trial)
                touched = records // 2 + 1
            else:
                _copy(base, trial)
                touched = tamper(trial, kind, rng)
            checked = plain
            if kind == "rollback_witness":
                shutil.copyfile(base.with_name("base.witness"), witness)
                checked = plain.with_witnesses([witness])
            res = verify(trial, workers=1, anchors=checked)
            detected = not res.ok
            if kind in ("cut_restart", "replace", "rollback_witness"):
                detected = _refused(trial, checked) and detected
                detected = detected and not verify(trial, workers=1, anchors=checked).ok  # and stays visible
            by_kind[kind] += 1
            if detected:
                caught[kind] += 1
                if res.first_bad == touched:
                    exact[kind] += 1
                if res.first_bad is not None and res.first_bad <= touched:
                    bounded[kind] += 1
            for f in (trial, head_path(trial), witness, Path(f"{trial}-wal"), Path(f"{trial}-shm"),
                      Path(f"{trial}.lock")):
                f.unlink(missing_ok=True)
        knowable = ("flip", "delete", "reorder", "truncate", "cut_restart")
        detectable = [k for k in KINDS if k not in UNDETECTABLE]
        return {
            "trials": trials,
            "detected": sum(caught.values()),
            "detectable": sum(by_kind[k] for k in detectable),
            "detected_of_detectable": sum(caught[k] for k in detectable),
            "undetectable_kinds": list(UNDETECTABLE),
            "named_exactly": sum(exact[k] for k in knowable),
            "named_exactly_of": sum(by_kind[k] for k in knowable),
            "by_kind": {k: {"trials": by_kind[k], "detected": caught[k], "named_exactly": exact[k],
                            "named_at_or_before": bounded[k]} for k in KINDS},
            "journal_records": records,
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
