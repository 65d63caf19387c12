"""One journal record and the hash that chains it to the one before.

A record is ``(seq, wall_ns, mono_ns, kind, unit, body, prev, hash)`` where ``body`` is canonical JSON
(sorted keys, no spaces) and::

    hash = SHA-256( prev || f"{seq}\\x1f{wall_ns}\\x1f{mono_ns}\\x1f{kind}\\x1f{unit}\\x1f{body}" )

``prev`` is the previous record's hash (32 zero bytes for record 1). Changing any field of any record,
deleting, reordering or inserting records breaks the chain at the first record affected.
Format version 1; a change to this encoding must bump ``FORMAT_VERSION`` and keep reading version 1.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FORMAT_VERSION", "GENESIS", "Record", "canonical_json", "chain_hash"]

FORMAT_VERSION = 1
GENESIS = bytes(32)
_SEP = "\x1f"


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)


def canonical_json(body: Mapping[str, Any]) -> str:
    """JSON with sorted keys and no spaces; NaN and infinities become the strings "NaN", "Infinity"."""
    try:
        return _ENCODER.encode(body)
    except ValueError:
        return _ENCODER.encode(_finite(body))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def chain_hash(prev: bytes, seq: int, wall_ns: int, mono_ns: int, kind: str, unit: str, body: str) -> bytes:
    """The SHA-256 of one record given the previous record's hash."""
    msg = f"{seq}{_SEP}{wall_ns}{_SEP}{mono_ns}{_SEP}{kind}{_SEP}{unit}{_SEP}{body}".encode()
    return hashlib.sha256(prev + msg).digest()


@dataclass(frozen=True, slots=True)
class Record:
    seq: int
    wall_ns: int
    mono_ns: int
    kind: str
    unit: str
    body: str
    prev: bytes
    hash: bytes

    @property
    def wall(self) -> float:
        return self.wall_ns / 1e9

    @property
    def mono(self) -> float:
        return self.mono_ns / 1e9

    def data(self) -> dict[str, Any]:
        """The decoded body."""
        out: dict[str, Any] = json.loads(self.body)
        return out

    def to_json(self) -> dict[str, Any]:
        """The record as one JSON object (for ``enmei box export --jsonl``)."""
        return {"seq": self.seq, "wall_ns": self.wall_ns, "mono_ns": self.mono_ns, "kind": self.kind,
                "unit": self.unit, "body": self.data(), "prev": self.prev.hex(), "hash": self.hash.hex()}

    def valid_after(self, prev_hash: bytes) -> bool:
        return self.prev == prev_hash and self.hash == chain_hash(
            prev_hash, self.seq, self.wall_ns, self.mono_ns, self.kind, self.unit, self.body)
