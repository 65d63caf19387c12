"""Anchors: the chain's head signed with a key kept outside the journal.

A hash chain alone shows that records were changed, deleted or reordered — but not a tail that was
cut off, nor a tail rewritten with recomputed hashes by someone who can write the journal. Anchors
close both gaps with an HMAC-SHA256 key the journal never holds:

* ``anchor`` records in the chain (every ``anchor_every_s``): ``{"upto": seq, "hash": hex, "hmac": hex}``
  sign the hash of record ``upto``; a recomputed chain no longer matches the signed hashes.
* the *head file* (``journal.head``, next to the journal by default), rewritten atomically after
  commits (at most every ``head_every_s``) and at close: ``{"seq", "hash", "hmac"}`` of the last durable
  record. A journal that lacks that record, or has another hash there, was cut or rewritten.

Keep the key (``anchor.key``, 32 random bytes, mode 0600) away from whoever may tamper with the journal:
``[supervisor] anchor_key`` can point anywhere, e.g. a root-only file or another volume.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from enmei.errors import BoxError

__all__ = ["Anchors", "Head", "default_key_path", "head_path"]

VERSION = 1


def head_path(journal: Path) -> Path:
    """Where a journal's head file lives: next to it, ``<journal>.head``."""
    return journal.with_name(journal.name + ".head")


def default_key_path(journal: Path) -> Path:
    """The anchor key's default place: ``anchor.key`` next to the journal."""
    return journal.with_name("anchor.key")


@dataclass(frozen=True)
class Head:
    seq: int
    hash: bytes
    mac: str


class Anchors:
    """Signs chain heads with the key at ``key_path``; keeps the head file at ``head_path``."""

    def __init__(self, key: bytes, head_path: Path) -> None:
        if len(key) < 16:
            raise BoxError("anchor key too short (at least 16 bytes)")
        self._key = key
        self.head_path = head_path

    @classmethod
    def from_files(cls, key_path: Path, head_path: Path, *, create: bool = True) -> Anchors:
        """The key at ``key_path`` (made, 32 random bytes with mode 0600, if ``create`` and missing)."""
        try:
            key = key_path.read_bytes()
        except FileNotFoundError:
            if not create:
                raise BoxError(f"{key_path}: no anchor key") from None
            key_path.parent.mkdir(parents=True, exist_ok=True)
            key = secrets.token_bytes(32)
            fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(key)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise BoxError(f"{key_path}: cannot read the anchor key: {exc.strerror}") from exc
        return cls(key, head_path)

    def for_head(self, head: Path) -> Anchors:
        """The same key, for another journal's head file (a copy of the journal)."""
        return Anchors(self._key, head)

    def sign(self, seq: int, digest: bytes) -> str:
        return hmac.new(self._key, f"{seq}:{digest.hex()}".encode(), hashlib.sha256).hexdigest()

    def valid(self, seq: int, digest: bytes, mac: str) -> bool:
        return hmac.compare_digest(self.sign(seq, digest), mac)

    def write_head(self, seq: int, digest: bytes) -> None:
        """Replace the head file atomically (temp file, fsync, rename)."""
        tmp = self.head_path.with_name(f".{self.head_path.name}.tmp")
        data = json.dumps({"version": VERSION, "seq": seq, "hash": digest.hex(), "hmac": self.sign(seq, digest)})
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.head_path)

    def read_head(self) -> Head | None:
        """The head file, or None if there is none. Raises ``BoxError`` if it is unreadable."""
        try:
            data = json.loads(self.head_path.read_text(encoding="utf-8"))
            return Head(int(data["seq"]), bytes.fromhex(data["hash"]), str(data["hmac"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BoxError(f"{self.head_path}: unreadable head file: {exc}") from exc

    def remove_head(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.head_path.unlink()
