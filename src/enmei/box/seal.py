"""``enmei box seal``: keep a broken journal as evidence and start a new segment linked to it."""

from __future__ import annotations

import fcntl
import getpass
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enmei.box.anchor import Anchors
from enmei.box.continuity import journal_end
from enmei.box.record import GENESIS
from enmei.box.store import Journal
from enmei.box.verify import verify
from enmei.errors import BoxError

__all__ = ["SealResult", "seal"]


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
            last, last_hash, _ = journal_end(path) if path.exists() else (0, GENESIS, False)
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
