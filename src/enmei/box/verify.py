"""Check a journal's hash chain and name the first bad record.

``verify(path)`` reads every record in seq order and checks, for each one: that its seq follows the
previous one (a deleted or inserted record breaks this), that its ``prev`` is the previous record's hash
(a reordered one breaks this), and that its ``hash`` is the SHA-256 of its own fields (a changed byte
breaks this). It returns a ``VerifyResult``; ``first_bad`` is the seq of the first record that fails,
with the reason. It only reads: a journal that is being written can be verified at the same time.

With anchors it also checks the signed anchors, the head file and the anchors' witnesses (a journal
that ends before, or differs at, the record a witness names was rolled back). ``sealed`` lists the
breaks an operator sealed (``enmei box seal``): they stay reported for as long as the journal exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from enmei.box.anchor import Anchors, Head
from enmei.box.db import connect
from enmei.box.record import GENESIS
from enmei.box.witness import check_witnesses, read_witnesses
from enmei.errors import BoxError

__all__ = ["VerifyResult", "check_anchors", "verify", "verify_range", "verify_rows"]

_SEP = "\x1f"
_BATCH = 20_000
_PARALLEL_FROM = 200_000  # below this, starting worker processes costs more than it saves


@dataclass(frozen=True)
class VerifyResult:
    records: int
    last_seq: int
    last_hash: bytes
    first_bad: int | None = None
    reason: str = ""
    sealed: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def verify(path: str | Path, *, workers: int | None = None, anchors: Anchors | None = None) -> VerifyResult:
    """Verify the whole chain of the journal at ``path``; with ``anchors``, also its signed anchors and
    head file, which catch a cut-off tail and a tail rewritten with recomputed hashes.

    Large journals are cut into seq ranges checked in parallel by ``workers`` processes (default: the
    CPUs available); each range starts from the stored hash of the record before it, which the range
    before has itself checked, so the result is the same as one pass, only faster.
    """
    path = Path(path)
    # The head first: it is written only after a commit, so every record it names is in what we read
    # next, even while a supervisor goes on writing.
    head = anchors.read_head() if anchors is not None else None
    witnessed = None
    if anchors is not None and anchors.witnesses:
        witnessed = read_witnesses(anchors)
    conn = connect(path, readonly=True)
    try:
        row = conn.execute("SELECT MIN(seq), MAX(seq), COUNT(*) FROM records").fetchone()
    except sqlite3.DatabaseError as exc:
        raise BoxError(f"{path}: cannot read the journal: {exc}") from exc
    finally:
        conn.close()
    lo, hi, count = (int(row[0] or 1), int(row[1] or 0), int(row[2]))
    if lo != 1 and count:
        return VerifyResult(0, 0, GENESIS, 1, f"expected record 1, found {lo}: records missing")
    chain = _verify_chain(path, hi, workers)
    if chain.ok:
        chain = _with_seals(path, chain)
    if not chain.ok or anchors is None:
        return chain
    res = check_anchors(path, chain, anchors, head)
    if res.ok and witnessed:
        bad = check_witnesses(path, anchors, res.last_seq, witnessed)
        if bad is not None:
            return VerifyResult(res.records, res.last_seq, res.last_hash, bad.seq or 1, bad.reason, res.sealed)
    return res


def _with_seals(path: Path, chain: VerifyResult) -> VerifyResult:
    """``chain`` with a line for every ``seal`` record: the breaks an operator closed openly."""
    conn = connect(path, readonly=True)
    try:
        notes = []
        for seq, body in conn.execute("SELECT seq, body FROM records WHERE kind = 'seal' ORDER BY seq"):
            try:
                b = json.loads(body)
                prev = b.get("previous") or {}
                found = prev.get("verify") or {}
                what = (f"previous segment {prev.get('file')} ended at record {prev.get('last_seq')}"
                        + (f", broken at record {found.get('first_bad')}: {found.get('why')}"
                           if not found.get("ok", True) else "") if prev else "no previous segment")
                notes.append(f"record {seq}: sealed by {b.get('by')} — {b.get('reason')!r}; {what}")
            except (ValueError, TypeError, AttributeError):
                notes.append(f"record {seq}: a seal record that cannot be read")
    except sqlite3.DatabaseError as exc:
        raise BoxError(f"{path}: cannot read the journal: {exc}") from exc
    finally:
        conn.close()
    if not notes:
        return chain
    return VerifyResult(chain.records, chain.last_seq, chain.last_hash, chain.first_bad, chain.reason, tuple(notes))


def _verify_chain(path: Path, hi: int, workers: int | None) -> VerifyResult:
    n = workers if workers is not None else len(os.sched_getaffinity(0))
    if n <= 1 or hi < _PARALLEL_FROM:
        return verify_range(str(path), 1, hi)
    step = -(-hi // n)
    ranges = [(a, min(hi, a + step - 1)) for a in range(1, hi + 1, step)]
    # Worker processes run ``python -m enmei.box.verify`` (not multiprocessing: that would re-import the
    # caller's main module, which breaks scripts without a ``__main__`` guard).
    procs = [subprocess.Popen([sys.executable, "-m", "enmei.box.verify", str(path), str(a), str(b)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for a, b in ranges]
    parts: list[VerifyResult] = []
    for proc in procs:
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise BoxError(f"{path}: verify worker failed: {err.decode(errors='replace')[-300:]}")
        d = json.loads(out)
        parts.append(VerifyResult(d["records"], d["last_seq"], bytes.fromhex(d["last_hash"]), d["first_bad"],
                                  d["reason"]))
    total = 0
    for part in parts:
        if not part.ok:
            return VerifyResult(total + part.records, part.last_seq, part.last_hash, part.first_bad, part.reason)
        total += part.records
    last = parts[-1]
    return VerifyResult(total, last.last_seq, last.last_hash)


def check_anchors(path: Path, chain: VerifyResult, anchors: Anchors, head: Head | None) -> VerifyResult:
    """Check every anchor record, and the ``head`` read from the head file before the chain was read,
    against a chain that verified as ``chain``.

    A rewrite that recomputed the hashes leaves the chain consistent, so the first bad record cannot be
    known exactly: it is named as the first record after the last anchor that still holds.
    """
    conn = connect(path, readonly=True)
    try:
        rows = conn.execute("SELECT seq, body FROM records WHERE kind = 'anchor' AND seq <= ? ORDER BY seq",
                            (chain.last_seq,)).fetchall()
        good_upto = 0
        for seq, body in rows:
            try:
                a = json.loads(body)
                upto, digest, mac = int(a["upto"]), bytes.fromhex(a["hash"]), str(a["hmac"])
            except (ValueError, KeyError, TypeError):
                return _rewritten(chain, good_upto, f"anchor record {seq} is malformed")
            if not anchors.valid(upto, digest, mac):
                return _rewritten(chain, good_upto, f"anchor record {seq} does not carry a valid signature")
            held = conn.execute("SELECT hash FROM records WHERE seq = ?", (upto,)).fetchone()
            if held is None or bytes(held[0]) != digest:
                return _rewritten(chain, good_upto, f"record {upto} is not the one anchor record {seq} signed")
            good_upto = upto
        if head is None:
            if chain.records:
                return _rewritten(chain, good_upto, f"the head file {anchors.head_path} is missing: the tail "
                                                    "cannot be checked")
            return chain
        if not anchors.valid(head.seq, head.hash, head.mac):
            return _rewritten(chain, good_upto, f"the head file {anchors.head_path} has an invalid signature")
        if head.seq > chain.last_seq:
            unconfirmed = (f"; records after {good_upto}, the last one an anchor still signs, are not confirmed "
                           "either") if good_upto < chain.last_seq else ""
            return VerifyResult(chain.records, chain.last_seq, chain.last_hash, chain.last_seq + 1,
                                f"records {chain.last_seq + 1} to {head.seq} are missing: the journal was cut "
                                f"(the signed head names record {head.seq}){unconfirmed}", chain.sealed)
        held = ((GENESIS,) if head.seq == 0 else
                conn.execute("SELECT hash FROM records WHERE seq = ?", (head.seq,)).fetchone())
        if held is None or bytes(held[0]) != head.hash:
            return _rewritten(chain, good_upto, f"record {head.seq} is not the one the signed head names")
    except sqlite3.DatabaseError as exc:
        raise BoxError(f"{path}: cannot read the journal: {exc}") from exc
    finally:
        conn.close()
    return chain


def _rewritten(chain: VerifyResult, good_upto: int, why: str) -> VerifyResult:
    return VerifyResult(chain.records, chain.last_seq, chain.last_hash, good_upto + 1,
                        f"{why}; the chain was rewritten after record {good_upto}", chain.sealed)


def verify_range(path: str, lo: int, hi: int) -> VerifyResult:
    """Verify records ``lo..hi`` (all of them must be there), starting from the stored hash of ``lo-1``."""
    conn = connect(Path(path), readonly=True)
    try:
        prev = GENESIS
        if lo > 1:
            row = conn.execute("SELECT hash FROM records WHERE seq = ?", (lo - 1,)).fetchone()
            if row is None:
                return VerifyResult(0, lo - 1, GENESIS, lo - 1, f"record {lo - 1} is missing")
            prev = bytes(row[0])
        cur = conn.execute(
            "SELECT seq, wall_ns, mono_ns, kind, unit, body, prev, hash FROM records"
            " WHERE seq >= ? AND seq <= ? ORDER BY seq", (lo, hi))
        res = verify_rows(cur, start_seq=lo, prev=prev)
    except sqlite3.DatabaseError as exc:
        raise BoxError(f"{path}: cannot read the journal: {exc}") from exc
    finally:
        conn.close()
    if res.ok and res.last_seq < hi:
        return VerifyResult(res.records, res.last_seq, res.last_hash, res.last_seq + 1,
                            f"expected record {res.last_seq + 1}: records missing")
    return res


def verify_rows(cur: sqlite3.Cursor, *, start_seq: int = 1, prev: bytes = GENESIS) -> VerifyResult:
    """Verify rows ``(seq, wall_ns, mono_ns, kind, unit, body, prev, hash)`` from a cursor, in order."""
    sha = hashlib.sha256
    expect = start_seq
    count = 0
    sep = _SEP
    while True:
        rows = cur.fetchmany(_BATCH)
        if not rows:
            break
        for seq, wall, mono, kind, unit, body, p, h in rows:
            if seq != expect:
                why = f"expected record {expect}, found {seq}: records missing or inserted"
                return VerifyResult(count, expect - 1, prev, expect if seq > expect else seq, why)
            if p != prev:
                return VerifyResult(count, seq - 1, prev, seq, "its 'prev' is not the hash of the record before")
            if sha(prev + f"{seq}{sep}{wall}{sep}{mono}{sep}{kind}{sep}{unit}{sep}{body}".encode()).digest() != h:
                return VerifyResult(count, seq - 1, prev, seq, "its contents do not match its hash")
            prev = h
            expect += 1
            count += 1
    return VerifyResult(count, expect - 1, prev)


if __name__ == "__main__":  # a worker of ``verify``: PATH LO HI -> one JSON object
    _r = verify_range(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    print(json.dumps({"records": _r.records, "last_seq": _r.last_seq, "last_hash": _r.last_hash.hex(),
                      "first_bad": _r.first_bad, "reason": _r.reason}))
