"""One way to open a reader, or verify, whichever journal a supervisor writes (SQLite or PostgreSQL).

``open_reader(source)`` takes a journal file's path, or a running writer (``JournalWriter``): the
dashboard, ``/metrics``, the policy replay and the report go through it, so they read either journal.
``verify_source(source, anchors)`` is ``enmei.box.verify`` for a file and, for a PostgreSQL journal,
the writer's chain checked by ``pgread.verify_pg`` with every cross-link of the database: a broken link
makes the result not ok, named in its reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enmei.box.anchor import Anchors
from enmei.box.pgread import PgReader, verify_pg
from enmei.box.pgstore import PgJournal
from enmei.box.query import Reader
from enmei.box.verify import VerifyResult, verify

__all__ = ["AnyReader", "interrupted_of", "open_reader", "verify_source"]

AnyReader = Reader | PgReader


def open_reader(source: Path | str | Any) -> AnyReader:
    """A reader of ``source``: a journal file, or a writer (its own chain). ``BoxError`` if unreadable."""
    if isinstance(source, PgJournal):
        return PgReader(source.dsn, source.supervisor)
    if isinstance(source, (str, Path)):
        return Reader(source)
    return Reader(source.path)


def verify_source(source: Path | str | Any, anchors: Anchors | None = None) -> VerifyResult:
    """Verify ``source`` (see the module's docstring). ``BoxError`` if it cannot be read."""
    if isinstance(source, PgJournal):
        res = verify_pg(source.dsn, anchors=anchors)
        mine = res.chains.get(source.supervisor) or VerifyResult(0, 0, bytes(32))
        if res.broken_links and mine.ok:
            return VerifyResult(mine.records, mine.last_seq, mine.last_hash, mine.last_seq + 1,
                                "; ".join(res.broken_links), mine.sealed)
        return mine
    path = source if isinstance(source, (str, Path)) else source.path
    return verify(path, anchors=anchors)


def interrupted_of(source: Path | Any) -> list[dict[str, Any]]:
    """``enmei.box.intents.interrupted_remedies`` of ``source`` (a file, or a writer: for PostgreSQL its own
    chain). A PostgreSQL journal that cannot be read answers ``[]``, as a missing file does: start-up goes
    on, and ``enmei box verify`` is where an unreadable journal is reported."""
    from enmei.box.intents import LOOKBACK, interrupted_remedies
    from enmei.errors import BoxError

    if isinstance(source, PgJournal):
        try:
            with PgReader(source.dsn, source.supervisor) as r:
                return r.interrupted_remedies(LOOKBACK)
        except BoxError:
            return []
    return interrupted_remedies(source if isinstance(source, Path) else source.path)
