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

``seal`` is the operator's way out: it moves the journal, its WAL and head aside untouched (the
evidence, still verifiable with ``enmei box verify -j``) and starts a new segment whose record 1, of
kind ``seal``, holds the reason, what verify found, and the last seq and hash of the old segment (the
link). ``verify`` reports every seal of a journal, so a break stays visible for as long as the journal
exists.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enmei.box.anchor import Anchors, Head
from enmei.box.record import GENESIS
from enmei.box.verify import verify, verify_range
from enmei.errors import BoxError, IntegrityError

__all__ = ["SEAL_HINT", "SealResult", "check_start", "check_witnesses", "read_witnesses", "seal"]

SEAL_HINT = ("enmei will not continue it. See `enmei box verify`; to keep it as evidence and start a new, "
             "linked segment: enmei box seal --reason '...'")


def _tail(path: Path) -> tuple[int, bytes, bool]:
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


def _hash_at(path: Path, seq: int) -> bytes | None:
    if seq == 0:
        return GENESIS
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        row = conn.execute("SELECT hash FROM records WHERE seq = ?", (seq,)).fetchone()
        return bytes(row[0]) if row else None
    finally:
        conn.close()


def _against(path: Path, last: int, what: str, signed: Head) -> IntegrityError | None:
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
            bad = _against(path, last, f"the witness {wpath}", w)
            if bad is not None:
                return bad
    return None


def check_start(path: Path, anchors: Anchors) -> None:
    """Raise ``IntegrityError`` unless the journal at ``path`` is the one the key last signed (head file
    and witnesses), with a tail that chains on from the signed record. A journal that does not exist
    yet, with no head and no witness naming a record, passes. Only reads."""
    last, _, _ = _tail(path)
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
        bad = _against(path, last, "the signed head", head)
        if bad is not None:
            raise IntegrityError(bad.seq, f"{bad.reason}. {SEAL_HINT}")
        if last > head.seq:
            tail = verify_range(str(path), head.seq + 1, last)
            if not tail.ok:
                raise IntegrityError(tail.first_bad or head.seq + 1,
                                     f"after the signed head (record {head.seq}): {tail.reason}. {SEAL_HINT}")
    bad = check_witnesses(path, anchors, last)
    if bad is not None:
        raise IntegrityError(bad.seq, f"{bad.reason}. {SEAL_HINT}")


@dataclass(frozen=True)
class SealResult:
    sealed_as: Path | None  # where the old segment went (None: there was none)
    seal_seq: int  # the seal record in the new segment (1)
    body: dict[str, Any]


def _lock(path: Path) -> int:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise BoxError(f"{path}: an enmei is writing this journal; stop it before sealing") from None
    return fd


def seal(path: Path, anchors: Anchors, reason: str) -> SealResult:
    """Move the journal at ``path`` (with its ``-wal``, ``-shm`` and head) aside as
    ``<name>.sealed-<UTC time>`` and start a new segment there whose record 1 is a ``seal`` record:
    the reason, who sealed, what verify found in the old segment and its last seq and hash.

    Raises ``BoxError`` if an enmei is writing the journal (its lock is held) or a file cannot be moved;
    nothing is moved then."""
    from enmei.box.store import Journal

    if not reason.strip():
        raise BoxError("a seal needs a reason (--reason)")
    lock = _lock(path)
    try:
        previous: dict[str, Any] | None = None
        target: Path | None = None
        if path.exists() or anchors.head_path.exists():
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            target = path.with_name(f"{path.name}.sealed-{stamp}")
            n = 1
            while target.exists() or Path(f"{target}.head").exists():
                n += 1
                target = path.with_name(f"{path.name}.sealed-{stamp}-{n}")
            found: dict[str, Any]
            try:
                res = verify(path, workers=1, anchors=anchors) if path.exists() else None
                found = ({"ok": res.ok, "records": res.records, "last_seq": res.last_seq,
                          "last_hash": res.last_hash.hex(), "first_bad": res.first_bad, "why": res.reason}
                         if res is not None else {"ok": False, "records": 0, "why": "the journal file was missing"})
            except BoxError as exc:
                found = {"ok": False, "why": str(exc)}
            try:
                head = anchors.read_head()
            except BoxError as exc:
                head, found["head_error"] = None, str(exc)
            last, last_hash, _ = _tail(path) if path.exists() else (0, GENESIS, False)
            previous = {"file": target.name, "last_seq": last, "last_hash": last_hash.hex(), "verify": found,
                        "signed_head": {"seq": head.seq, "hash": head.hash.hex()} if head else None}
            moves = [(path, target)] + [(Path(f"{path}{s}"), Path(f"{target}{s}")) for s in ("-wal", "-shm")]
            moves.append((anchors.head_path, Path(f"{target}.head")))
            for src, dst in moves:
                if src.exists():
                    os.rename(src, dst)
        body: dict[str, Any] = {"reason": reason, "by": getpass.getuser(), "pid": os.getpid(),
                                "previous": previous}
        os.close(lock)  # the journal takes the same lock itself
        lock = -1
        with Journal(path, anchors=anchors, anchor_every_s=0.0, head_every_s=0.0, check_start=False) as j:
            seq = j.append("seal", None, body)
        return SealResult(target, seq, body)
    except OSError as exc:
        raise BoxError(f"{path}: cannot seal the journal: {exc}") from exc
    finally:
        if lock >= 0:
            os.close(lock)
