"""D-Box: the tamper-evident journal (SQLite WAL, SHA-256 hash chain, group commit)."""

from enmei.box.anchor import Anchors, head_path
from enmei.box.query import Reader
from enmei.box.record import FORMAT_VERSION, GENESIS, Record, canonical_json, chain_hash
from enmei.box.store import Journal
from enmei.box.verify import VerifyResult, verify

__all__ = [
    "FORMAT_VERSION",
    "GENESIS",
    "Anchors",
    "Journal",
    "Reader",
    "Record",
    "VerifyResult",
    "canonical_json",
    "chain_hash",
    "head_path",
    "verify",
]
