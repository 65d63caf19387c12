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
``[supervisor] anchor_key`` can point anywhere, e.g. a root-only file or another volume. A key that is
not this user's, is readable or writable by others, or is a symlink is refused.

Head and anchors cannot tell an older copy of journal *and* head, put back together, from the real
thing. *Witnesses* can: files at other paths (``<key>.witness-<journal id>`` next to the key, and any
``[supervisor] witness``) rewritten with the head, holding the newest durable ``(seq, hash)`` signed
with the key. A witness only ever grows; a journal that ends before the record a witness names, or has
another record there, was rolled back (or replaced). A witness is only as safe as its place: one next
to a key in the state dir is rolled back with the state dir.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from enmei.errors import BoxError, IntegrityError
from enmei.fsafe import UnsafePathError, check_file, read_private, write_atomic

__all__ = ["Anchors", "Head", "default_key_path", "head_path", "key_witness_path"]

log = logging.getLogger(__name__)

VERSION = 1


def head_path(journal: Path) -> Path:
    """Where a journal's head file lives: next to it, ``<journal>.head``."""
    return journal.with_name(journal.name + ".head")


def default_key_path(journal: Path) -> Path:
    """The anchor key's default place: ``anchor.key`` next to the journal."""
    return journal.with_name("anchor.key")


def key_witness_path(key: Path, journal: Path) -> Path:
    """The witness kept next to the key for ``journal`` (one per journal, as one key may sign several):
    ``<key>.witness-<first 12 hex of SHA-256 of the journal's absolute path>``."""
    ident = hashlib.sha256(str(Path(journal).resolve()).encode()).hexdigest()[:12]
    return key.with_name(f"{key.name}.witness-{ident}")


@dataclass(frozen=True)
class Head:
    seq: int
    hash: bytes
    mac: str


class Anchors:
    """Signs chain heads with the key at ``key_path``; keeps the head file at ``head_path``."""

    def __init__(self, key: bytes, head_path: Path, witnesses: Sequence[Path] = ()) -> None:
        if len(key) < 16:
            raise BoxError("anchor key too short (at least 16 bytes)")
        self._key = key
        self.head_path = head_path
        self.witnesses = tuple(witnesses)

    @classmethod
    def from_files(cls, key_path: Path, head_path: Path, *, create: bool = True,
                   witnesses: Sequence[Path] = ()) -> Anchors:
        """The key at ``key_path`` (made, 32 random bytes with mode 0600, if ``create`` and missing).
        Raises ``BoxError`` if it is missing (without ``create``) or unreadable, and ``UnsafePathError``
        if it is a symlink, not this user's, or readable or writable by others."""
        try:
            key = read_private(key_path, "anchor key")
        except FileNotFoundError:
            if not create:
                raise BoxError(f"{key_path}: no anchor key") from None
            key = secrets.token_bytes(32)
            try:
                key_path.parent.mkdir(parents=True, exist_ok=True)
                # O_EXCL: a name planted meanwhile (a symlink too) makes this fail rather than be followed
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(key)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                raise BoxError(f"{key_path}: cannot create the anchor key: {exc.strerror}") from exc
        except OSError as exc:
            raise BoxError(f"{key_path}: cannot read the anchor key: {exc.strerror}") from exc
        return cls(key, head_path, witnesses)

    @classmethod
    def for_journal(cls, key_path: Path, journal: Path, witnesses: Sequence[Path] = ()) -> Anchors:
        """The anchors a supervisor writes ``journal`` with: the key at ``key_path``, the head file next
        to the journal, the witness next to the key and ``witnesses``.

        The key is made only for a journal that does not exist yet: with a journal (or its head) there
        and no key, ``IntegrityError`` — a new key would make the whole journal look forged, and a
        deleted key must not be papered over (restore it, or ``enmei box seal`` a new segment)."""
        head = head_path(journal)
        if not key_path.exists() and not key_path.is_symlink() and (journal.exists() or head.exists()):
            raise IntegrityError(0, f"the anchor key {key_path} is missing but the journal {journal} exists: "
                                    "enmei will not make a new key for it (restore the key, or start a new "
                                    "segment with: enmei box seal --reason '...')")
        return cls.from_files(key_path, head, create=True,
                              witnesses=(key_witness_path(key_path, journal), *witnesses))

    def for_head(self, head: Path) -> Anchors:
        """The same key, for another journal's head file (a copy of the journal); no witnesses."""
        return Anchors(self._key, head)

    def with_witnesses(self, witnesses: Sequence[Path]) -> Anchors:
        """The same key and head file, with these witnesses."""
        return Anchors(self._key, self.head_path, witnesses)

    def sign(self, seq: int, digest: bytes) -> str:
        return hmac.new(self._key, f"{seq}:{digest.hex()}".encode(), hashlib.sha256).hexdigest()

    def valid(self, seq: int, digest: bytes, mac: str) -> bool:
        return hmac.compare_digest(self.sign(seq, digest), mac)

    def _sign_witness(self, seq: int, digest: bytes) -> str:
        # Another message than the head's, so that a witness cannot be passed off as a head or back.
        return hmac.new(self._key, f"witness:{seq}:{digest.hex()}".encode(), hashlib.sha256).hexdigest()

    def write_head(self, seq: int, digest: bytes) -> None:
        """Replace the head file atomically (temp file, fsync, rename; never through a symlink), then the
        witnesses (a witness that cannot be written is logged, and does not fail the head)."""
        data = json.dumps({"version": VERSION, "seq": seq, "hash": digest.hex(), "hmac": self.sign(seq, digest)})
        write_atomic(self.head_path, data.encode(), what="journal head file")
        self.write_witnesses(seq, digest)

    def write_witnesses(self, seq: int, digest: bytes) -> None:
        """Replace every witness with ``(seq, digest)``, signed; failures are logged."""
        data = json.dumps({"version": VERSION, "witness": True, "seq": seq, "hash": digest.hex(),
                           "hmac": self._sign_witness(seq, digest)}).encode()
        for path in self.witnesses:
            try:
                write_atomic(path, data, what="journal witness")
            except (OSError, UnsafePathError) as exc:
                log.error("cannot write the journal witness %s: %s", path, exc)

    def read_head(self) -> Head | None:
        """The head file, or None if there is none. Raises ``BoxError`` if it is unreadable."""
        return self._read(self.head_path, "head file", witness=False)

    def read_witness(self, path: Path) -> Head | None:
        """The witness at ``path`` if it is there and its signature holds, None if there is none.
        Raises ``BoxError`` if it is unreadable or forged (``mac`` is then checked by the caller too)."""
        w = self._read(path, "witness", witness=True)
        if w is not None and not hmac.compare_digest(self._sign_witness(w.seq, w.hash), w.mac):
            raise BoxError(f"{path}: the witness has an invalid signature (forged, or made with another key)")
        return w

    def _read(self, path: Path, what: str, *, witness: bool) -> Head | None:
        try:
            check_file(path, f"journal {what}")
            data = json.loads(path.read_text(encoding="utf-8"))
            if bool(data.get("witness", False)) != witness:
                raise ValueError("a witness file given as a head file, or the other way round")
            return Head(int(data["seq"]), bytes.fromhex(data["hash"]), str(data["hmac"]))
        except FileNotFoundError:
            return None
        except UnsafePathError as exc:
            raise BoxError(str(exc)) from exc
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise BoxError(f"{path}: unreadable {what}: {exc}") from exc

    def remove_head(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.head_path.unlink()
