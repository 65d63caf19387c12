"""The local spool of a PostgreSQL journal: chained records kept on local disk while PostgreSQL is away.

A JSON-lines file: a first line ``{"enmei_spool": 1, "supervisor": NAME}``, then one record a line
(``seq, wall_ns, mono_ns, kind, unit, body, prev, hash`` with the hashes in hex). ``append`` writes a
batch and fsyncs before it returns: a record in the spool is *acknowledged* (it survives a crash of the
supervisor, and the next writer of this supervisor's chain moves it to PostgreSQL before anything
newer). A torn last line — a crash in the middle of a write, before the fsync, so never acknowledged —
is ignored when read. The spool holds at most ``max_bytes``; ``append`` raises ``OSError`` past that, as
for a full disk, and the records stay in the writer's memory.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from enmei.errors import BoxError

__all__ = ["Spool"]

Row = tuple[int, int, int, str, str, str, bytes, bytes]


class Spool:
    """The spool file at ``path`` for the chain of ``supervisor``."""

    def __init__(self, path: Path, supervisor: str, *, max_bytes: int = 256 << 20) -> None:
        self.path = path
        self.supervisor = supervisor
        self.max_bytes = max_bytes
        self._size = path.stat().st_size if path.exists() else 0

    @property
    def size_bytes(self) -> int:
        return self._size

    def append(self, rows: Sequence[Row]) -> None:
        """Write ``rows`` (in chain order) and fsync. ``OSError`` if the disk refuses or the spool is full;
        nothing of the batch counts as written then (a partial line is ignored when read)."""
        lines = []
        if self._size == 0:
            lines.append(json.dumps({"enmei_spool": 1, "supervisor": self.supervisor}))
        for seq, wall, mono, kind, unit, body, prev, h in rows:
            lines.append(json.dumps([seq, wall, mono, kind, unit, body, prev.hex(), h.hex()],
                                    separators=(",", ":")))
        data = ("\n".join(lines) + "\n").encode()
        if self._size + len(data) > self.max_bytes:
            raise OSError(f"the spool {self.path} is full ({self._size} of {self.max_bytes} bytes)")
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._size += len(data)

    def read(self) -> list[Row]:
        """Every complete record in the spool, in order. ``BoxError`` if it belongs to another supervisor's
        chain or is not a spool."""
        try:
            text = self.path.read_bytes().decode()
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as exc:
            raise BoxError(f"{self.path}: cannot read the journal spool: {exc}") from exc
        lines = text.split("\n")
        if not text.endswith("\n"):
            lines = lines[:-1]  # torn by a crash before its fsync: never acknowledged
        out: list[Row] = []
        for i, line in enumerate(x for x in lines if x):
            try:
                item: Any = json.loads(line)
            except ValueError as exc:
                raise BoxError(f"{self.path}: line {i + 1} of the journal spool is not JSON") from exc
            if i == 0:
                if not isinstance(item, dict) or item.get("enmei_spool") != 1:
                    raise BoxError(f"{self.path}: not a journal spool (format 1)")
                if item.get("supervisor") != self.supervisor:
                    raise BoxError(f"{self.path}: the spool of supervisor {item.get('supervisor')!r}, "
                                   f"not {self.supervisor!r}")
                continue
            seq, wall, mono, kind, unit, body, prev, h = item
            out.append((int(seq), int(wall), int(mono), str(kind), str(unit), str(body), bytes.fromhex(prev),
                        bytes.fromhex(h)))
        return out

    def clear(self) -> None:
        """Remove the spool (after its records are committed in PostgreSQL)."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        self._size = 0
